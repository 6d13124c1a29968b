"""Weights files: loading never runs code (demo, train_net.py, Predictor, converter, resume),
model-zoo pickles load as Detectron2 loads them, training checkpoints and safetensors round-trip,
and damaged files get a message naming them."""

import collections
import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from helpers import ROOT, load_script, random_picture
from helpers import TINY_CONFIG as CONFIG

from mask2former.config import load_config
from mask2former.engine import AtomicDetectionCheckpointer, build_optimizer
from mask2former.engine.lr_scheduler import build_lr_scheduler
from mask2former.predictor import Predictor
from mask2former.utils.weights_io import (
    UnsafeWeightsError,
    WeightsFileError,
    load_checkpoint,
    load_weights_file,
    save_weights_file,
)

demo = load_script("demo/demo.py")
convert_weights = load_script("tools/convert-weights.py")


class _CallsOnLoad:
    """Unpickling it calls ``function(*args)``, as a malicious weights file would."""

    def __init__(self, function, *args):
        self.function = function
        self.args = args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    """Ways a pickle can create `marker`: a shell command, and Python's own open() (which
    pickles as io.open)."""
    return {
        "posix.system": _CallsOnLoad(os.system, f"touch {shlex.quote(str(marker))}"),
        "io.open": _CallsOnLoad(open, str(marker), "w"),
    }


def write_malicious(path, marker, refused="posix.system"):
    """A weights file in `path`'s format that holds real weights and, after them, a payload."""
    if path.suffix == ".pkl":
        weights = {"w": np.zeros(3, np.float32)}
    else:
        weights = {"w": torch.zeros(3)}
    content = {"model": weights, "__author__": "someone", "extra": _payloads(marker)[refused]}
    if path.suffix == ".pkl":
        with open(path, "wb") as file:
            pickle.dump(content, file)
    else:
        torch.save(content, path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(weights):
    """A tiny model's weights as a training checkpoint (.pth) and an image to predict on."""
    state = torch.load(weights, weights_only=True)["model"]
    return {"state": state, "pth": weights, "image": random_picture(48, 64)}


def _outputs(predictor, image):
    prediction = predictor(image)
    return (
        prediction.panoptic.segment_ids,
        prediction.instances.masks,
        prediction.instances.scores,
        prediction.semantic.probabilities,
    )


def _assert_same_outputs(first, second, image):
    for a, b in zip(_outputs(first, image), _outputs(second, image)):
        np.testing.assert_array_equal(a, b)


# --- nothing in a weights file runs -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
@pytest.mark.parametrize("refused", ["posix.system", "io.open"])
def test_crafted_files_are_refused_and_run_nothing(tmp_path, suffix, refused):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / f"evil{suffix}", marker, refused)
    with pytest.raises(UnsafeWeightsError) as caught:
        load_weights_file(path)
    message = str(caught.value)
    assert path in message and f"'{refused}'" in message and "not a plain weights file" in message
    assert caught.value.refused == refused
    assert not marker.exists()


def test_the_crafted_files_do_run_code_when_unpickled_plainly(tmp_path):
    """The files the refusal tests use are really dangerous (so those tests can fail)."""
    marker = tmp_path / "marker"
    with open(write_malicious(tmp_path / "evil.pkl", marker, "io.open"), "rb") as file:
        pickle.load(file)
    assert marker.exists()
    marker.unlink()
    torch.load(write_malicious(tmp_path / "evil.pth", marker, "io.open"), weights_only=False)
    assert marker.exists()


def test_a_pickle_cannot_change_the_functions_it_may_call(tmp_path):
    """BUILD on an allowed global would set its attributes for the whole process."""
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer, a Python function
    module = frombuffer.__module__.encode()
    path = tmp_path / "tamper.pkl"
    # GLOBAL _frombuffer; BUILD with (None, {"__doc__": "changed"}) -> setattr; STOP
    path.write_bytes(b"c" + module + b"\n_frombuffer\n(N}S'__doc__'\nS'changed'\nstb.")
    documentation = frombuffer.__doc__
    load_weights_file(str(path))
    assert frombuffer.__doc__ == documentation


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_predictor_refuses_crafted_weights(tmp_path, suffix):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / f"evil{suffix}", marker)
    with pytest.raises(UnsafeWeightsError, match="posix.system"):
        Predictor(CONFIG, path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_demo_refuses_crafted_weights(tmp_path, capsys, suffix):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / f"evil{suffix}", marker)
    image = tmp_path / "image.png"
    image.write_bytes(b"")  # never read: the weights are refused first
    status = demo.main(
        ["--config-file", CONFIG, "--input", str(image), "--output", str(tmp_path / "out")]
        + ["--opts", "MODEL.WEIGHTS", path]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert path in err and "'posix.system'" in err and "not a plain weights file" in err
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_converter_refuses_crafted_weights(tmp_path, capsys, suffix):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / f"evil{suffix}", marker)
    output = tmp_path / "out.safetensors"
    assert convert_weights.main([path, str(output)]) == 1
    err = capsys.readouterr().err
    assert path in err and "'posix.system'" in err and "not a plain weights file" in err
    assert not marker.exists() and not output.exists()


