"""Large structures: chunked evaluation equals the direct one, the memory budget, the Verlet skin, and
float32 total energies of a 50,000-atom box."""
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from conftest import graph_of, make_model

from e3pot.calculator import E3PotCalculator
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.chunked import GIB, MemoryBudgetError, chunked_evaluate, footprint, plan
from e3pot.model.export import ExportedModel, export_model
from e3pot.model.forces import Conservative
from e3pot.model.runtime import evaluate
from e3pot.predict import predict


def water_box(n_per_side: int, seed: int = 0, density: float = 1.0) -> Atoms:
    """n^3 randomly oriented water molecules on a grid at ``density`` g/cm^3, periodic."""
    rng = np.random.default_rng(seed)
    n = n_per_side ** 3
    length = (n * 18.015 / 6.02214076e23 / density) ** (1 / 3) * 1e8
    h2o = molecule("H2O")
    h2o.positions -= h2o.get_center_of_mass()
    q, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))  # random orthogonal matrices
    grid = (np.indices((n_per_side,) * 3).reshape(3, -1).T + 0.5) * (length / n_per_side)
    positions = np.einsum("nij,aj->nai", q, h2o.positions) + grid[:, None, :]
    return Atoms("OH2" * n, positions=positions.reshape(-1, 3), cell=[length] * 3, pbc=True)


def assert_same(direct, chunked, rtol=1e-10):
    for name, a, b in zip(("energy", "forces", "stress", "atomic energies"), direct, chunked):
        if a is None:
            assert b is None, name
            continue
        a, b = a.detach(), b.detach()
        finite = torch.isfinite(a)  # stress is NaN for a molecule in a batch
        assert torch.equal(finite, torch.isfinite(b)), name
        a, b = a[finite], b[finite]
        scale = float(a.abs().max())
        err = float((a - b).abs().max())
        assert err <= rtol * scale, f"{name}: max difference {err:.3e} against scale {scale:.3e}"


@pytest.fixture(scope="module")
def model64():
    return make_model(r_max=3.0)


@pytest.fixture(scope="module")
def box():
    atoms = water_box(3)
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("chunk_edges", [1, 97, 600])
def test_chunked_equals_direct_periodic_with_stress(model64, box, chunk_edges):
    graph = graph_of(box, model64)
    direct = Conservative(model64)(graph, True)
    chunked = chunked_evaluate(model64, graph, True, chunk_edges)
    assert_same(direct, chunked)


def test_chunked_equals_direct_small_cell_molecule_and_batch(model64, periodic, ethanol):
    # a cell smaller than twice the cutoff (several images of each atom), a molecule, and both in one batch
    species = SpeciesMap(model64.atomic_numbers)
    for atoms_list in ([periodic], [ethanol], [periodic, ethanol, periodic]):
        graph = collate([atoms_to_graph(a, species, model64.r_max) for a in atoms_list])
        stress = any(a.pbc.any() for a in atoms_list)
        assert_same(Conservative(model64)(graph, stress), chunked_evaluate(model64, graph, stress, 13))


def test_chunked_equals_direct_for_an_exported_model(model64, box, tmp_path):
    path = export_model(model64, str(tmp_path / "model.ts"))
    graph = graph_of(box, model64)
    assert_same(Conservative(model64)(graph, True), chunked_evaluate(ExportedModel(path), graph, True, 200))


def test_budget_switches_to_chunks_by_itself(model64, box):
    graph = graph_of(box, model64)
    fp = footprint(model64, 8)
    n_atoms, n_edges = len(box), graph.edge_index.shape[1]
    assert plan(model64, graph, True, 100.0) is None  # plenty: the direct path
    budget = (fp.kept(n_atoms, n_edges) + 0.5 * (fp.direct(n_atoms, n_edges) - fp.kept(n_atoms, n_edges))) / GIB
    chunk_edges = plan(model64, graph, True, budget)
    assert chunk_edges is not None and chunk_edges < n_edges
    assert_same(Conservative(model64)(graph, True), evaluate(model64, graph, True, memory_budget=budget))
    calc = E3PotCalculator(model64, memory_budget=budget)
    direct = E3PotCalculator(model64)
    np.testing.assert_allclose(calc.get_forces(box), direct.get_forces(box.copy()), rtol=0, atol=1e-10)
    np.testing.assert_allclose(calc.get_stress(box), direct.get_stress(box.copy()), rtol=0, atol=1e-12)
    (pred,) = predict(model64, [box], memory_budget=budget)
    np.testing.assert_allclose(pred["energy"], direct.get_potential_energy(box.copy()), rtol=1e-12)


