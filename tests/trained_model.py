"""Session fixtures for the "use a trained potential" tests: model files on disk.

``trained_model``: a tiny float64 potential trained once per session on the example data
(GFN2-xTB MD of ethanol + acetaldehyde, eV and eV/Å): good enough to hold ethanol together in
MD and relaxations, small enough to train in seconds on 2 CPU cores.

``model_file_64`` / ``model_file_32``: the random test model of ``tests/conftest.py`` (species
H, C, O, Si) saved with ``e3pot.save_model`` in float64 / float32.

``single_torch_thread`` (autouse where imported): torch runs on one thread in these tests. The
models are tiny, so a second intra-op thread gains nothing, and on a busy 2-core machine OpenMP
threads that wait for each other make MD ~10x slower.

Import the fixtures into a test module with ``from tests.trained_model import ...``. The work
is cached at module level, so that it is done once per session even though several modules
import the same fixture functions (pytest would otherwise make one fixture per module).
"""
import contextlib
import os

import pytest
import torch
from ase.io import read, write

import e3pot
from tests.conftest import make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
EXAMPLE_DATA = os.path.join(ROOT, "data", "example.extxyz")

# 60 frames (50 ethanol, 10 acetaldehyde), 15 epochs, a tiny float64 model with a 4 Å cutoff.
TRAIN_ARGS = [
    "--trainer.max_epochs", "15", "--model.lr", "0.02", "--model.dtype", "float64", "--model.r_max", "4.0",
    "--model.l_max", "1", "--model.num_features", "8", "--model.num_layers", "2", "--model.radial_hidden", "8",
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]

_cache = {}

# for subprocesses of the tests
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def training_frames():
    frames = read(EXAMPLE_DATA, ":")
    ethanol = [a for a in frames if len(a) == 9]
    acetaldehyde = [a for a in frames if len(a) == 7]
    return ethanol[::5][:50] + acetaldehyde[::25][:10]


def train_tiny(tmp_path_factory, name: str, extra=()) -> str:
    """Train the tiny model of TRAIN_ARGS (plus ``extra`` arguments) in a new folder; the model file's path."""
    from e3pot.train.cli import main

    work = tmp_path_factory.mktemp(name)
    train_file = str(work / "train.extxyz")
    write(train_file, training_frames())
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with torch_threads(1):
            path = main(["--config", CONFIG, "--data.train_file", train_file, "--output", "model.pt", *TRAIN_ARGS,
                         *extra])
    finally:
        os.chdir(cwd)
    return os.path.join(work, path)


def train_tiny_model(tmp_path_factory) -> str:
    """Train (once per session) and return the absolute path of the model file."""
    if "trained" not in _cache:
        path = train_tiny(tmp_path_factory, "trained_model")
        assert e3pot.load_model(path).dtype == torch.float64
        _cache["trained"] = path
    return _cache["trained"]


def random_model_file(tmp_path_factory, dtype: torch.dtype) -> str:
    key = ("random", dtype)
    if key not in _cache:
        path = str(tmp_path_factory.mktemp("random_model") / f"model_{str(dtype)[6:]}.pt")
        _cache[key] = e3pot.save_model(make_model(dtype=dtype), path)
    return _cache[key]


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> str:
    return train_tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def model_file_64(tmp_path_factory) -> str:
    return random_model_file(tmp_path_factory, torch.float64)


@pytest.fixture(scope="session")
def model_file_32(tmp_path_factory) -> str:
    return random_model_file(tmp_path_factory, torch.float32)
