"""Tabulated radial networks (radial="table"): the same potential within a bounded error, conservative,
symmetric, and refused where it cannot apply."""
import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.cli.main import main as e3pot_main
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model import forces as F
from e3pot.model.tables import radial_of, use_radial
from e3pot.testing import ModelTests, random_model
from tests.trained_model import single_torch_thread, trained_model  # noqa: F401


def _graph(model, *structures):
    species = SpeciesMap(model.atomic_numbers)
    return collate([atoms_to_graph(a, species, model.r_max, source=f"s{k}") for k, a in enumerate(structures)])


def _structures():
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=0)
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=1)
    return ethanol, si


def _errors(model, table, graph):
    a, b = F.evaluate(model, graph, compute_stress=True), F.evaluate(table, graph, compute_stress=True)
    energy = float((a.energy - b.energy).detach().abs().max() / a.energy.detach().abs().max())
    forces = float((a.forces - b.forces).detach().abs().max() / a.forces.detach().abs().max())
    stress = float((a.stress[1] - b.stress[1]).detach().abs().max() / a.stress[1].detach().abs().max())
    return energy, forces, stress


def test_table_equals_the_networks_within_a_bound_that_falls_with_the_spacing():
    model = random_model("e3")
    graph = _graph(model, *_structures())
    energy, forces, stress = _errors(model, use_radial(model, "table"), graph)
    assert energy < 1e-12 and forces < 1e-8 and stress < 1e-8
    coarse = _errors(model, use_radial(model, "table", points=64), graph)
    fine = _errors(model, use_radial(model, "table", points=256), graph)
    assert coarse[0] > 1e-10 and coarse[1] > 1e-7  # the bound means something at 64 intervals
    # cubic Hermite: values err as h^4 (256x from 64 to 256 intervals), derivatives as h^3 (64x)
    assert coarse[0] / fine[0] > 64 and coarse[1] / fine[1] > 16


def test_table_is_a_copy_and_keeps_the_model_file_the_same():
    model = random_model("e3")
    table = use_radial(model, "table")
    assert radial_of(model) == "exact" and radial_of(table) == "table"
    assert use_radial(model, "exact") is model and use_radial(table, "table") is table
    assert "layers.0.radial.intervals" in table.state_dict() and "layers.0.radial.intervals" not in model.state_dict()
    assert "layers.0.radial.layer0.weight" in model.state_dict()  # the original is untouched


def test_chunked_table_equals_direct_table():
    table = use_radial(random_model("e3"), "table")
    atoms = bulk("Si", "diamond", a=5.43) * (3, 3, 3)
    atoms.rattle(0.05, seed=2)
    graph = _graph(table, atoms)
    direct = F.evaluate(table, graph, compute_stress=True)
    chunked = e3pot.evaluate(table, graph, compute_stress=True, memory_budget=0.002)
    np.testing.assert_allclose(chunked.forces.numpy(), direct.forces.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(chunked.stress.numpy(), direct.stress.detach().numpy(), atol=1e-12)


def test_calculator_with_tables_matches_exact():
    model = random_model("e3", dtype=torch.float32)
    for atoms in _structures():
        atoms.calc = E3PotCalculator(model)
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = E3PotCalculator(model, radial="table")
        assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), f, atol=2e-4 * np.abs(f).max())


def test_refusals():
    for kind in ("cartesian", "egnn"):
        with pytest.raises(ValueError, match="radial='table' needs an eager e3 model"):
            use_radial(random_model(kind), "table")
    with pytest.raises(ValueError, match="load its model file again"):
        use_radial(use_radial(random_model("e3"), "table"), "exact")
    with pytest.raises(ValueError, match="not compiled"):
        E3PotCalculator(random_model("e3"), radial="table", compile=True)
    with pytest.raises(ValueError, match="unknown radial"):
        E3PotCalculator(random_model("e3"), radial="spline")


class TestTabulated(ModelTests):
    """The physics battery on a tabulated e3 model."""

    @pytest.fixture(scope="class")
    def model(self):
        return use_radial(random_model("e3"), "table")


@pytest.mark.slow
def test_trained_model_with_tables_passes_the_audit(trained_model, capsys):  # noqa: F811
    rc = e3pot_main(["audit", trained_model, "--radial", "table", "--nve-steps", "100", "--threads", "1", "--json",
                     "--quiet"])
    report = json.loads(capsys.readouterr().out)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert rc == 0 and not failed, failed
    names = {c["name"] for c in report["checks"]}
    assert {"NVE: drift", "cutoff: force jump", "finite differences: forces"} <= names
