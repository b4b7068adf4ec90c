"""``e3pot.metrics`` against a hand computation, and the label and unit options of ``e3pot predict``:
labels in kcal/mol, positions in Bohr and rMD17-style npz inputs score as training reads them, and
exactly as the benchmarks score them."""
import importlib
import json
import os
import sys

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.units import Bohr, kcal, mol

from e3pot.cli.predict import main
from e3pot.data.io import LabelSpec, count_frames, iter_labelled
from e3pot.metrics import Errors, error_stats, score
from tests.trained_model import ROOT, model_file_64, single_torch_thread  # noqa: F401  (fixtures)

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import rmd17  # noqa: E402

KCAL = kcal / mol  # eV
RMD17 = os.path.join(ROOT, "..", "shared", "datasets", "rmd17")
RUNTIME = importlib.import_module("e3pot.model.runtime")


# -- the metrics module, on numbers worked out by hand ----------------------------------------------

def test_errors_against_a_hand_computation():
    errors = Errors("config_type")
    # (prediction, reference energy, reference forces, atoms, group)
    errors.add({"energy": 1.0, "forces": np.zeros((2, 3))}, 0.5, np.full((2, 3), 0.1), 2, "a", "s0")
    errors.add({"energy": -2.0, "forces": np.ones((1, 3))}, -1.0, None, 1, "b", "s1")  # energy only
    errors.add({"energy": 0.0, "forces": np.zeros((1, 3))}, None, np.array([[0.0, 0.3, -0.3]]), 1, None, "s2")
    errors.add({"energy": 0.0, "forces": np.zeros((1, 3))}, float("nan"), np.zeros((1, 3)), 1, "a", "s3")
    errors.add({"energy": 0.0, "forces": np.zeros((1, 3))}, None, None, 1, "a", "s4")  # no labels at all
    m = errors.metrics()

    # energy errors (meV): +500, -1000; per atom: +250, -1000
    assert m["overall"]["energy"] == pytest.approx({"n": 2, "mae": 750.0, "rmse": np.sqrt((500 ** 2 + 1000 ** 2) / 2),
                                                    "mean": -250.0})
    assert m["overall"]["energy_per_atom"] == pytest.approx(
        {"n": 2, "mae": 625.0, "rmse": np.sqrt((250 ** 2 + 1000 ** 2) / 2), "mean": -375.0})
    # force components (meV/Å): six of -100 (s0), then 0, -300, +300 (s2)
    f = np.array([-100.0] * 6 + [0.0, -300.0, 300.0])
    assert m["overall"]["forces"] == pytest.approx({"n": 9, "mae": np.abs(f).mean(), "rmse": np.sqrt((f ** 2).mean()),
                                                    "mean": f.mean()})
    assert m["n_structures"] == 3 and m["units"] == {"energy": "meV", "energy_per_atom": "meV/atom", "forces": "meV/Å"}
    assert m["n_left_out_nonfinite"] == 1 and m["first_left_out_nonfinite"] == "s3 (energy)"
    assert list(m["by_config_type"]) == ["a", "b", "(none)"]
    a = m["by_config_type"]["a"]
    assert a["n_structures"] == 1 and a["energy"]["mae"] == pytest.approx(500.0)
    assert a["forces"] == pytest.approx({"n": 6, "mae": 100.0, "rmse": 100.0, "mean": -100.0})
    assert m["by_config_type"]["b"]["forces"] is None
    assert m["by_config_type"]["(none)"]["energy"] is None
    assert "left out of the error metrics: 1 structure with a NaN" in errors.left_out_line()

    s = errors.summary()
    assert s["energy_mae_meV"] == m["overall"]["energy"]["mae"]
    assert s["forces_rmse_meV_A"] == m["overall"]["forces"]["rmse"]
    assert s["energy_std_meV"] == pytest.approx(np.std([500.0, -1000.0]))
    assert s["n_structures"] == 3 and s["n_left_out_nonfinite"] == 1

    table = Errors.table(m)
    assert "| energy        |    750.000 |" in table and "|   -250.000 |" in table
    assert "| (all) " in Errors.group_table(m) and "| (none) " in Errors.group_table(m)


def test_no_references_and_no_groups():
    errors = Errors()
    errors.add({"energy": 1.0, "forces": np.zeros((1, 3))}, None, None, 1)
    m = errors.metrics()
    assert m["overall"] == {"energy": None, "energy_per_atom": None, "forces": None}
    assert m["by_config_type"] == {} and Errors.table(m) == ""
    assert np.isnan(errors.summary()["forces_mae_meV_A"])
    assert error_stats(np.zeros(0), np.zeros(0)) is None


