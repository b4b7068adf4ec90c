"""The compiled path (one Inductor-compiled graph for energy, forces and stress) equals the eager one."""
import numpy as np
import pytest
import torch
from ase.build import molecule
from conftest import make_model
from test_large_systems import assert_same, water_box

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.compiled import CompiledModel
from e3pot.model.forces import evaluate
from e3pot.predict import predict
from e3pot.nn.scatter import scatter_sum


def graphs(model, structures):
    species = SpeciesMap(model.atomic_numbers)
    return collate([atoms_to_graph(a, species, model.r_max) for a in structures])


def molecules():
    rng = np.random.default_rng(0)
    out = []
    for name in ("CH3CH2OH", "H2O", "CH4", "CH3CH2OH"):
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        out.append(atoms)
    return out


@pytest.mark.slow
def test_compiled_equals_eager_float64_periodic_batches_and_new_sizes():
    model = make_model(r_max=3.0, l_max=1)
    compiled = CompiledModel(model)
    box = water_box(2, seed=0)
    box.rattle(0.05, seed=1)
    # one periodic structure with stress, then one of a new size (81 atoms, other edge count)
    for atoms in (box, water_box(3, seed=4)):
        graph = graphs(model, [atoms])
        assert_same(tuple(evaluate(model, graph, compute_stress=True)), compiled(graph, True), rtol=1e-10)
    # batches of molecules without stress, of two sizes
    mols = molecules()
    for structures in (mols, mols[1:3]):
        graph = graphs(model, structures)
        assert_same(tuple(evaluate(model, graph)), compiled(graph, False), rtol=1e-10)
        assert_same(compiled(graph, False), tuple(e3pot.evaluate(compiled, graph)), rtol=1e-14)  # the dispatcher
    # one compilation per kind of call ({one structure, a batch} x {with stress, without}); new sizes reuse it
    assert compiled.compilations == 2


@pytest.mark.slow
def test_compiled_float32_calculator_md_and_predict(tmp_path):
    from ase.md.verlet import VelocityVerlet
    from ase import units

    model = make_model(r_max=3.0, l_max=1, dtype=torch.float32)
    atoms = molecules()[0]
    eager = E3PotCalculator(model)
    calc = E3PotCalculator(model, compile=True, threads=torch.get_num_threads())
    atoms.calc = calc
    traj = []
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    atoms.set_momenta(np.random.default_rng(0).normal(scale=0.5, size=(len(atoms), 3)))
    for _ in range(3):  # the edge count changes as the molecule moves; nothing compiles again
        dyn.run(2)
        traj.append(atoms.copy())
    for frame in traj:
        f_eager = eager.get_forces(frame)
        f_comp = calc.get_forces(frame)
        assert np.abs(f_comp - f_eager).max() <= 1e-5 * np.abs(f_eager).max()
        assert abs(calc.get_potential_energy(frame) - eager.get_potential_energy(frame)) <= 1e-5 * abs(
            eager.get_potential_energy(frame))
    assert calc.model.compilations == 1
    ref = predict(model, traj, batch_size=1)
    out = predict(calc.model, traj, batch_size=1)  # the calculator's compiled model, already compiled
    assert calc.model.compilations == 1
    for a, b in zip(ref, out):
        assert abs(a["energy"] - b["energy"]) <= 1e-5 * abs(a["energy"])
        assert np.abs(a["forces"] - b["forces"]).max() <= 1e-5 * np.abs(a["forces"]).max()


def test_compile_rejects_an_export(tmp_path):
    from e3pot.model.export import export_model

    path = export_model(make_model(r_max=3.0, l_max=1), str(tmp_path / "m.ts"))
    with pytest.raises(ValueError, match="TorchScript export cannot be compiled"):
        E3PotCalculator(path, compile=True)


def test_scatter_sum_single_row_is_the_sum():
    src = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(scatter_sum(src, torch.zeros(7, dtype=torch.long), 1), src.sum(0, keepdim=True))
