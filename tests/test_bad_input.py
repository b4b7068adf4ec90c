"""Every input gets a right answer or a clear error that names the file, the frame and what is wrong."""
import glob
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import fcc111, graphene, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import read, write
from ase.io.trajectory import Trajectory

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.cli.predict import main as predict_main
from e3pot.data.io import DataError, read_frames
from e3pot.train.cli import main as train_main
from e3pot.train.cli import run as train_run
from e3pot.train.module import TrainingError
from tests.conftest import make_model
from tests.trained_model import SUBPROCESS_ENV, model_file_64  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
EXAMPLE = os.path.join(ROOT, "data", "example.extxyz")
TINY = ["--model.l_max", "0", "--model.num_features", "4", "--model.num_layers", "1", "--model.radial_hidden", "4",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def frames():
    return read(EXAMPLE, ":24")  # ethanol only (H, C, O)


def train_in(tmp_path, args):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return train_main(["--config", CONFIG, *TINY, *args])
    finally:
        os.chdir(cwd)


# -- 1. coincident atoms, non-finite losses and predictions ------------------------------------

def test_coincident_atoms_in_training_file(tmp_path, frames):
    frames[5].positions[3] = frames[5].positions[4]
    path = str(tmp_path / "dup.extxyz")
    write(path, frames)
    with pytest.raises(DataError, match=r"dup.extxyz, frame 5: atoms 3 and 4 \(indices from 0\) are 0 Å apart"):
        train_in(tmp_path, ["--data.train_file", path, "--trainer.max_epochs", "1"])
    assert not glob.glob(str(tmp_path / "runs" / "**" / "*.pt"), recursive=True)


def test_coincident_atoms_in_calculator_and_predict(model_file_64, tmp_path, capsys):
    atoms = molecule("CH3CH2OH")
    atoms.positions[2] = atoms.positions[0] + [0.05, 0, 0]
    atoms.calc = E3PotCalculator(model_file_64)
    with pytest.raises(DataError, match=r"atoms: atoms 0 and 2 \(indices from 0\) are 0.05 Å apart"):
        atoms.get_potential_energy()
    with pytest.raises(DataError, match=r"structure 1: atoms 0 and 2"):
        e3pot.predict(e3pot.load_model(model_file_64), [molecule("CH4"), atoms])
    path = str(tmp_path / "close.extxyz")
    write(path, [molecule("CH4"), atoms])
    assert predict_main([model_file_64, path, "-o", str(tmp_path / "o.extxyz"), "--no-progress"]) == 2
    assert "close.extxyz, frame 1: atoms 0 and 2" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.extxyz")


def test_nonfinite_predictions_are_an_error(tmp_path):
    model = make_model()
    with torch.no_grad():
        model.readout.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"structure 0: the model returned NaN or infinite energy"):
        e3pot.predict(model, molecule("CH4"))
    atoms = molecule("CH4")
    atoms.calc = E3PotCalculator(model)
    with pytest.raises(ValueError, match=r"atoms: the model returned NaN or infinite"):
        atoms.get_forces()


def overflowing_label_data(tmp_path, frames):
    """Frame 7 of the training file has an energy label whose square overflows: the loss is infinite."""
    frames[7].calc.results["energy"] = 1e200
    train, val = str(tmp_path / "train.extxyz"), str(tmp_path / "val.extxyz")
    write(train, frames[:16])
    write(val, frames[16:])
    # E0s from a table and no shift re-fit, so that the bad label spoils only its own batch
    return ["--data.train_file", train, "--data.val_file", val, "--data.batch_size", "4",
            "--model.e0s", "{H: -13.6, C: -1030.0, O: -2040.0}", "--model.refit_shift", "false"]


def test_nonfinite_loss_stops_training_and_names_the_frames(tmp_path, frames):
    args = overflowing_label_data(tmp_path, frames)
    with pytest.raises(TrainingError, match=r"non-finite training loss .* the batch held: .*train.extxyz, frame 7"):
        train_in(tmp_path, args + ["--trainer.max_epochs", "2", "--output", "model.pt"])
    assert not os.path.exists(tmp_path / "model.pt")


