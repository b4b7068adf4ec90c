"""``e3pot predict``: numbers equal the calculator's, batching, CSV, error tables, bad inputs."""
import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write

from e3pot.calculator import E3PotCalculator
from e3pot.cli.main import main as e3pot_main
from e3pot.cli.predict import main
from tests.trained_model import (  # noqa: F401  (fixtures)
    EXAMPLE_DATA, ROOT, SUBPROCESS_ENV, model_file_64, single_torch_thread, trained_model)

# extxyz writes per-atom arrays with 8 decimals; per-structure values are written exactly (repr).
ARRAY_ATOL = 1e-8


def mixed_structures():
    """Molecules of different sizes and two periodic cells, interleaved (batches mix both kinds)."""
    rng = np.random.default_rng(5)
    skewed = Atoms("SiOOCH", scaled_positions=rng.uniform(size=(5, 3)), pbc=True,
                   cell=[[3.1, 0.0, 0.0], [0.4, 3.3, 0.0], [-0.3, 0.2, 3.0]])
    si = bulk("Si", "diamond", a=5.3)
    si.positions += rng.normal(scale=0.05, size=si.positions.shape)
    water, methane, ethanol = molecule("H2O"), molecule("CH4"), molecule("CH3CH2OH")
    for atoms in (water, methane, ethanol):
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return [water, skewed, methane, ethanol, si, molecule("H2O")]


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("inputs") / "mixed.extxyz")
    write(path, mixed_structures())
    return path


@pytest.fixture(scope="module")
def reference(model_file_64):
    """The calculator's results, one structure at a time."""
    calc = E3PotCalculator(model_file_64)
    out = []
    for atoms in read_back(mixed_structures()):
        atoms.calc = calc
        out.append({"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                    "energies": atoms.get_potential_energies(),
                    "stress": atoms.get_stress() if atoms.pbc.any() else None})
    return out


def read_back(structures):
    """The structures as the CLI sees them (positions through an extxyz round trip)."""
    import io

    buf = io.StringIO()
    write(buf, structures, format="extxyz")
    buf.seek(0)
    return read(buf, ":", format="extxyz")


def check_output(path, reference):
    frames = read(path, ":")
    assert len(frames) == len(reference)
    for k, (atoms, ref) in enumerate(zip(frames, reference)):
        assert atoms.info["e3pot_energy"] == pytest.approx(ref["energy"], rel=1e-12, abs=0), k
        np.testing.assert_allclose(atoms.arrays["e3pot_forces"], ref["forces"], rtol=0, atol=ARRAY_ATOL)
        np.testing.assert_allclose(atoms.arrays["e3pot_energies"], ref["energies"], rtol=0, atol=ARRAY_ATOL)
        if ref["stress"] is None:
            assert "e3pot_stress" not in atoms.info, k
        else:
            assert np.abs(ref["stress"]).max() > 1e-3
            np.testing.assert_allclose(atoms.info["e3pot_stress"], ref["stress"], rtol=1e-10, atol=1e-14)
    return frames