def test_budget_too_small_is_a_clear_error(model64, box, tmp_path):
    graph = graph_of(box, model64)
    with pytest.raises(MemoryBudgetError, match=r"needs about .* GiB even when evaluated in chunks.*memory budget"):
        evaluate(model64, graph, True, memory_budget=1e-6)
    calc = E3PotCalculator(model64, memory_budget=1e-6)
    with pytest.raises(MemoryBudgetError, match=r"memory_budget=.*--memory-budget.*E3POT_MEMORY_BUDGET"):
        calc.get_potential_energy(box)
    with pytest.raises(ValueError, match="memory_budget must be a positive"):
        E3PotCalculator(model64, memory_budget=0)


def test_predict_cli_memory_budget(model64, box, tmp_path, capsys):
    from ase.io import read, write

    from e3pot.cli.predict import main as predict_main
    from e3pot.model.io import save_model

    model_path = str(tmp_path / "model.pt")
    save_model(model64, model_path)
    write(tmp_path / "in.extxyz", box)
    assert predict_main([model_path, str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "out.extxyz"),
                         "--memory-budget", "1e-6", "--no-progress"]) == 2
    assert "even when evaluated in chunks" in capsys.readouterr().err
    assert not (tmp_path / "out.extxyz").exists()
    assert predict_main([model_path, str(tmp_path / "in.extxyz"), "-o", str(tmp_path / "out.extxyz"),
                         "--memory-budget", "0.002", "--no-progress"]) == 0
    out = read(tmp_path / "out.extxyz")
    expected = E3PotCalculator(model64).get_forces(box)
    np.testing.assert_allclose(out.arrays["e3pot_forces"], expected, atol=1e-6)  # extxyz keeps 8 digits


def test_verlet_skin_gives_the_forces_of_a_fresh_list(model64):
    atoms = water_box(2, seed=1)
    MaxwellBoltzmannDistribution(atoms, temperature_K=2000, rng=np.random.default_rng(0))
    skinned = E3PotCalculator(model64, skin=0.6)
    fresh = E3PotCalculator(model64)
    atoms.calc = skinned
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    steps = 40
    for _ in range(steps):
        dyn.run(1)
        f_skin, s_skin = atoms.get_forces(), atoms.get_stress()
        check = atoms.copy()
        check.calc = fresh
        np.testing.assert_allclose(f_skin, check.get_forces(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(s_skin, check.get_stress(), rtol=0, atol=1e-12)
    assert 1 < skinned.neighbor_list_builds < steps // 2  # rebuilt when atoms moved, not at every step
    # a change of cell or of the atoms rebuilds at once
    before = skinned.neighbor_list_builds
    atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
    atoms.get_forces()
    assert skinned.neighbor_list_builds == before + 1


def test_float32_total_energy_of_a_50k_atom_box():
    # -8.0e6 eV of per-species shifts: float32 steps by 0.5 eV there, so only float64 bookkeeping keeps
    # the total to 1 meV. Positions reach 81 Å, where float32 steps by 8e-6 Å: edge vectors are formed
    # in float64 before the cast (with float32 geometry the difference was 1.5 meV; now 0.64 meV)
    atoms = water_box(26)  # 17,576 molecules, 52,728 atoms
    assert len(atoms) > 50_000
    torch.manual_seed(0)
    model = make_model(r_max=2.5, l_max=1, num_features=4, num_layers=2, num_basis=4, radial_hidden=8)
    with torch.no_grad():
        model.energy_shift[:] = torch.tensor([-13.6, -1030.0, -432.1, -100.0], dtype=torch.float64)
    e64 = E3PotCalculator(model, dtype="float64").get_potential_energy(atoms)
    e32 = E3PotCalculator(model, dtype="float32").get_potential_energy(atoms.copy())
    network = e64 - float(sum(model.energy_shift[SpeciesMap(model.atomic_numbers)(atoms.numbers)]))
    assert abs(network) > 100.0  # the network's part is not negligible
    assert abs(e32 - e64) < 1e-3, f"float32 {e32:.6f} eV, float64 {e64:.6f} eV"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chunked_equals_direct_on_cuda(model64, box):
    import copy

    model = copy.deepcopy(model64).cuda()
    graph = graph_of(box, model64).to(device="cuda")
    assert_same(Conservative(model)(graph, True), chunked_evaluate(model, graph, True, 97))
    calc = E3PotCalculator(model64, device="cuda", memory_budget=1e-3 + footprint(model64, 8).kept(len(box), graph.edge_index.shape[1]) / GIB)
    np.testing.assert_allclose(calc.get_forces(box), E3PotCalculator(model64).get_forces(box.copy()), rtol=0, atol=1e-10)