def test_skipping_nonfinite_batches_is_explicit_and_reported(tmp_path, frames, capsys):
    args = overflowing_label_data(tmp_path, frames)
    with pytest.warns(UserWarning, match=r"skipped a batch with a non-finite loss .*train.extxyz, frame 7"):
        path = train_in(tmp_path, args + ["--trainer.max_epochs", "2", "--output", "model.pt",
                                          "--model.skip_nonfinite_batches", "true"])
    assert "Skipped 8 frames in batches with a non-finite loss" in capsys.readouterr().out  # 2 epochs x 4
    model = e3pot.load_model(str(tmp_path / path))
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    (metrics,) = glob.glob(str(tmp_path / "runs" / "*" / "version_*" / "metrics.csv"))
    import csv

    with open(metrics) as fh:  # the skipped batch does not enter the epoch's metrics
        losses = [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    assert len(losses) == 2 and np.isfinite(losses).all()


# -- 2. an element only in the validation data -------------------------------------------------

def test_element_only_in_validation_file(tmp_path, frames):
    train, val = str(tmp_path / "train.extxyz"), str(tmp_path / "val.extxyz")
    write(train, frames[:16])
    frames[20].numbers[8] = 7  # one N atom
    write(val, frames[16:])
    with pytest.raises(DataError, match=r"element\(s\) N \(in .*val.extxyz\) do not occur in the training frames"):
        train_in(tmp_path, ["--data.train_file", train, "--data.val_file", val, "--trainer.max_epochs", "1"])


# -- 3, 4. predict output formats and paths -----------------------------------------------------

def test_predict_writes_a_trajectory_for_traj(model_file_64, tmp_path):
    src = str(tmp_path / "in.extxyz")
    write(src, [molecule("CH3CH2OH"), molecule("CH4")])
    assert predict_main([model_file_64, src, "-o", str(tmp_path / "p.traj"), "--no-progress"]) == 0
    assert predict_main([model_file_64, src, "-o", str(tmp_path / "p.extxyz"), "--no-progress"]) == 0
    traj = list(Trajectory(str(tmp_path / "p.traj")))
    text = read(str(tmp_path / "p.extxyz"), ":")
    assert len(traj) == 2
    for a, b in zip(traj, text):
        assert a.get_potential_energy() == pytest.approx(b.info["e3pot_energy"], abs=1e-10)
        np.testing.assert_allclose(a.get_forces(), b.arrays["e3pot_forces"], atol=1e-10)


def test_predict_refuses_bad_output_paths_before_any_work(model_file_64, tmp_path, capsys):
    src = str(tmp_path / "in.extxyz")
    write(src, [molecule("CH4")])
    cases = [
        (["-o", str(tmp_path / "p.cif")], "names no format this command writes"),
        (["-o", str(tmp_path / "same.extxyz"), "--csv", str(tmp_path / "same.extxyz")], "are the same file"),
        (["-o", str(tmp_path)], "is a folder"),
        (["-o", str(tmp_path / "p.extxyz"), "--csv", str(tmp_path)], "is a folder"),
        (["-o", str(tmp_path / "missing" / "p.extxyz")], "does not exist"),
        (["-o", src], "is also an input"),
    ]
    for extra, message in cases:
        assert predict_main([model_file_64, src, "--no-progress", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    assert sorted(os.listdir(tmp_path)) == ["in.extxyz"]


# -- 5. slabs and 2D materials with a zero cell vector along the non-periodic direction ----------

@pytest.mark.parametrize("build", [lambda: graphene(formula="C2", size=(1, 1, 1)),
                                   lambda: fcc111("Si", (1, 1, 2), a=5.4, vacuum=None)])
def test_zero_cell_vector_along_a_non_periodic_direction(build):
    atoms = build()
    assert not atoms.pbc[2] and np.allclose(atoms.cell[2], 0)
    model = make_model()
    atoms.calc = E3PotCalculator(model)
    energy = atoms.get_potential_energy()
    assert np.isfinite(energy) and np.isfinite(atoms.get_forces()).all()
    # periodic in the plane: a 2x2 supercell has four times the energy
    big = atoms.repeat((2, 2, 1))
    big.calc = E3PotCalculator(model)
    assert big.get_potential_energy() == pytest.approx(4 * energy, rel=1e-10)
    # no volume, so no stress (ASE's stress is per cell volume); said clearly
    with pytest.raises(PropertyNotImplementedError, match="stress needs periodic boundaries and a cell with a volume"):
        atoms.get_stress()
    assert "stress" not in e3pot.predict(model, atoms)[0]


# -- 6, 7. settings that used to fail deep inside a library -------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--model.forces_weight", "0", "--model.energy_weight", "0"], "the loss would be empty"),
    (["--model.r_max", "0"], "model.r_max must be positive"),
    (["--data.n_train", "0"], "data.n_train must be at least 1, got 0"),
    (["--data.batch_size", "0"], "data.batch_size must be at least 1, got 0"),
    (["--model.energy_weight", "-1"], "model.energy_weight must be 0 or positive"),
])
def test_bad_settings_give_one_line(tmp_path, capsys, args, message):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = train_run(["--config", CONFIG, "--data.train_file", EXAMPLE, "--trainer.max_epochs", "1", *args, *TINY])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err


# -- 8, 9. Python API inputs ---------------------------------------------------------------------

def test_calculator_takes_a_path_object_and_predict_one_atoms(model_file_64):
    atoms = molecule("CH3CH2OH")
    by_str = E3PotCalculator(model_file_64).get_potential_energy(atoms)
    assert E3PotCalculator(pathlib.Path(model_file_64)).get_potential_energy(atoms) == by_str
    (result,) = e3pot.predict(pathlib.Path(model_file_64), atoms)
    assert result["energy"] == by_str
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        e3pot.predict(e3pot.load_model(model_file_64), [atoms], batch_size=0)


# -- 10. resuming with other settings -------------------------------------------------------------

def test_resume_with_other_settings_says_what_differs(tmp_path, frames):
    data = str(tmp_path / "a.extxyz")
    other = str(tmp_path / "b.extxyz")
    write(data, frames[:20])
    write(other, frames[4:24])
    train_in(tmp_path, ["--data.train_file", data, "--trainer.max_epochs", "1", "--output", "m.pt"])
    with pytest.raises(ValueError, match=r"model.num_features: 4 in the checkpoint, 8 now"):
        train_in(tmp_path, ["--data.train_file", data, "--trainer.max_epochs", "2", "--resume", "last",
                            "--model.num_features", "8"])
    with pytest.raises(ValueError, match=r"data.train_file: '.*a.extxyz' in the checkpoint, '.*b.extxyz' now"):
        train_in(tmp_path, ["--data.train_file", other, "--trainer.max_epochs", "2", "--resume", "last"])


# -- 11. an unreadable frame in the middle of a file ---------------------------------------------

def test_unparseable_frame_is_numbered(tmp_path, frames):
    path = tmp_path / "broken.extxyz"
    write(str(path), frames[:4])
    lines = path.read_text().splitlines()
    n = len(frames[0]) + 2
    row = 2 * n + 2 + 1  # the second atom of frame 2
    lines[row] = lines[row].replace(lines[row].split()[1], "1.2.3", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"broken.extxyz, frame 2: cannot read the structure"):
        read_frames(str(path))


# -- 12. a failing train.py shows its message, and the traceback only on request ------------------

@pytest.mark.slow
def test_train_py_error_without_traceback(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, "--data.train_file",
           str(tmp_path / "nowhere.extxyz")]
    plain = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert plain.returncode == 2
    assert "train.py: error: no such data file" in plain.stderr and "nowhere.extxyz" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=tmp_path, env=SUBPROCESS_ENV)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
