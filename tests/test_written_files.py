"""What the library writes on its own, through the Python API: the calculator's ``flagged_file``.

The rule of e3pot/files.py holds here as for the commands: never an input (a model, a structure), the format
follows the name or is refused, and a missing folder or a file of another format is refused when the option is
given, before any step runs, not in the middle of an MD run."""
import os

import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.io import Trajectory, read, write
from ase.md.verlet import VelocityVerlet

from e3pot.calculator import E3PotCalculator
from e3pot.files import OutputError
from e3pot.model.io import save_model
from e3pot.testing.models import random_model


@pytest.fixture(scope="module")
def committee(tmp_path_factory):
    folder = tmp_path_factory.mktemp("committee")
    return [save_model(random_model("e3", seed=s), str(folder / f"m{s}.pt")) for s in range(2)]


def _bytes(path):
    with open(path, "rb") as fh:
        return fh.read()


def test_a_committee_member_is_never_the_flagged_file(committee):
    before = _bytes(committee[1])
    with pytest.raises(OutputError, match=r"also an input"):
        E3PotCalculator(committee, uncertainty_threshold=1e-6, flagged_file=committee[1])
    # the same file under another name (a link) is still the input
    link = committee[1] + ".xyz"
    os.symlink(committee[1], link)
    try:
        with pytest.raises(OutputError, match="also an input"):
            E3PotCalculator(committee, uncertainty_threshold=1e-6, flagged_file=link)
    finally:
        os.remove(link)
    assert _bytes(committee[1]) == before


def test_the_format_follows_the_name(committee, tmp_path):
    for name in ("flagged.traj", "flagged.db", "flagged.pt", "flagged"):
        with pytest.raises(OutputError, match=r"\.xyz or \.extxyz"):
            E3PotCalculator(committee, uncertainty_threshold=1e-6, flagged_file=str(tmp_path / name))
    assert os.listdir(tmp_path) == []


def test_an_existing_file_of_another_format_is_refused(committee, tmp_path):
    traj = str(tmp_path / "run.xyz")  # an ASE trajectory under an extended XYZ name
    with Trajectory(traj, "w") as t:
        t.write(molecule("H2O"))
    model_copy = str(tmp_path / "model.xyz")
    with open(model_copy, "wb") as fh:
        fh.write(_bytes(committee[0]))
    for path in (traj, model_copy):
        before = _bytes(path)
        with pytest.raises(OutputError, match="not an extended XYZ file"):
            E3PotCalculator(committee, uncertainty_threshold=1e-6, flagged_file=path)
        assert _bytes(path) == before


def test_a_missing_folder_is_refused_up_front(committee, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        E3PotCalculator(committee, uncertainty_threshold=1e-6, flagged_file=str(tmp_path / "no" / "f.xyz"))
    with pytest.raises(OutputError, match="is a folder"):
        E3PotCalculator(committee, uncertainty_threshold=1e-6, flagged_file=str(tmp_path))


def test_flagged_frames_are_appended_to_an_extxyz_file(committee, tmp_path):
    path = tmp_path / "flagged.xyz"  # a pathlib.Path works as well as a str
    write(str(path), molecule("H2O"))
    atoms = molecule("CH3CH2OH")
    atoms.calc = E3PotCalculator(committee, uncertainty_threshold=1e-9, flagged_file=path)
    atoms.set_momenta(np.random.default_rng(0).normal(0, 0.3, (len(atoms), 3)))
    VelocityVerlet(atoms, 0.5 * units.fs).run(3)
    frames = read(str(path), ":")
    assert len(frames) == 1 + 4 and frames[0].get_chemical_formula() == "H2O"
    assert all(f.arrays["e3pot_forces_std"].shape == (9,) for f in frames[1:])


@pytest.mark.parametrize("option, value, message", [
    ("uncertainty_threshold", "0.5", "uncertainty_threshold must be a number in eV/Å, got '0.5'"),
    ("uncertainty_threshold", True, "uncertainty_threshold must be a number"),
    ("skin", "0.5", "skin must be a number in Å, got '0.5'"),
    ("compile", "yes", "compile must be True or False"),
    ("stop_when_uncertain", 1, "stop_when_uncertain must be True or False"),
    ("flagged_file", 3, "flagged_file must be a file name"),
])
def test_options_of_the_wrong_type_get_a_clear_error(committee, option, value, message):
    options = {"uncertainty_threshold": 0.5, option: value}
    with pytest.raises((TypeError, ValueError)) as caught:
        E3PotCalculator(committee, **options)
    assert message in str(caught.value)


def test_numeric_options_accept_numpy_numbers(committee):
    calc = E3PotCalculator(committee, uncertainty_threshold=np.float32(0.5), skin=np.float64(0.2))
    assert calc.uncertainty_threshold == 0.5
