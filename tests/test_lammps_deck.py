"""``e3pot lammps deck``: what it refuses and how, before any file is written; no LAMMPS run.

Frames outside the file, unreadable files and settings LAMMPS would refuse (or accept and misuse)
end in one line, ``e3pot lammps: error: ...``, exit code 2. The deck's folder follows the file rule
of e3pot.files. The deck running in LAMMPS is tests/test_lammps.py's.
"""
import os

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import write

from conftest import make_model
from e3pot.cli.main import main
from e3pot.lammps import deck as deck_module
from e3pot.lammps.deck import MAX_SEED, write_deck
from e3pot.model.export import export_model
from e3pot.model.io import save_model

N_FRAMES = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model file and its TorchScript export (a deck with the export writes no deployed.pt: fast)."""
    folder = tmp_path_factory.mktemp("deck_models")
    model = make_model(l_max=1)
    return {"file": save_model(model, str(folder / "model.pt")),
            "export": export_model(model, str(folder / "export.pt"))}


def water(k):
    """Frame ``k``: a water molecule in a cubic cell of 6 + k Å, so that the data file tells the frame."""
    atoms = molecule("H2O", cell=np.eye(3) * (6.0 + k), pbc=True)
    atoms.positions += 3.0
    return atoms


@pytest.fixture
def six(tmp_path):
    path = tmp_path / "six.extxyz"
    write(path, [water(k) for k in range(N_FRAMES)])
    return str(path)


def deck(capsys, *args):
    """(exit code, stdout, stderr) of ``e3pot lammps deck ARGS``."""
    code = main(["lammps", "deck", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code, err, *parts):
    assert code == 2
    assert err.startswith("e3pot lammps: error: ") and err.count("\n") == 1, err  # one line, no traceback
    for part in parts:
        assert part in err, (part, err)


def box_length(folder):
    text = (folder / "structure.data").read_text()
    lo, hi = next(line.split()[:2] for line in text.splitlines() if line.endswith("xlo xhi"))
    return float(hi) - float(lo)


# -- the frame ------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", [-100, -7, 6, 100])
def test_an_index_outside_the_file_is_refused(capsys, tmp_path, six, models, index):
    code, _, err = deck(capsys, six, "--model", models["export"], "-o", tmp_path / "deck", "--index", index)
    assert_refused(code, err, six, f"--index {index} is out of range", f"the file has {N_FRAMES} frames")
    assert not (tmp_path / "deck").exists()


@pytest.mark.parametrize("index, frame", [(0, 0), (2, 2), (5, 5), (-1, 5), (-2, 4), (-6, 0)])
def test_an_index_inside_the_file_picks_that_frame(capsys, tmp_path, six, models, index, frame):
    code, out, err = deck(capsys, six, "--model", models["export"], "-o", tmp_path / "deck", "--index", index)
    assert code == 0, err
    assert box_length(tmp_path / "deck") == pytest.approx(6.0 + frame)


def test_the_last_frame_by_default(capsys, tmp_path, six, models):
    code, _, err = deck(capsys, six, "--model", models["export"], "-o", tmp_path / "deck")
    assert code == 0, err
    assert box_length(tmp_path / "deck") == pytest.approx(6.0 + N_FRAMES - 1)


def test_one_frame_says_which_indices_there_are(capsys, tmp_path, models):
    write(tmp_path / "one.extxyz", water(0))
    code, _, err = deck(capsys, tmp_path / "one.extxyz", "--model", models["export"], "-o", tmp_path / "deck",
                        "--index", 1)
    assert_refused(code, err, "--index 1 is out of range: the file has 1 frame (0 or -1)")


def test_an_npz_structure_file(capsys, tmp_path, models):
    """rMD17-style npz, which e3pot's reader reads like the other commands (molecules: no cell)."""
    coords = np.stack([molecule("H2O").positions * (1 + 0.1 * k) for k in range(3)])
    np.savez(tmp_path / "water.npz", coords=coords, nuclear_charges=[8, 1, 1])
    code, _, err = deck(capsys, tmp_path / "water.npz", "--model", models["export"], "-o", tmp_path / "deck",
                        "--index", 1)
    assert code == 0, err
    text = (tmp_path / "deck" / "structure.data").read_text()
    assert "3 atoms" in text and "2 atom types" in text
    code, _, err = deck(capsys, tmp_path / "water.npz", "--model", models["export"], "-o", tmp_path / "deck2",
                        "--index", 3)
    assert_refused(code, err, "--index 3 is out of range: the file has 3 frames")


def _lammps_data(path):
    write(path, water(0), format="lammps-data")


def _empty(path):
    path.write_text("")


def _unknown_format(path):
    path.write_text("one two three\n")


