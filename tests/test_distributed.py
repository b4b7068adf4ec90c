"""Training in several processes (Lightning DDP on gloo) and resuming a killed run.

Both start real training processes through ``train.py``, as a user would.
"""
import csv
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ase.io import read, write

import e3pot
from e3pot.model.kinds import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
TINY = ["--model.l_max", "1", "--model.num_features", "4", "--model.num_layers", "1", "--model.radial_hidden", "8",
        "--trainer.enable_model_summary", "false"]


def train(work, *args, timeout=300):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, *TINY, *args],
                         cwd=work, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ethanol_data(tmp_path_factory):
    """16 training and 4 validation frames of one molecule (equal atom counts, so that the mean over a
    batch of 2b equals the mean of two batches of b)."""
    folder = tmp_path_factory.mktemp("ddp")
    frames = [a for a in read(os.path.join(ROOT, "data", "example.extxyz"), ":") if len(a) == 9][:20]
    write(folder / "train.extxyz", frames[:16])
    write(folder / "val.extxyz", frames[16:])
    return folder


@pytest.mark.slow
def test_two_processes_equal_one_at_twice_the_batch(ethanol_data):
    common = ["--data.train_file", "train.extxyz", "--data.val_file", "val.extxyz", "--data.shuffle", "false",
              "--model.dtype", "float64", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
              "--trainer.accelerator", "cpu"]
    train(ethanol_data, *common, "--data.batch_size", "4", "--trainer.devices", "1", "--output", "one.pt")
    out = train(ethanol_data, *common, "--data.batch_size", "2", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                "--output", "two.pt")
    assert out.stdout.count("Saved model:") == 1  # written once
    one, two = e3pot.load_model(str(ethanol_data / "one.pt")), e3pot.load_model(str(ethanol_data / "two.pt"))
    a, b = one.state_dict(), two.state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-8, atol=1e-10, msg=name)
    # and the training moved the weights (8 steps at lr 0.01): the comparison is not of two fresh models
    fresh = build_model(one.config)
    assert not torch.allclose(a["layers.0.conv.weight"], fresh.state_dict()["layers.0.conv.weight"].to(a["layers.0.conv.weight"]))
    # metrics are over all frames: the validation errors written with each model agree
    assert one.metadata["validation"]["val/forces_mae_meV_A"] == pytest.approx(
        two.metadata["validation"]["val/forces_mae_meV_A"], rel=1e-6)


def epochs_logged(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return sorted({int(r["epoch"]) for r in csv.DictReader(fh) if r.get("train/loss")})


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "ddp"])
def test_killed_run_resumes_from_last_checkpoint(tmp_path, processes):
    frames = read(os.path.join(ROOT, "data", "example.extxyz"), ":120")
    write(tmp_path / "data.extxyz", frames)
    args = ["--data.train_file", "data.extxyz", "--trainer.max_epochs", "40", "--data.batch_size", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
            "--trainer.devices", str(processes)] + (["--trainer.strategy", "ddp"] if processes > 1 else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # a session of its own, so that SIGKILL reaches every rank at once, as a scheduler's kill would
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, *TINY, *args],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    last = tmp_path / "runs" / "example" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait for the checkpoint of the third epoch, then kill mid-epoch
            if last.exists() and torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= 2:
                break
            time.sleep(0.5)
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = torch.load(last, map_location="cpu", weights_only=False)
    killed_at = before["epoch"]
    assert 2 <= killed_at < 39
    best_before = next(v for k, v in before["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]

    resumed = [a if a != "40" else str(killed_at + 3) for a in args]
    out = train(tmp_path, *resumed, "--resume", "last")
    assert out.stdout.count("Saved model:") == 1
    runs = glob.glob(str(tmp_path / "runs" / "example" / "version_*"))
    assert len(runs) == 1  # the same run folder
    epochs = epochs_logged(runs[0])
    assert epochs[-1] == killed_at + 2 and epochs[0] == 0  # went on from the checkpoint, history kept
    after = torch.load(last, map_location="cpu", weights_only=False)
    state = next(v for k, v in after["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["best_model_score"] <= best_before  # the best score carried over (and can only improve)
    assert after["optimizer_states"] and after["lr_schedulers"]  # optimiser and scheduler state are in it
    es = next(v for k, v in after["callbacks"].items() if k.startswith("EarlyStopping"))
    assert es["best_score"] <= best_before


@pytest.mark.slow
def test_compiled_training_equals_eager(ethanol_data):
    """--model.compile true (loss and gradients as one compiled graph) trains the same model as the eager
    path, step for step (float64)."""
    common = ["--data.train_file", "train.extxyz", "--data.val_file", "val.extxyz", "--data.shuffle", "false",
              "--model.dtype", "float64", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
              "--trainer.accelerator", "cpu", "--data.batch_size", "4"]
    train(ethanol_data, *common, "--output", "eager.pt")
    train(ethanol_data, *common, "--model.compile", "true", "--output", "compiled.pt", timeout=900)
    eager = e3pot.load_model(str(ethanol_data / "eager.pt")).state_dict()
    compiled = e3pot.load_model(str(ethanol_data / "compiled.pt")).state_dict()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-10, atol=1e-12, msg=name)


def test_run_logger_writes_each_epoch_and_drops_the_cut_off_one(tmp_path):
    """The metrics of each epoch are on disk as soon as they are logged (a run killed before Lightning's
    100-step flush kept none of its history), and a resumed run drops the rows of the epoch that was cut
    off after its checkpoint, which it logs again."""
    from e3pot.train.cli import RunLogger

    first = RunLogger(save_dir=str(tmp_path), name="run", version="version_0")
    for epoch in range(4):
        first.log_metrics({"epoch": epoch, "train/loss": 1.0 / (epoch + 1)}, step=10 * epoch)
        assert epochs_logged(first.log_dir) == list(range(epoch + 1))  # no finalize, no save: on disk already
    resumed = RunLogger(save_dir=str(tmp_path), name="run", version="version_0", through_epoch=1)
    resumed.log_metrics({"epoch": 2, "train/loss": 0.3}, step=20)
    with open(os.path.join(resumed.log_dir, "metrics.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [(int(r["epoch"]), float(r["train/loss"])) for r in rows] == [(0, 1.0), (1, 0.5), (2, 0.3)]