# -- units and keys: the same data in kcal/mol and Bohr scores as in eV and Å -----------------------

def labelled_frames(n=5):
    rng = np.random.default_rng(11)
    frames = []
    for k in range(n):
        atoms = molecule(("H2O", "CH4", "CH3OH")[k % 3])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["config_type"] = "even" if k % 2 == 0 else "odd"
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 * len(atoms) + 0.1 * k,
                                           forces=rng.normal(scale=0.3, size=(len(atoms), 3)))
        frames.append(atoms)
    return frames


def in_other_units(frames, energy_unit, length_unit, energy_key="E_ref", forces_key="F_ref"):
    """The frames with positions divided by ``length_unit`` (Å) and labels in ``energy_unit`` (eV)
    under other keys, without a calculator."""
    out = []
    for atoms in frames:
        other = atoms.copy()
        other.positions = atoms.positions / length_unit
        other.info[energy_key] = atoms.get_potential_energy() / energy_unit
        other.arrays[forces_key] = atoms.get_forces() / (energy_unit / length_unit)
        out.append(other)
    return out


def metrics_of(model, path, tmp_path, name, *extra):
    out, metrics = str(tmp_path / f"{name}_pred.extxyz"), str(tmp_path / f"{name}_metrics.json")
    assert main([model, path, "-o", out, "--metrics-json", metrics, "--no-progress", *extra]) == 0
    with open(metrics) as fh:
        return json.load(fh), out


def numbers(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            out[prefix + key] = value
    return out


def test_kcal_mol_labels_give_the_errors_of_ev_labels(model_file_64, tmp_path, capsys):
    frames = labelled_frames()
    ev, kc = str(tmp_path / "ev.extxyz"), str(tmp_path / "kcal.extxyz")
    write(ev, frames)
    write(kc, in_other_units(frames, KCAL, 1.0))
    want, _ = metrics_of(model_file_64, ev, tmp_path, "ev")
    got, out = metrics_of(model_file_64, kc, tmp_path, "kcal", "--energy-key", "E_ref", "--forces-key", "F_ref",
                          "--energy-unit", "kcal/mol")
    # extended XYZ keeps 8 decimals of per-atom arrays: forces agree to 1e-5 meV/Å
    assert numbers(got) == pytest.approx(numbers(want), rel=1e-9, abs=1e-5)
    assert got["overall"]["energy"]["mae"] > 0 and list(got["by_config_type"]) == ["even", "odd"]
    # the output's reference labels are in eV and eV/Å, under the standard names only
    for atoms, orig in zip(read(out, ":"), frames):
        assert atoms.get_potential_energy() == pytest.approx(orig.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), orig.get_forces(), rtol=0, atol=1e-7)
        assert "E_ref" not in atoms.info and "F_ref" not in atoms.arrays
        assert "e3pot_energy" in atoms.info and atoms.info["config_type"] == orig.info["config_type"]

    # without the unit the same file scores in the wrong unit: the error the options exist for
    wrong, _ = metrics_of(model_file_64, kc, tmp_path, "wrong", "--energy-key", "E_ref", "--forces-key", "F_ref")
    assert abs(wrong["overall"]["energy"]["mae"] - want["overall"]["energy"]["mae"]) > 1000.0
    capsys.readouterr()


def test_bohr_positions_give_the_predictions_of_angstrom(model_file_64, tmp_path, capsys):
    frames = labelled_frames(3)
    ang, bohr = str(tmp_path / "ang.extxyz"), str(tmp_path / "bohr.extxyz")
    write(ang, frames)
    write(bohr, in_other_units(frames, 1.0, Bohr))
    want, out_ang = metrics_of(model_file_64, ang, tmp_path, "ang")
    got, out_bohr = metrics_of(model_file_64, bohr, tmp_path, "bohr", "--energy-key", "E_ref", "--forces-key",
                               "F_ref", "--length-unit", "Bohr")
    assert numbers(got) == pytest.approx(numbers(want), rel=1e-7, abs=1e-7)
    for a, b in zip(read(out_ang, ":"), read(out_bohr, ":")):
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-7)  # written in Å
        assert b.info["e3pot_energy"] == pytest.approx(a.info["e3pot_energy"], abs=1e-7)
    capsys.readouterr()


