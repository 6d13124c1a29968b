"""Training stopped by SIGTERM or Ctrl-C (mask2former/engine/interrupt.py,
mask2former/utils/signals.py): a checkpoint of the iteration reached, --resume from it, every
training process at the same iteration, and DataLoader workers that outlive the signal long
enough."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.utils.data
from detectron2.engine import HookBase
from helpers import TINY_TRAINING

import mask2former.data  # noqa: F401  only registration
from mask2former import modeling as _modeling  # noqa: F401  only registration
from mask2former.config import load_config
from mask2former.data.datasets.catalog_utils import get_datasets_root
from mask2former.data.synthetic import ensure_synthetic_dataset
from mask2former.engine import MaskFormerTrainer
from mask2former.engine.interrupt import CheckpointOnInterrupt, TrainingInterrupted, _StopRequest
from mask2former.utils import signals

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEMANTIC = os.path.join(REPO, "configs", "shapes", "maskformer2_R18_semantic.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes():
    ensure_synthetic_dataset(os.path.join(get_datasets_root(), "shapes"))


class _SignalAt(HookBase):
    """Sends ``signum`` to this process after iteration ``at``."""

    def __init__(self, at, signum=signal.SIGTERM):
        self.at, self.signum = at, signum

    def after_step(self):
        if self.trainer.iter == self.at:
            os.kill(os.getpid(), self.signum)


def _trainer(output_dir, max_iter, *opts):
    cfg = load_config(
        SEMANTIC,
        [*TINY_TRAINING, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(output_dir), *opts],
    )
    cfg.freeze()
    trainer = MaskFormerTrainer(cfg)
    return trainer


def test_stop_request_and_handlers():
    """The first signal is recorded; SIGTERMs never escalate; a second SIGINT raises at once
    and gives the old handlers back."""
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    request = _StopRequest()
    assert request.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the launcher's SIGTERM: no escalation
        assert request.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs in the main thread, between bytecodes
        assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == before
    finally:
        request.uninstall()


def _sleep():
    time.sleep(600)


def test_forked_processes_keep_the_usual_handlers():
    """A process forked while the trainer's handlers are in place (panopticapi's Pool workers,
    in the evaluation during training) still dies of terminate(): with the trainer's handler,
    which only records the signal, the Pool's join hung."""
    request = _StopRequest()
    assert request.install()
    process = multiprocessing.get_context("fork").Process(target=_sleep, daemon=True)
    try:
        process.start()
        time.sleep(0.5)
        process.terminate()
        process.join(timeout=10)
        exit_code = process.exitcode
    finally:
        request.uninstall()
        if process.is_alive():
            process.kill()
            process.join()
    assert exit_code == -signal.SIGTERM


