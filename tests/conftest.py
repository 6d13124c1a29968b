"""Fixtures shared by the test files; plain helpers are in helpers.py."""

import os
import random

import numpy as np
import pytest
import torch
from helpers import TINY_CONFIG

from mask2former.predictor import Predictor


def pytest_configure(config):
    """In a pytest-xdist worker (``make test`` runs two), torch computes on one thread, and so do
    the processes the tests start (OMP_NUM_THREADS): the workers already keep the cores busy,
    and more threads than cores only make them wait for each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Every test starts from the same random state (torch, numpy, random), whichever tests
    ran before it in its process: pytest-xdist hands each worker a different sequence of test
    files from run to run, and tests that build and train models in-process (without
    train_net.py's seeding) draw from these generators."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """Path of a checkpoint ({"model": state_dict} in a .pth file) of the tiny shapes model
    (helpers.TINY_CONFIG), randomly initialised with seed 0; written once per session, and
    leaving torch's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Predictor(TINY_CONFIG, "").model
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture
def one_thread():
    """Torch on one thread during the test, the previous count restored after: on a shared
    2-core machine, training with two threads is many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def no_tf32():
    """float32 matrix products and convolutions on CUDA in full float32 (no TF32) during the
    test, so that they can be compared with the CPU; the previous settings restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