def test_an_unknown_unit_is_refused_before_the_model_is_loaded(model_file_64, tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "in.extxyz")
    write(path, labelled_frames(1))
    monkeypatch.setattr(RUNTIME, "load_any", lambda *a, **k: pytest.fail("the model was loaded"))
    for option, unit in (("--energy-unit", "kcal"), ("--length-unit", "pm"), ("--stress-unit", "Pa")):
        assert main([model_file_64, path, "-o", str(tmp_path / "o.extxyz"), option, unit, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"e3pot predict: error: {option}: unknown") and f"{unit!r}" in err, err
    assert os.listdir(tmp_path) == ["in.extxyz"]


# -- rMD17-style npz: scored by e3pot predict as the benchmarks score it ------------------------------

def write_npz(path, n=12, nan_at=None):
    """rMD17's layout (as tests/test_data.py writes it): ethanol, energies in kcal/mol (about -97000),
    forces in kcal/mol/Å."""
    rng = np.random.default_rng(0)
    ethanol = molecule("CH3CH2OH")
    energies = rng.normal(size=n) - 97000.0
    if nan_at is not None:
        energies[nan_at] = np.nan
    np.savez(path, coords=ethanol.positions[None] + rng.normal(scale=0.05, size=(n, 9, 3)),
             nuclear_charges=ethanol.numbers.astype(np.uint8), energies=energies,
             forces=rng.normal(size=(n, 9, 3)))
    return dict(np.load(path))


def test_npz_is_scored_as_the_benchmarks_score_it(model_file_64, tmp_path, capsys):
    path = str(tmp_path / "rmd17_fake_test_01.npz")
    raw = write_npz(path, n=12)
    assert count_frames([path]) == 12
    got, out = metrics_of(model_file_64, path, tmp_path, "npz", "--energy-unit", "kcal/mol", "--batch-size", "50",
                          "--csv", str(tmp_path / "npz.csv"))
    bench = rmd17.evaluate_test(model_file_64, path)  # the benchmarks' code path (batches of 50)
    overall = got["overall"]
    assert bench["n_test"] == got["n_structures"] == 12
    for key, value in (("energy_mae_meV", overall["energy"]["mae"]), ("energy_rmse_meV", overall["energy"]["rmse"]),
                       ("energy_mean_meV", overall["energy"]["mean"]), ("forces_mae_meV_A", overall["forces"]["mae"]),
                       ("forces_rmse_meV_A", overall["forces"]["rmse"])):
        assert abs(bench[key] - value) <= 1e-9, key
    frames = read(out, ":")  # npz frames become structures with their labels in eV
    assert len(frames) == 12 and not frames[0].pbc.any()
    np.testing.assert_allclose([a.get_potential_energy() for a in frames], raw["energies"] * KCAL, rtol=1e-12)
    np.testing.assert_allclose(frames[5].get_forces(), raw["forces"][5] * KCAL, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(frames[5].positions, raw["coords"][5], atol=1e-8)
    assert all("e3pot_energy" in a.info for a in frames)

    # the library on the same file, another batch size: the same numbers to rounding
    errors = score(model_file_64, iter_labelled(path, LabelSpec(energy_unit="kcal/mol")), batch_size=5)
    assert errors.metrics()["overall"]["forces"]["mae"] == pytest.approx(overall["forces"]["mae"], rel=1e-9)
    capsys.readouterr()


def test_npz_with_a_nan_label_leaves_it_out(model_file_64, tmp_path, capsys):
    path = str(tmp_path / "nan.npz")
    write_npz(path, n=6, nan_at=2)
    got, out = metrics_of(model_file_64, path, tmp_path, "nan", "--energy-unit", "kcal/mol")
    assert got["n_structures"] == 5 and got["n_left_out_nonfinite"] == 1
    assert got["first_left_out_nonfinite"] == f"{path}, frame 2 (energy)"
    assert len(read(out, ":")) == 6
    capsys.readouterr()


@pytest.mark.skipif(not os.path.isdir(RMD17), reason="the rMD17 data (../shared/datasets/rmd17) is not here")
def test_real_rmd17_file(model_file_64, tmp_path, capsys):
    path = os.path.join(RMD17, "rmd17_ethanol_test_01.npz")
    if not os.path.exists(path):
        pytest.skip(f"no {path}")
    got, out = metrics_of(model_file_64, path, tmp_path, "ethanol", "--energy-unit", "kcal/mol", "--batch-size", "50")
    bench = rmd17.evaluate_test(model_file_64, path)
    assert bench["n_test"] == got["n_structures"] == 1000
    assert abs(bench["energy_mae_meV"] - got["overall"]["energy"]["mae"]) <= 1e-9
    assert abs(bench["forces_mae_meV_A"] - got["overall"]["forces"]["mae"]) <= 1e-9
    energies = np.array([a.get_potential_energy() for a in read(out, ":")])
    np.testing.assert_allclose(energies, np.load(path)["energies"] * KCAL, rtol=1e-12)
    assert -4.3e3 < energies.mean() < -4.1e3  # ethanol's DFT energy, about -97,000 kcal/mol, in eV
    capsys.readouterr()