def test_trainer_stops_with_a_checkpoint_then_resumes(shapes, tmp_path):
    """SIGTERM during iteration 3 (sent after the hook of iteration 2 ran): the hook of
    iteration 3 saves model_0000003.pth, ends training, and --resume starts at 4."""
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    trainer = _trainer(tmp_path, 10)
    trainer.resume_or_load(resume=False)
    assert isinstance(trainer._hooks[-1], CheckpointOnInterrupt)
    trainer.register_hooks([_SignalAt(2)])  # after CheckpointOnInterrupt: seen at iteration 3
    saved_names = []
    save = trainer.checkpointer.save  # the trainer's (atomic) checkpointer writes it

    def spy(name, **extra):
        saved_names.append(name)
        return save(name, **extra)

    trainer.checkpointer.save = spy
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert saved_names == ["model_0000003"]
    assert (stop.value.signum, stop.value.iteration, stop.value.exit_status) == (15, 3, 143)
    assert stop.value.checkpoint == str(tmp_path / "model_0000003.pth")
    assert "SIGTERM after iteration 3" in str(stop.value) and "--resume" in str(stop.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    saved = torch.load(tmp_path / "model_0000003.pth", map_location="cpu", weights_only=True)
    assert saved["iteration"] == 3
    assert all(
        torch.equal(saved["model"][name], value)
        for name, value in trainer.model.state_dict().items()
    )
    assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == before
    del trainer

    resumed = _trainer(tmp_path, 6)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    resumed.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_signal_at_the_last_iteration_finishes_normally(shapes, tmp_path):
    trainer = _trainer(tmp_path, 3)
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([_SignalAt(1)])  # seen at iteration 2, the last one
    trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert not (tmp_path / "model_0000002.pth").exists()


# Run in a process of its own: a worker forked from the test process would inherit the locks
# of whatever threads earlier tests left running there. It prints JSON and ends with
# os._exit, so that nothing at exit can wait on a worker.
WORKER_SCRIPT = r"""
import json, os, signal, time
import torch.utils.data
from mask2former.utils import signals

class Pids(torch.utils.data.Dataset):
    # as the project's mapper wrappers do for every sample
    def __len__(self):
        return 10**6
    def __getitem__(self, index):
        signals.install_worker_stop_handlers()
        time.sleep(0.01)
        return os.getpid()

def serve_until_the_worker_ends(iterator, pid):
    # read (all from pid) until the loader finds the worker gone: its status check or the
    # end of its queue; never leaves the worker waiting on a full pipe
    start = time.monotonic()
    try:
        while True:
            assert next(iterator) == pid
    except (RuntimeError, EOFError) as error:
        return time.monotonic() - start, type(error).__name__

report = {}
signals.WORKER_GRACE_S = 2.0  # inherited by the forked worker
# plain ints, not tensors in shared memory, which would go with the worker
loader = torch.utils.data.DataLoader(
    Pids(), num_workers=1, collate_fn=lambda batch: batch[0], multiprocessing_context="fork"
)
iterator = iter(loader)
pid = next(iterator)
process = iterator._workers[0]
os.kill(pid, signal.SIGTERM)
start = time.monotonic()
served = 0
while time.monotonic() - start < 1.0:
    assert next(iterator) == pid
    served += 1
report["served_in_grace"] = served
report["alive_in_grace"] = process.is_alive()
report["ended_with"] = serve_until_the_worker_ends(iterator, pid)[1]
report["ended_after_s"] = time.monotonic() - start
time.sleep(0.5)
report["exit_code"] = process.exitcode

signals.WORKER_GRACE_S = 60.0
iterator = iter(loader)
pid = next(iterator)
process = iterator._workers[0]
os.kill(pid, signal.SIGINT)
time.sleep(0.2)
os.kill(pid, signal.SIGTERM)
report["second_signal_ended_after_s"] = serve_until_the_worker_ends(iterator, pid)[0]
time.sleep(0.5)
report["second_signal_exit_code"] = process.exitcode
print(json.dumps(report), flush=True)
os._exit(0)
"""


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX signals")
def test_worker_outlives_the_first_signal_by_the_grace_period():
    run = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # still serving within the grace period (2 s), then a clean exit, which PyTorch does not
    # report as a failure
    assert report["served_in_grace"] > 10 and report["alive_in_grace"]
    assert report["ended_after_s"] >= 2.0
    assert report["exit_code"] == 0
    # a second signal ends it at once (PyTorch notices within its 5 s status check: far less
    # than the 60 s grace), cleanly too
    assert report["second_signal_ended_after_s"] < 20
    assert report["second_signal_exit_code"] == 0


def _train_net(output_dir, *opts, num_gpus=1, resume=False):
    return [
        sys.executable, os.path.join(REPO, "train_net.py"), "--num-gpus", str(num_gpus),
        *(["--resume"] if resume else []),
        "--dist-url", "auto", "--config-file", SEMANTIC, *TINY_TRAINING,
        "DATALOADER.NUM_WORKERS", "2", "SOLVER.CHECKPOINT_PERIOD", "100000",
        "OUTPUT_DIR", str(output_dir), *opts,
    ]  # fmt: skip


def _stop_when_logged(command, output_dir, text, send):
    """Run ``command`` in its own session; once ``text`` is in its log, ``send(process)``."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    # the output goes to a file: a pipe read only at the end fills up (the config dump and the
    # model print are about 64 KB) and blocks the run before it logs `text`
    console = output_dir / "console.txt"
    with open(console, "w") as stdout:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
    log = output_dir / "log.txt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if log.is_file() and text in log.read_text():
                send(process)
                break
            time.sleep(0.2)
        process.wait(timeout=300)
    finally:  # a run that did not stop takes its processes with it
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, console.read_text()


def _stopped_iteration(log_text):
    [line] = [line for line in log_text.splitlines() if "Training stopped by SIGTERM" in line]
    return int(line.split("after iteration ")[1].split(";")[0])


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_job(shapes, tmp_path):
    """As SLURM does: training process and DataLoader workers all get SIGTERM."""
    command = _train_net(tmp_path, "SOLVER.MAX_ITER", "1000")
    status, output = _stop_when_logged(
        command, tmp_path, "iter: 19 ", lambda p: os.killpg(p.pid, signal.SIGTERM)
    )
    assert status == 143, output[-3000:]
    iteration = _stopped_iteration((tmp_path / "log.txt").read_text())
    assert iteration >= 19
    assert (tmp_path / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"
    assert "killed by signal" not in output and "exited unexpectedly" not in output

    resume = _train_net(tmp_path, "SOLVER.MAX_ITER", str(iteration + 3), resume=True)
    run = subprocess.run(resume, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert f"Starting training from iteration {iteration + 1}" in log
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_two_processes_stop_at_the_same_iteration(shapes, tmp_path):
    """SIGTERM to the launcher only (``docker stop``, ``kill PID``): it passes it on; both
    training processes stop after the same iteration; one checkpoint."""
    command = _train_net(tmp_path, "SOLVER.MAX_ITER", "1000", num_gpus=2)
    status, output = _stop_when_logged(
        command, tmp_path, "iter: 19 ", lambda p: os.kill(p.pid, signal.SIGTERM)
    )
    assert status == 143, output[-3000:]
    assert "Training stopped by SIGTERM" in output and "--resume" in output
    iteration = _stopped_iteration((tmp_path / "log.txt").read_text())
    assert _stopped_iteration((tmp_path / "log.txt.rank1").read_text()) == iteration
    assert (tmp_path / "last_checkpoint").read_text() == f"model_{iteration:07d}.pth"
    assert [f for f in os.listdir(tmp_path) if f.startswith("model_")] == [
        f"model_{iteration:07d}.pth"
    ]
