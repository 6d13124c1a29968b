"""An earlier run's OUTPUT_DIR/config.yaml is kept when a new run in the same folder differs,
and train_net.py refuses settings it cannot run before starting any process."""

import logging
import os
import subprocess
import sys

import pytest
import yaml
from helpers import TINY_TRAINING

from mask2former.config import load_config
from mask2former.engine.run_config import config_differences, keep_earlier_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEMANTIC = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_semantic.yaml")


def _cfg(*opts):
    return load_config(SEMANTIC, list(opts))


def _write(folder, cfg):
    (folder / "config.yaml").write_text(cfg.dump())


def test_no_earlier_config_or_the_same_one_is_left_alone(tmp_path, caplog):
    cfg = _cfg()
    assert keep_earlier_config(str(tmp_path), cfg, resume=False) is None
    _write(tmp_path, cfg)
    with caplog.at_level(logging.WARNING):
        assert keep_earlier_config(str(tmp_path), _cfg(), resume=True) is None
    assert os.listdir(tmp_path) == ["config.yaml"] and caplog.text == ""


def test_a_different_earlier_config_is_kept_and_the_differences_named(tmp_path, caplog):
    _write(tmp_path, _cfg("SOLVER.BASE_LR", "0.0003"))
    earlier_text = (tmp_path / "config.yaml").read_text()
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        kept = keep_earlier_config(
            str(tmp_path), _cfg("SOLVER.BASE_LR", "0.001", "SEED", "7"), resume=True
        )
    assert kept is not None and os.path.dirname(kept) == str(tmp_path)
    assert os.path.basename(kept).startswith("config.") and kept.endswith(".yaml")
    assert open(kept).read() == earlier_text
    assert not (tmp_path / "config.yaml").exists()  # for default_setup to write
    assert "2 key(s)" in caplog.text
    assert "SOLVER.BASE_LR: 0.0003 -> 0.001" in caplog.text and "SEED: -1 -> 7" in caplog.text
    assert kept in caplog.text and "--resume continues from checkpoints" in caplog.text


def test_two_earlier_configs_of_the_same_second_are_both_kept(tmp_path):
    kept = []
    for lr in ("0.1", "0.2", "0.3"):
        _write(tmp_path, _cfg("SOLVER.BASE_LR", lr))
        os.utime(tmp_path / "config.yaml", (1_700_000_000, 1_700_000_000))
        kept.append(keep_earlier_config(str(tmp_path), _cfg(), resume=False))
    assert len(set(kept)) == 3
    assert [yaml.safe_load(open(path))["SOLVER"]["BASE_LR"] for path in kept] == [0.1, 0.2, 0.3]


def test_an_unreadable_earlier_config_is_kept_too(tmp_path, caplog):
    (tmp_path / "config.yaml").write_text("MODEL: [unclosed\n")
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        kept = keep_earlier_config(str(tmp_path), _cfg(), resume=False)
    assert open(kept).read() == "MODEL: [unclosed\n"
    assert "could not be read as a config" in caplog.text


def test_differences_of_nested_and_missing_keys():
    earlier = {"A": {"B": 1, "C": [1, 2]}, "D": "x"}
    current = {"A": {"B": 2, "C": [1, 2]}, "E": True}
    assert config_differences(earlier, current) == [
        ("A.B", 1, 2),
        ("D", "x", None),
        ("E", None, True),
    ]


def _train_net(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    command = [sys.executable, os.path.join(REPO, "train_net.py"), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_net_keeps_the_config_of_the_run_it_resumes(tmp_path):
    common = ["--config-file", SEMANTIC, *TINY_TRAINING, "SOLVER.MAX_ITER", "1"]
    common += ["OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", "()"]
    first = _train_net(*common, "SOLVER.BASE_LR", "0.001")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _train_net("--resume", *common, "SOLVER.BASE_LR", "0.002", "SOLVER.MAX_ITER", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    [kept] = [name for name in os.listdir(tmp_path) if name.startswith("config.2")]
    assert yaml.safe_load(open(tmp_path / kept))["SOLVER"]["BASE_LR"] == 0.001
    assert yaml.safe_load(open(tmp_path / "config.yaml"))["SOLVER"]["BASE_LR"] == 0.002
    log = (tmp_path / "log.txt").read_text()
    assert "SOLVER.BASE_LR: 0.001 -> 0.002" in log and "SOLVER.MAX_ITER: 1 -> 2" in log


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, opts, message",
    [
        (
            ["--num-gpus", "2"],
            ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.GRADIENT_ACCUMULATION_STEPS", "4"],
            "must be a multiple of 8 (steps x processes)",
        ),
        (
            [],
            ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.ENABLED", "True"]
            + ["MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.STRIDE", "[600, 600]"],
            "is larger than MODEL.MASK_FORMER.TEST.SLIDING_WINDOW.SIZE",
        ),
    ],
)
def test_train_net_refuses_settings_before_starting(flags, opts, message):
    run = _train_net(*flags, "--config-file", SEMANTIC, *opts)
    assert run.returncode != 0
    assert message in run.stderr and "Command Line Args" not in run.stdout
