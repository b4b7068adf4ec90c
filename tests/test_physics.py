"""Forces and stress as exact derivatives, batching, locality, smoothness, periodic images."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph, neighbor_list
from e3pot.model.forces import evaluate
from e3pot.testing import random_model
from e3pot.testing.flawed import DetachedPair, HessianBlind
from tests.conftest import graph_of

KINDS = [("e3", {}), ("e3", {"l_max": 0}), ("cartesian", {}), ("egnn", {})]
KIND_IDS = ["e3", "invariant", "cartesian", "egnn"]


def energies_of(model, structures):
    """Energies of many structures in one batched call."""
    species = SpeciesMap(model.atomic_numbers)
    graph = collate([atoms_to_graph(a, species, model.r_max) for a in structures]).to(dtype=model.dtype)
    return evaluate(model, graph).energy.detach().numpy()


@pytest.mark.parametrize("which", ["ethanol", "periodic"])
def test_forces_match_finite_differences(model64, which, ethanol, periodic):
    atoms = {"ethanol": ethanol, "periodic": periodic}[which]
    forces = evaluate(model64, graph_of(atoms, model64)).forces.numpy()
    h = 1e-5
    displaced = []
    for i in range(len(atoms)):
        for d in range(3):
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, d] += sign * h
                displaced.append(moved)
    e = energies_of(model64, displaced).reshape(len(atoms), 3, 2)
    fd = -(e[..., 0] - e[..., 1]) / (2 * h)
    assert np.abs(forces).max() > 1e-3
    np.testing.assert_allclose(forces, fd, atol=1e-6, rtol=1e-6)


def test_stress_matches_finite_differences(model64, periodic):
    stress = evaluate(model64, graph_of(periodic, model64), compute_stress=True).stress[0].numpy()
    h = 1e-5
    strained = []
    for i in range(3):
        for j in range(3):
            eps = np.zeros((3, 3))
            eps[i, j] = eps[j, i] = h / 2 if i != j else h
            for sign in (1, -1):
                s = periodic.copy()
                s.set_cell(periodic.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
                strained.append(s)
    e = energies_of(model64, strained).reshape(3, 3, 2)
    fd = (e[..., 0] - e[..., 1]) / (2 * h) / periodic.get_volume()
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(stress, stress.T, atol=1e-12)
    np.testing.assert_allclose(stress, fd, atol=1e-7, rtol=1e-6)


def energy_functions(model, graph):
    """The total energy and a randomly weighted sum of the forces as functions of the positions, through
    the model's per-atom energies on the same graph with those positions (nothing detached), so that
    gradcheck sees every path from positions to output."""
    weights = torch.randn(graph.positions.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def energy(positions):
        return model(graph._replace(positions=positions)).sum()

    def weighted_forces(positions):
        (grad,) = torch.autograd.grad(energy(positions), positions, create_graph=True)
        return -(grad * weights).sum()

    return energy, weighted_forces


def gradchecks(model, atoms):
    """(autograd's first derivative agrees with finite differences, and its second derivative too)."""
    graph = graph_of(atoms, model)
    energy, weighted_forces = energy_functions(model, graph)
    positions = graph.positions.clone().requires_grad_(True)
    return tuple(torch.autograd.gradcheck(f, (positions,), eps=1e-6, atol=1e-6, fast_mode=True,
                                           raise_exception=False)
                 for f in (energy, weighted_forces))


@pytest.mark.parametrize("kind, options", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("which", ["ethanol", "periodic"])
def test_gradcheck(kind, options, which, ethanol, periodic):
    model = random_model(kind, **options)
    atoms = {"ethanol": ethanol, "periodic": periodic}[which]
    assert gradchecks(model, atoms) == (True, True)
    # the forces that every caller gets are the derivative gradcheck has just verified
    graph = graph_of(atoms, model)
    energy, _ = energy_functions(model, graph)
    positions = graph.positions.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(positions), positions)
    forces = evaluate(model, graph).forces
    assert forces.abs().max() > 1e-2
    assert torch.allclose(forces, -grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("flawed, expected", [(DetachedPair, (False, True)), (HessianBlind, (True, False))],
                         ids=["detached-energy-term", "detached-force-slope"])
def test_gradcheck_fails_on_wrong_derivatives(flawed, expected):
    """A term autograd does not see fails the first-derivative check; a term whose slope is right but
    whose own derivative is lost passes it and fails the second. (Water: a failed fast gradcheck is
    repeated in slow mode, one evaluation per coordinate.)"""
    water = molecule("H2O")
    water.positions += np.random.default_rng(0).normal(scale=0.05, size=water.positions.shape)
    assert gradchecks(flawed(random_model("e3")), water) == expected


def test_batch_equals_single(model, ethanol, periodic):
    structures = [ethanol, periodic, molecule("H2O"), periodic.repeat((1, 2, 1))]
    species = SpeciesMap(model.atomic_numbers)
    graphs = [atoms_to_graph(a, species, model.r_max) for a in structures]
    batch = evaluate(model, collate(graphs).to(dtype=model.dtype), compute_stress=True)
    start = 0
    for k, g in enumerate(graphs):
        single = evaluate(model, collate([g]).to(dtype=model.dtype), compute_stress=True)
        n = g.positions.shape[0]
        assert torch.allclose(batch.energy[k], single.energy[0], atol=1e-10, rtol=0)
        assert torch.allclose(batch.forces[start:start + n], single.forces, atol=1e-10)
        assert torch.allclose(batch.stress[k], single.stress[0], atol=1e-10, equal_nan=True)
        start += n


def test_distant_molecules_are_additive(model, ethanol):
    water = molecule("H2O")
    water.positions += [30.0, 0.0, 0.0]
    both = ethanol + water
    p = evaluate(model, graph_of(both, model))
    p1, p2 = evaluate(model, graph_of(ethanol, model)), evaluate(model, graph_of(water, model))
    assert torch.allclose(p.energy, p1.energy + p2.energy, atol=1e-9, rtol=0)
    assert torch.allclose(p.forces, torch.cat([p1.forces, p2.forces]), atol=1e-10)


def test_smooth_at_cutoff(model64):
    """Energy and forces are continuous as a neighbour crosses r_max (the pair term vanishes smoothly)."""
    r_max = model64.r_max

    def dimer(r):
        return Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])

    far = evaluate(model64, graph_of(dimer(r_max + 1e-3), model64))
    for delta in (1e-2, 1e-3):
        near = evaluate(model64, graph_of(dimer(r_max - delta), model64))
        assert graph_of(dimer(r_max - delta), model64).edge_index.shape[1] == 2
        # polynomial envelope with p = 6: energy ~ delta^3, forces ~ delta^2 near r_max
        assert abs(float(near.energy - far.energy)) < 50 * delta ** 3
        assert float((near.forces - far.forces).abs().max()) < 50 * delta ** 2
    inside = evaluate(model64, graph_of(dimer(r_max - 0.5), model64))
    assert abs(float(inside.energy - far.energy)) > 1e-4  # the pair does interact inside r_max


def test_neighbor_list_matches_ase_small_cell(periodic):
    r_max = 4.0  # larger than half of every cell length: several images per atom
    i, j, shifts, _ = neighbor_list(periodic.positions, periodic.cell.array, periodic.pbc, r_max)
    d = np.linalg.norm(periodic.positions[j] - periodic.positions[i] + shifts @ periodic.cell.array, axis=1)
    d_ase = ase_neighbor_list("d", periodic, r_max)
    assert len(d) == len(d_ase) > 10 * len(periodic)
    np.testing.assert_allclose(np.sort(d), np.sort(d_ase), atol=1e-10)


def test_supercell_is_consistent(model, periodic):
    """A 2x1x2 supercell has four times the energy and the same stress and (tiled) forces."""
    p1 = evaluate(model, graph_of(periodic, model), compute_stress=True)
    big = periodic.repeat((2, 1, 2))
    p4 = evaluate(model, graph_of(big, model), compute_stress=True)
    assert torch.allclose(p4.energy, 4 * p1.energy, atol=1e-9, rtol=0)
    assert torch.allclose(p4.forces, p1.forces.repeat(4, 1), atol=1e-10)
    assert torch.allclose(p4.stress, p1.stress, atol=1e-10)
