"""Training through the command line: loss goes down, the model file loads elsewhere, resume, config errors."""
import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.io import read, write

import e3pot
from e3pot.data.io import DataError
from e3pot.train.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
TINY = ["--model.l_max", "1", "--model.num_features", "4", "--model.num_layers", "1", "--model.radial_hidden", "8",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "small.extxyz")
    frames = read(os.path.join(ROOT, "data", "example.extxyz"), ":")
    write(path, frames[:30] + frames[250:280])
    return path


def epochs_of(run_dir, key):
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        return [(int(r["epoch"]), float(r[key])) for r in csv.DictReader(fh) if r.get(key)]


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    """One short run shared by the tests below (6 epochs of a tiny model on 60 frames)."""
    work = tmp_path_factory.mktemp("run")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        model_path = main(["--config", CONFIG, "--data.train_file", small_data, "--trainer.max_epochs", "6",
                           "--output", "model.pt", "--model.lr", "0.02", *TINY])
    finally:
        os.chdir(cwd)
    return work, os.path.join(work, model_path)


def test_loss_goes_down(trained):
    work, model_path = trained
    (run_dir,) = glob.glob(os.path.join(work, "runs", "example", "version_*"))
    losses = epochs_of(run_dir, "train/loss")
    assert len(losses) == 6
    assert losses[-1][1] < 0.7 * losses[0][1]
    assert os.path.exists(os.path.join(run_dir, "config.yaml"))  # resolved config saved with the run
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "last.ckpt"))
    assert os.path.exists(model_path)
    val = e3pot.load_model(model_path).metadata["validation"]
    assert {"val/forces_mae_meV_A", "val/energy_mae_meV_atom", "val/energy_rmse_meV", "val/energy_mean_meV",
            "val/energy_mean_meV_atom"} <= set(val)
    assert abs(val["val/energy_mean_meV"]) <= val["val/energy_mae_meV"]
    assert e3pot.load_model(model_path).energy_shift.dtype == torch.float64  # float32 model, float64 shifts


def test_model_loads_in_new_process(trained, small_data):
    _, model_path = trained
    model = e3pot.load_model(model_path)
    frames = read(small_data, ":4")
    expected = e3pot.predict(model, frames)
    code = (
        "import json, sys, e3pot; from ase.io import read\n"
        f"m = e3pot.load_model({model_path!r})\n"
        f"p = e3pot.predict(m, read({small_data!r}, ':4'))\n"
        "print(json.dumps([[d['energy'], d['forces'].tolist()] for d in p]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for (energy, forces), ref in zip(got, expected):
        assert energy == ref["energy"]
        np.testing.assert_array_equal(np.array(forces), ref["forces"])
    # the file holds only plain data: loading it does not need pickled modules
    import torch
    assert isinstance(torch.load(model_path, weights_only=True)["state_dict"], dict)


def test_resume_from_last_checkpoint(trained, small_data):
    work, _ = trained
    cwd = os.getcwd()
    os.chdir(work)
    try:
        main(["--config", CONFIG, "--data.train_file", small_data, "--trainer.max_epochs", "8",
              "--output", "model2.pt", "--resume", "last", *TINY])
    finally:
        os.chdir(cwd)
    runs = sorted(glob.glob(os.path.join(work, "runs", "example", "version_*")))
    assert len(runs) == 1  # the resumed run goes on in its own folder
    epochs = [e for e, _ in epochs_of(runs[-1], "train/loss")]
    assert epochs == list(range(8))  # continued where the first run stopped, in the same metrics file
    ckpt = torch.load(os.path.join(runs[0], "checkpoints", "last.ckpt"), map_location="cpu", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    val = [v for _, v in epochs_of(runs[0], "val/loss")]
    assert state["best_model_score"] == pytest.approx(min(val), rel=1e-6)  # the best score carried over


def test_unknown_config_key(capsys, small_data):
    with pytest.raises(SystemExit) as exc:
        main(["--config", CONFIG, "--data.train_file", small_data, "--model.num_featurs", "8"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "num_featurs" in err


def test_mistyped_key_in_yaml(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  r_maxx: 4.0\ndata:\n  train_file: x.extxyz\n")
    with pytest.raises(SystemExit):
        main(["--config", str(cfg)])
    assert "r_maxx" in capsys.readouterr().err


def test_loss_needs_missing_forces(tmp_path):
    frames = read(os.path.join(ROOT, "data", "example.extxyz"), ":12")
    for atoms in frames:
        atoms.calc.results.pop("forces")
    path = str(tmp_path / "noforces.extxyz")
    write(path, frames)
    os.chdir(tmp_path)
    with pytest.raises(DataError, match=r"noforces.extxyz, frame \d+: no forces label, but the loss needs it"):
        main(["--config", CONFIG, "--data.train_file", path, "--trainer.max_epochs", "1", *TINY])