@pytest.mark.slow
def test_train_net_eval_only_refuses_crafted_weights(tmp_path):
    markers, commands = [], []
    for suffix in (".pkl", ".pth"):
        markers.append(tmp_path / f"marker{suffix}")
        path = write_malicious(tmp_path / f"evil{suffix}", markers[-1])
        commands.append(
            [sys.executable, os.path.join(ROOT, "train_net.py"), "--eval-only"]
            + ["--config-file", CONFIG, "MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path)]
        )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    running = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for command in commands
    ]
    for process, command, marker in zip(running, commands, markers):
        _, stderr = process.communicate(timeout=300)
        stderr = stderr.decode()
        assert process.returncode == 1, stderr[-3000:]
        assert command[command.index("MODEL.WEIGHTS") + 1] in stderr
        assert "'posix.system'" in stderr and "not a plain weights file" in stderr
        assert "Traceback" not in stderr
        assert not marker.exists()


def test_resume_refuses_a_crafted_last_checkpoint(tmp_path):
    marker = tmp_path / "marker"
    write_malicious(tmp_path / "model_0000009.pth", marker)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    model = torch.nn.Linear(3, 1)
    with pytest.raises(UnsafeWeightsError, match="model_0000009.pth"):
        AtomicDetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert not marker.exists()


# --- damaged and unknown files -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pkl", ".pth", ".safetensors"])
def test_empty_and_truncated_files_are_named(tmp_path, tiny, suffix):
    complete = tmp_path / f"complete{suffix}"
    save_weights_file(str(complete), tiny["state"])
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"<html>404 Not Found</html>")
    for path, problem in [(truncated, "cannot be read"), (empty, "is empty"), (garbage, "cannot")]:
        with pytest.raises(WeightsFileError) as caught:
            load_weights_file(str(path))
        assert str(path) in str(caught.value) and problem in str(caught.value)
        assert not isinstance(caught.value, UnsafeWeightsError)