def _cut_short(path):
    write(path, [water(0), water(1)])
    path.write_text("\n".join(path.read_text().splitlines()[:-2]) + "\n")


def _no_atoms(path):
    write(path, Atoms(cell=np.eye(3) * 5, pbc=True))


def _nan_positions(path):
    atoms = water(0)
    atoms.positions[1, 0] = np.nan
    write(path, atoms)


def _zero_cell(path):
    write(path, Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=np.zeros((3, 3)), pbc=True))


@pytest.mark.parametrize("name, make, message", [
    ("gone.extxyz", None, "no such structure file"),
    ("empty.extxyz", _empty, "contains no structures"),
    ("structure.data", _lammps_data, "is a LAMMPS data file"),
    ("box.lmp", _lammps_data, "is a LAMMPS data file"),
    ("box.weird", _unknown_format, "cannot read the structure"),
    ("cut.extxyz", _cut_short, "frame 1"),
    ("none.extxyz", _no_atoms, "frame 0: structure has no atoms"),
    ("nan.extxyz", _nan_positions, "frame 0: positions contain NaN"),
    ("flat.extxyz", _zero_cell, "frame 0: periodic boundaries"),
])
def test_an_unreadable_structure_is_one_line_naming_the_file(capsys, tmp_path, models, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    code, _, err = deck(capsys, path, "--model", models["export"], "-o", tmp_path / "deck")
    assert_refused(code, err, str(path), message)
    assert not (tmp_path / "deck").exists()


def test_a_negative_index_reads_the_whole_file(capsys, tmp_path, models):
    """A negative index reads the whole file: a bad frame after the wanted one still names its place."""
    path = tmp_path / "cut.extxyz"
    _cut_short(path)
    code, _, err = deck(capsys, path, "--model", models["export"], "-o", tmp_path / "deck", "--index", 0)
    assert code == 0, err  # frame 0 is whole, and nothing after it is read
    code, _, err = deck(capsys, path, "--model", models["export"], "-o", tmp_path / "deck2", "--index", -2)
    assert_refused(code, err, f"{path}, frame 1")


# -- the numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--steps", "-5"], "--steps must be a whole number of steps from 0 to 2147483647, got -5"),
    (["--steps", "2147483648"], "--steps must be"),
    (["--timestep", "0"], "--timestep must be a positive number of fs, got 0.0"),
    (["--timestep", "-0.5"], "--timestep must be a positive number of fs"),
    (["--timestep", "nan"], "--timestep must be a positive number of fs"),
    (["--timestep", "inf"], "--timestep must be a positive number of fs"),
    (["--temperature", "-10"], "--temperature must be a number of K, 0 or more, got -10.0"),
    (["--temperature", "-10", "--ensemble", "nve"], "--temperature must be a number of K, 0 or more"),
    (["--temperature", "nan"], "--temperature must be a number of K"),
    (["--temperature", "0"], "--temperature must be above 0 K with --ensemble nvt"),
    (["--temperature", "0", "--ensemble", "npt"], "--temperature must be above 0 K with --ensemble npt"),
])
def test_a_setting_lammps_cannot_use_is_refused_first(capsys, tmp_path, args, message):
    """Refused before the structure or the model is looked at (neither exists here)."""
    code, _, err = deck(capsys, tmp_path / "gone.extxyz", "--model", tmp_path / "gone.pt", "-o", tmp_path / "deck",
                        *args)
    assert_refused(code, err, message)
    assert not (tmp_path / "deck").exists()


def test_zero_kelvin_is_allowed_without_a_thermostat(capsys, tmp_path, six, models):
    code, _, err = deck(capsys, six, "--model", models["export"], "-o", tmp_path / "deck", "--temperature", "0",
                        "--ensemble", "nve", "--steps", "0")
    assert code == 0, err
    text = (tmp_path / "deck" / "in.lammps").read_text()
    assert "velocity        all create 0 12345 " in text and "fix             md all nve" in text
    assert text.rstrip().endswith("run             0")


def test_one_atom_has_no_temperature_to_start_from(capsys, tmp_path, models):
    write(tmp_path / "atom.extxyz", Atoms("Si", cell=np.eye(3) * 5, pbc=True))
    code, _, err = deck(capsys, tmp_path / "atom.extxyz", "--model", models["export"], "-o", tmp_path / "deck")
    assert_refused(code, err, "a structure of one atom has no temperature")
    code, _, err = deck(capsys, tmp_path / "atom.extxyz", "--model", models["export"], "-o", tmp_path / "deck",
                        "--ensemble", "nve", "--temperature", "0")
    assert code == 0, err


