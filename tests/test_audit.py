"""``e3pot audit``: passes on sound models, fails by name on deliberately broken ones, bad input exits 2."""
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import write

import e3pot
from e3pot.audit import audit, tolerances
from e3pot.audit.structures import builtin
from e3pot.cli.main import main as e3pot_main
from e3pot.model.export import export_model
from e3pot.testing.flawed import AbsoluteX, Chiral, DetachedPair, NeighbourCount
from tests.conftest import make_model
from tests.trained_model import model_file_64, single_torch_thread, trained_model  # noqa: F401  (fixtures)

GROUPS = ("rotation", "rotoreflection", "translation", "permutation", "finite differences", "cutoff", "NVE")


def groups(checks):
    return {c.name.split(":")[0] for c in checks}


# -- sound models ------------------------------------------------------------------------------------

def test_trained_model_passes_json(trained_model, capsys):
    rc = e3pot_main(["audit", trained_model, "--nve-steps", "60", "--threads", "1", "--json", "--quiet"])
    out = capsys.readouterr().out
    report = json.loads(out)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert rc == 0 and report["passed"] and not failed, failed
    assert {c["name"].split(":")[0] for c in report["checks"]} == set(GROUPS)
    names = {c["name"] for c in report["checks"]}
    assert {"rotation: stress", "finite differences: stress", "cutoff: force jump", "NVE: drift"} <= names
    assert {c["dtype"] for c in report["checks"] if c["name"] == "rotoreflection: forces"} == {"float32", "float64"}
    for c in report["checks"]:
        assert set(c) >= {"name", "structure", "dtype", "error", "tolerance", "passed"}
        assert 0 <= c["error"] <= c["tolerance"]
    # a zero force field would pass everything: the measured errors are those of a real one
    assert max(c["error"] for c in report["checks"] if c["name"] == "NVE: fluctuation") > 0


def test_export_passes_in_its_own_dtype(trained_model, tmp_path, capsys):
    path = export_model(e3pot.load_model(trained_model, dtype="float32"), str(tmp_path / "model.ts"))
    rc = e3pot_main(["audit", path, "--nve-steps", "20", "--max-structures", "2", "--quiet"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0, out
    assert "| rotation: forces" in out and "FAIL" not in out
    assert "note: float64 not checked" in out and "| float64 |" not in out


# -- broken models (e3pot.testing.flawed), each failing the check that names its flaw ----------------

@pytest.mark.parametrize("flawed, fails", [
    (AbsoluteX, {"rotation", "rotoreflection", "translation"}),
    (Chiral, {"rotoreflection"}),
    (DetachedPair, {"finite differences"}),
    (NeighbourCount, {"cutoff"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_broken_model_fails_its_check(flawed, fails):
    report = audit(flawed(make_model()), max_structures=2, nve_steps=0, seed=1)
    print(report.table())
    assert not report.passed
    assert groups(report.failed) == fails
    assert groups(report.checks) == set(GROUPS) - {"NVE"}  # every check ran, and the others passed


def test_sound_model_passes_the_same_audit():
    """The control of the test above: the same structures and draws, without the flaw."""
    report = audit(make_model(), max_structures=2, nve_steps=0, seed=1)
    assert report.passed, report.table()


def test_non_conservative_forces_fail_nve():
    methanol = molecule("CH3OH")
    methanol.positions += np.random.default_rng(0).normal(scale=0.05, size=methanol.positions.shape)
    for model, conserved in ((make_model(), True), (DetachedPair(make_model()), False)):
        report = audit(model, [("methanol", methanol)], dtypes=(), nve_steps=40)
        nve = [c for c in report.checks if c.name.startswith("NVE")]
        assert [c.name for c in nve] == ["NVE: drift", "NVE: fluctuation"]
        assert all(c.passed == conserved for c in nve), report.table()


# -- the command line ------------------------------------------------------------------------------

def test_unknown_element_exits_2_naming_the_frame(model_file_64, tmp_path, capsys):
    path = str(tmp_path / "in.extxyz")
    write(path, [Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]]), Atoms("FeH", positions=[[0, 0, 0], [1.6, 0, 0]])])
    assert e3pot_main(["audit", model_file_64, path, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}, frame 1" in err and "Fe" in err
    assert e3pot_main(["audit", str(tmp_path / "missing.pt"), "--quiet"]) == 2


def test_failed_check_exits_1(model_file_64, monkeypatch, capsys):
    monkeypatch.setitem(tolerances.SYMMETRY["energy"], "float64", -1.0)
    rc = e3pot_main(["audit", model_file_64, "--dtypes", "float64", "--max-structures", "1", "--nve-steps", "0",
                     "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1
    failing = [line for line in out.splitlines() if "| FAIL" in line]
    assert failing and all("energy" in line for line in failing)


def test_unmeasured_cutoff_is_noted():
    far = Atoms("CO", positions=[[0, 0, 0], [4.5, 0, 0]])  # beyond r_max = 3.5 Å: nothing crosses it
    report = audit(make_model(), [far], dtypes=("float64",), nve_steps=0)
    assert not any(c.name.startswith("cutoff") for c in report.checks)
    assert any(n.startswith("cutoff not checked") for n in report.notes), report.table()


def test_builtin_structures():
    names = [n for n, _ in builtin([1, 6, 8], 4, seed=0)]
    assert len(names) == 3 and "random cell" in names[-1]
    (name, cell), = builtin([29], 4, seed=0)  # no g2 molecule of copper alone: only the cell
    assert cell.pbc.all() and set(cell.numbers) == {29} and 4 <= len(cell) <= 8
    d = cell.get_all_distances(mic=True)[np.triu_indices(len(cell), 1)]
    assert d.min() > 2.0  # no overlapping atoms (covalent radius of Cu: 1.32 Å)