def test_unknown_format_and_cli_exit_status(tmp_path, capsys):
    unknown = tmp_path / "model_final.ckpt"
    torch.save({"model": {}}, unknown)
    with pytest.raises(WeightsFileError, match=r"model_final.ckpt: unknown weights format '.ckpt'"):
        load_weights_file(str(unknown))
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    assert convert_weights.main([str(empty), str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err
    assert str(empty) in err and "is empty" in err
    status = demo.main(
        ["--config-file", CONFIG, "--input", str(tmp_path), "--opts", "MODEL.WEIGHTS", str(empty)]
    )
    err = capsys.readouterr().err
    assert status == 1 and str(empty) in err and "is empty" in err


# --- model-zoo pickles ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocol, mapping, matching_heuristics",
    [(2, dict, True), (4, collections.OrderedDict, False), (5, dict, True)],
)
def test_model_zoo_pickle_loads_as_detectron2_loads_it(
    tmp_path, tiny, protocol, mapping, matching_heuristics
):
    """A .pkl written as the official zoo's are gives what Detectron2's own loader gives."""
    path = str(tmp_path / "model_final.pkl")
    zoo = {
        "model": mapping((name, value.numpy()) for name, value in tiny["state"].items()),
        "__author__": "FAIR",
        "matching_heuristics": matching_heuristics,
    }
    with open(path, "wb") as file:
        pickle.dump(zoo, file, protocol=protocol)

    ours = Predictor(CONFIG, path, return_probabilities=True)
    detectron2 = Predictor(CONFIG, "", return_probabilities=True)
    DetectionCheckpointer(detectron2.model).load(path)  # plain pickle.load
    for name, value in detectron2.model.state_dict().items():
        assert torch.equal(ours.model.state_dict()[name], value), name
        assert torch.equal(value, tiny["state"][name]), name
    _assert_same_outputs(ours, detectron2, tiny["image"])


def test_backbone_pickle_goes_through_detectron2_name_matching(tmp_path, tiny):
    """ImageNet-style backbone weights without the "backbone." prefix (matching heuristics)."""
    backbone = {
        name[len("backbone.") :]: value.numpy() + 1.0
        for name, value in tiny["state"].items()
        if name.startswith("backbone.") and value.is_floating_point()
    }
    path = str(tmp_path / "R-18.pkl")
    with open(path, "wb") as file:
        pickle.dump(
            {"model": backbone, "__author__": "torchvision", "matching_heuristics": True}, file
        )
    torch.manual_seed(0)
    ours = Predictor(CONFIG, "").model
    AtomicDetectionCheckpointer(ours).load(path)
    torch.manual_seed(0)
    detectron2 = Predictor(CONFIG, "").model
    DetectionCheckpointer(detectron2).load(path)
    for name, value in detectron2.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    loaded = ours.state_dict()
    for name, value in backbone.items():
        assert torch.equal(loaded["backbone." + name], torch.from_numpy(value)), name


# --- training checkpoints and safetensors ----------------------------------------------------


def test_training_checkpoint_round_trips_weights_only(tmp_path):
    """Model, AdamW state, poly schedule and iteration come back through weights_only loading."""
    cfg = load_config(CONFIG, ["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", "9"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(3):
        model(torch.rand(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
    saver = AtomicDetectionCheckpointer(
        model, str(tmp_path), optimizer=optimizer, scheduler=scheduler
    )
    saver.save("model_0000002", iteration=2)
    # readable by anyone with plain weights-only loading: no extra types needed
    torch.load(tmp_path / "model_0000002.pth", weights_only=True)

    torch.manual_seed(1)
    restored = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    restored_optimizer = build_optimizer(cfg, restored)
    restored_scheduler = build_lr_scheduler(cfg, restored_optimizer)
    loader = AtomicDetectionCheckpointer(
        restored, str(tmp_path), optimizer=restored_optimizer, scheduler=restored_scheduler
    )
    extra = loader.resume_or_load("", resume=True)
    assert extra["iteration"] == 2
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value), name
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    expected, actual = optimizer.state_dict(), restored_optimizer.state_dict()
    assert actual["param_groups"] == expected["param_groups"]
    for index, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(actual["state"][index][key], value), (index, key)


def test_safetensors_round_trip_gives_same_outputs(tmp_path, tiny, capsys):
    path = str(tmp_path / "model_final.safetensors")
    assert convert_weights.main([tiny["pth"], path]) == 0
    assert f"wrote {len(tiny['state'])} tensors to {path}" in capsys.readouterr().out
    _assert_same_outputs(
        Predictor(CONFIG, path, return_probabilities=True),
        Predictor(CONFIG, tiny["pth"], return_probabilities=True),
        tiny["image"],
    )
    back = str(tmp_path / "back.pth")
    assert convert_weights.main([path, back]) == 0
    for name, value in torch.load(back, weights_only=True)["model"].items():
        assert torch.equal(value, tiny["state"][name]), name


def test_conversions_keep_detectron2_fields_and_drop_training_state(tmp_path, capsys):
    weights = {"stem.conv1.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    source = tmp_path / "R-18.pkl"
    with open(source, "wb") as file:
        pickle.dump(
            {"model": weights, "__author__": "torchvision", "matching_heuristics": True}, file
        )
    for suffix in (".safetensors", ".pth", ".pkl"):
        converted = tmp_path / f"R-18-converted{suffix}"
        assert convert_weights.main([str(source), str(converted)]) == 0
        checkpoint = load_checkpoint(str(converted))
        assert checkpoint["__author__"] == "torchvision" and checkpoint["matching_heuristics"]
        np.testing.assert_array_equal(
            np.asarray(checkpoint["model"]["stem.conv1.weight"]), weights["stem.conv1.weight"]
        )
    capsys.readouterr()

    training = tmp_path / "model_0000009.pth"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {}, "iteration": 9}, training)
    assert convert_weights.main([str(training), str(tmp_path / "shared.safetensors")]) == 0
    assert "left out (not model weights): iteration, optimizer" in capsys.readouterr().out

    bfloat16 = tmp_path / "bf16.safetensors"
    save_weights_file(str(bfloat16), {"w": torch.ones(2, dtype=torch.bfloat16)})
    assert convert_weights.main([str(bfloat16), str(tmp_path / "bf16.pkl")]) == 1
    assert "bfloat16" in capsys.readouterr().err
    assert not (tmp_path / "bf16.pkl").exists()


def test_checkpointer_saves_safetensors_only_where_it_saves(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = AtomicDetectionCheckpointer(model, str(tmp_path)).save_safetensors("model_final")
    assert path == str(tmp_path / "model_final.safetensors")
    loaded = load_weights_file(path)["model"]
    assert loaded.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded[name], value)
    other_rank = AtomicDetectionCheckpointer(model, str(tmp_path / "rank1"), save_to_disk=False)
    assert other_rank.save_safetensors("model_final") is None
    assert not (tmp_path / "rank1").exists()