@pytest.mark.parametrize("batch_size", [1, 3])
def test_predictions_equal_calculator(model_file_64, mixed_file, reference, tmp_path, capsys, batch_size):
    out, table = str(tmp_path / "pred.extxyz"), str(tmp_path / "pred.csv")
    rc = main([model_file_64, mixed_file, "-o", out, "--csv", table, "--batch-size", str(batch_size),
               "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert f"wrote 6 structures to {out}" in stdout
    assert "MAE" not in stdout  # no reference labels in these inputs, so no error table
    frames = check_output(out, reference)
    originals = read(mixed_file, ":")
    for atoms, orig in zip(frames, originals):
        assert atoms.get_chemical_formula() == orig.get_chemical_formula()
        np.testing.assert_allclose(atoms.positions, orig.positions, atol=1e-8)
        assert atoms.pbc.tolist() == orig.pbc.tolist()
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(reference)
    for k, (row, ref, atoms) in enumerate(zip(rows, reference, originals)):
        assert int(row["index"]) == k
        assert row["source"] == f"{mixed_file}, frame {k}"
        assert int(row["n_atoms"]) == len(atoms)
        assert float(row["energy_eV"]) == pytest.approx(ref["energy"], abs=2e-10)
        assert float(row["energy_per_atom_eV"]) == pytest.approx(ref["energy"] / len(atoms), abs=2e-10)
    assert not os.path.exists(out + ".partial")


def test_several_inputs_in_order(model_file_64, mixed_file, reference, tmp_path):
    second = str(tmp_path / "second.xyz")
    write(second, read(mixed_file, ":2"), format="extxyz")
    out = str(tmp_path / "pred.extxyz")
    assert main([model_file_64, second, mixed_file, "-o", out, "--batch-size", "4", "--no-progress"]) == 0
    check_output(out, reference[:2] + reference)


def test_console_entry_point(model_file_64, mixed_file, reference, tmp_path):
    out = str(tmp_path / "pred.extxyz")
    proc = subprocess.run([sys.executable, "-m", "e3pot", "predict", model_file_64, mixed_file, "-o", out,
                           "--batch-size", "4"], capture_output=True, text=True, cwd=ROOT,
                          env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 6 structures" in proc.stdout
    check_output(out, reference)


def test_error_table_against_reference_labels(trained_model, tmp_path, capsys):
    frames = read(EXAMPLE_DATA, ":")
    frames = frames[2:250:40] + frames[252:500:60]  # ethanol and acetaldehyde, not in the training set
    path = str(tmp_path / "labelled.extxyz")
    write(path, frames)
    assert main([trained_model, path, "-o", str(tmp_path / "out.extxyz"), "--batch-size", "5", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "Errors against the reference labels" in stdout

    calc = E3PotCalculator(trained_model)
    de, de_atom, df = [], [], []
    for atoms in read(path, ":"):
        ref_e, ref_f = atoms.get_potential_energy(), atoms.get_forces()
        pred_e, pred_f = calc.get_potential_energy(atoms), calc.get_forces(atoms)
        de.append(pred_e - ref_e)
        de_atom.append((pred_e - ref_e) / len(atoms))
        df.append((pred_f - ref_f).ravel())
    expected = {"energy": np.array(de), "energy / atom": np.array(de_atom), "forces": np.concatenate(df)}
    for name, err in expected.items():
        match = re.search(rf"^\| {re.escape(name)}\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", stdout, re.M)
        assert match, f"no row {name!r} in\n{stdout}"
        mae, rmse = float(match.group(1)), float(match.group(2))
        assert mae == pytest.approx(1000 * np.abs(err).mean(), abs=1.5e-3)
        assert rmse == pytest.approx(1000 * np.sqrt((err ** 2).mean()), abs=1.5e-3)
        if name != "forces":  # the mean signed error (prediction - reference) shows an offset
            match = re.search(rf"^\| {re.escape(name)}\s*\|[^|]*\|[^|]*\|\s*([-+\d.]+)\s*\|", stdout, re.M)
            assert float(match.group(1)) == pytest.approx(1000 * err.mean(), abs=1.5e-3)
    # and the trained model is (roughly) right, in the right units
    assert np.abs(expected["energy / atom"]).mean() < 0.1  # eV/atom
    assert np.abs(expected["forces"]).mean() < 0.6  # eV/Å


def test_help_names_the_label_options_and_the_units_written(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--energy-key", "--forces-key", "--stress-key", "--energy-unit", "--length-unit", "--stress-unit"):
        assert option in text
    assert "kcal/mol" in text and "Bohr" in text and "npz" in text
    assert "everything written is in eV and Å" in text


# -- bad inputs ---------------------------------------------------------------------------------

def run_failing(argv, capsys, out):
    """Exit code 2, a one-line message, and no output (complete or partial) left behind."""
    table = out.replace(".extxyz", ".csv")
    rc = main(argv + ["--csv", table])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("e3pot predict: error: "), captured.err
    assert "Traceback" not in captured.err
    for path in (out, table):
        assert not os.path.exists(path) and not os.path.exists(path + ".partial"), path
    return captured.err.strip()


def test_unknown_element(model_file_64, tmp_path, capsys):
    path = str(tmp_path / "with_nitrogen.extxyz")
    write(path, [molecule("H2O"), molecule("CH4"), molecule("NH3"), molecule("H2O")])
    out = str(tmp_path / "out.extxyz")
    msg = run_failing([model_file_64, path, "-o", out, "--batch-size", "2", "--no-progress"], capsys, out)
    assert f"{path}, frame 2" in msg
    assert re.search(r"element\(s\) N not known to the model", msg), msg
    assert "H, C, O, Si" in msg  # the elements the model does know


def test_unreadable_file(model_file_64, tmp_path, capsys):
    path = str(tmp_path / "garbage.extxyz")
    with open(path, "w") as fh:
        fh.write("this is not\na structure file\n")
    out = str(tmp_path / "out.extxyz")
    msg = run_failing([model_file_64, path, "-o", out, "--no-progress"], capsys, out)
    assert f"{path}, frame 0: cannot read the structure" in msg


def test_missing_input_file(model_file_64, tmp_path, capsys):
    path = str(tmp_path / "nowhere.extxyz")
    out = str(tmp_path / "out.extxyz")
    msg = run_failing([model_file_64, path, "-o", out, "--no-progress"], capsys, out)
    assert msg.endswith(f"{path}: no such file")


def test_missing_model_file(mixed_file, tmp_path, capsys):
    out = str(tmp_path / "out.extxyz")
    msg = run_failing([str(tmp_path / "nomodel.pt"), mixed_file, "-o", out, "--no-progress"], capsys, out)
    assert "nomodel.pt" in msg


def test_pbc_without_cell(model_file_64, tmp_path, capsys):
    water = molecule("H2O")
    water.pbc = True  # but the cell stays zero
    path = str(tmp_path / "nocell.extxyz")
    write(path, [molecule("CH4"), water])
    out = str(tmp_path / "out.extxyz")
    msg = run_failing([model_file_64, path, "-o", out, "--no-progress"], capsys, out)
    assert f"{path}, frame 1" in msg
    assert "pbc" in msg and "periodic cell vectors are zero" in msg


def test_bad_batch_size(model_file_64, mixed_file, tmp_path, capsys):
    out = str(tmp_path / "out.extxyz")
    msg = run_failing([model_file_64, mixed_file, "-o", out, "--batch-size", "0"], capsys, out)
    assert "--batch-size must be at least 1, got 0" in msg


def test_dispatcher_passes_the_exit_code(model_file_64, tmp_path, capsys):
    out = str(tmp_path / "out.extxyz")
    assert e3pot_main(["predict", model_file_64, str(tmp_path / "nowhere.xyz"), "-o", out, "--no-progress"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cuda_without_gpu_is_a_clear_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from e3pot.cli.predict import main as predict_main
    from tests.conftest import make_model
    import e3pot

    model = e3pot.save_model(make_model(), str(tmp_path / "m.pt"))
    write(str(tmp_path / "in.extxyz"), [molecule("H2O")])
    code = predict_main([model, str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "o.extxyz"), "--device", "cuda"])
    assert code == 2
    assert "CUDA is not available" in capsys.readouterr().err
