"""Derivatives by gradcheck, the cutoff envelope, periodic images and supercells. Forces and stress against
finite differences, batch = single, additivity and smoothness for every kind: tests/test_battery.py."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from e3pot.data.neighbors import neighbor_list
from e3pot.model.forces import evaluate
from e3pot.testing import random_model
from e3pot.testing.flawed import DetachedPair, HessianBlind
from tests.conftest import graph_of

KINDS = [("e3", {}), ("e3", {"l_max": 0}), ("cartesian", {}), ("egnn", {})]
KIND_IDS = ["e3", "invariant", "cartesian", "egnn"]


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


@pytest.mark.parametrize("kind, options", KINDS, ids=KIND_IDS)
def test_dimer_energy_vanishes_as_the_envelope_at_cutoff(kind, options):
    """Just inside r_max the pair energy is the envelope's order (p = 6: energy ~ delta^3, forces ~ delta^2),
    and it is a real interaction further in. (Continuity as a neighbour crosses r_max in any structure:
    the battery's cutoff check, tests/test_battery.py.)"""
    model = random_model(kind, **options)
    r_max = model.r_max

    def dimer(r):
        return Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]])

    far = evaluate(model, graph_of(dimer(r_max + 1e-3), model))
    for delta in (1e-2, 1e-3):
        near = evaluate(model, graph_of(dimer(r_max - delta), model))
        assert graph_of(dimer(r_max - delta), model).edge_index.shape[1] == 2
        assert abs(float((near.energy - far.energy).detach())) < 50 * delta ** 3
        assert float((near.forces - far.forces).abs().max()) < 50 * delta ** 2
    inside = evaluate(model, graph_of(dimer(r_max - 0.5), model))
    assert abs(float((inside.energy - far.energy).detach())) > 1e-4  # the pair does interact inside r_max


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
    assert p1.forces.abs().max() > 0.1 and p1.stress.abs().max() > 1e-3  # neither equal by being zero
    assert torch.allclose(p4.energy, 4 * p1.energy, atol=1e-9, rtol=0)
    assert torch.allclose(p4.forces, p1.forces.repeat(4, 1), atol=1e-10)
    assert torch.allclose(p4.stress, p1.stress, atol=1e-10)