@pytest.mark.parametrize("settings, message", [
    ({"seed": 0}, "seed must be a whole number from 1 to 2147483646"),
    ({"seed": -3}, "seed must be"),
    ({"seed": MAX_SEED + 1}, "seed must be"),  # 2^31 - 1: velocity create never ends drawing Gaussian velocities
    ({"seed": 12.0}, "seed must be"),
    ({"thermo": -1}, "thermo must be"),
    ({"dump": 0}, "dump must be a whole number of steps from 1"),
    ({"steps": 2.5}, "--steps must be"),
    ({"steps": True}, "--steps must be"),
    ({"timestep_fs": 0}, "--timestep must be"),
    ({"ensemble": "nph"}, "--ensemble 'nph': use one of nvt, nve, npt"),
])
def test_write_deck_refuses_what_lammps_cannot_use(tmp_path, settings, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        write_deck(str(tmp_path / "gone.extxyz"), str(tmp_path / "gone.pt"), str(tmp_path / "deck"), **settings)
    assert not (tmp_path / "deck").exists()


def test_a_margin_below_zero_is_refused():
    with pytest.raises(ValueError, match="margin must be"):
        deck_module.boxed(molecule("H2O"), margin=-1.0)


# -- the files ------------------------------------------------------------------------------------

def test_a_missing_parent_folder_is_refused_up_front(capsys, tmp_path, six, models):
    out = tmp_path / "not-there" / "deck"
    code, _, err = deck(capsys, six, "--model", models["file"], "-o", out)
    assert_refused(code, err, f"-o {out}: the folder {tmp_path / 'not-there'} does not exist")
    assert not (tmp_path / "not-there").exists()


def test_a_failed_deck_leaves_no_new_folder(capsys, tmp_path, models):
    write(tmp_path / "ammonia.extxyz", molecule("NH3"))  # N: not an element of the model
    code, _, err = deck(capsys, tmp_path / "ammonia.extxyz", "--model", models["file"], "-o", tmp_path / "deck")
    assert_refused(code, err, "element N not known to the model")
    assert not (tmp_path / "deck").exists()


def test_a_failed_export_removes_only_the_new_folder(capsys, tmp_path, six, models, monkeypatch):
    def failing_export(model, path, metadata=None):
        raise OSError("No space left on device")

    monkeypatch.setattr("e3pot.model.export.export_model", failing_export)
    code, _, err = deck(capsys, six, "--model", models["file"], "-o", tmp_path / "deck")
    assert_refused(code, err, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["six.extxyz"]


def test_a_failed_overwrite_leaves_the_old_deck_as_it_was(capsys, tmp_path, six, models, monkeypatch):
    """The texts are made before the export; every file is moved into place together at the end."""
    folder = tmp_path / "deck"
    folder.mkdir()
    old = {name: f"old {name}\n" for name in ("structure.data", "in.lammps", "deployed.pt")}
    for name, text in old.items():
        (folder / name).write_text(text)

    def failing_writer(atoms, elements):
        raise ValueError("ASE cannot write this structure")

    monkeypatch.setattr(deck_module, "data_file_text", failing_writer)
    code, _, err = deck(capsys, six, "--model", models["file"], "-o", folder, "--overwrite")
    assert_refused(code, err, "ASE cannot write this structure")
    assert {name: (folder / name).read_text() for name in os.listdir(folder)} == old


def test_an_existing_deck_needs_overwrite(capsys, tmp_path, six, models):
    folder = tmp_path / "deck"
    assert deck(capsys, six, "--model", models["export"], "-o", folder)[0] == 0
    before = (folder / "in.lammps").read_text()
    code, _, err = deck(capsys, six, "--model", models["export"], "-o", folder, "--steps", "7")
    assert_refused(code, err, f"-o {folder / 'structure.data'} exists; pass --overwrite")
    assert (folder / "in.lammps").read_text() == before
    code, _, err = deck(capsys, six, "--model", models["export"], "-o", folder, "--steps", "7", "--overwrite")
    assert code == 0, err
    assert (folder / "in.lammps").read_text().rstrip().endswith("run             7")
    assert not [name for name in os.listdir(folder) if name.endswith(".partial")]


def test_an_input_is_never_an_output(capsys, tmp_path, six, models):
    folder = tmp_path / "deck"
    folder.mkdir()
    model = folder / "deployed.pt"  # the name the deck gives the export of a model file
    model.write_bytes(open(models["file"], "rb").read())
    code, _, err = deck(capsys, six, "--model", model, "-o", folder, "--overwrite")
    assert_refused(code, err, f"-o {model} is also an input")
    assert model.read_bytes() == open(models["file"], "rb").read()


def test_a_file_as_the_deck_folder_is_refused(capsys, tmp_path, six, models):
    code, _, err = deck(capsys, six, "--model", models["export"], "-o", six)
    assert_refused(code, err, f"-o {six} exists and is not a folder")
    assert open(six).read().startswith("3\n")
