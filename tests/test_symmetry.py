"""E(3) and permutation symmetry of energies, forces and stress (float64, several random draws)."""
import numpy as np
import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from e3pot.model.forces import evaluate
from e3pot.model.potential import default_dtype
from e3pot.nn.interaction import Interaction
from tests.conftest import graph_of


def orthogonal(seed, reflect):
    torch.manual_seed(seed)
    R = o3.rand_matrix(dtype=torch.float64).numpy()
    return -R if reflect else R


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "rotoreflection"])
def test_rotation_reflection_molecule(model, ethanol, seed, reflect):
    R = orthogonal(seed, reflect)
    p0 = evaluate(model, graph_of(ethanol, model))
    rotated = ethanol.copy()
    rotated.positions = ethanol.positions @ R.T
    p1 = evaluate(model, graph_of(rotated, model))
    assert torch.allclose(p0.energy, p1.energy, atol=1e-10, rtol=0)
    assert np.allclose(p0.forces.numpy() @ R.T, p1.forces.numpy(), atol=1e-10)
    assert p0.forces.abs().max() > 1e-3  # a zero force field would pass trivially


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "rotoreflection"])
def test_rotation_reflection_periodic_stress(model, periodic, seed, reflect):
    R = orthogonal(seed, reflect)
    p0 = evaluate(model, graph_of(periodic, model), compute_stress=True)
    rotated = periodic.copy()
    rotated.set_cell(periodic.cell.array @ R.T, scale_atoms=False)
    rotated.positions = periodic.positions @ R.T
    p1 = evaluate(model, graph_of(rotated, model), compute_stress=True)
    assert torch.allclose(p0.energy, p1.energy, atol=1e-10, rtol=0)
    assert np.allclose(p0.forces.numpy() @ R.T, p1.forces.numpy(), atol=1e-10)
    s0, s1 = p0.stress[0].numpy(), p1.stress[0].numpy()
    assert np.allclose(R @ s0 @ R.T, s1, atol=1e-10)
    assert np.abs(s0).max() > 1e-4


def test_translation(model, ethanol, periodic):
    for atoms in (ethanol, periodic):
        p0 = evaluate(model, graph_of(atoms, model))
        moved = atoms.copy()
        moved.positions += np.array([3.7, -11.2, 0.4])
        if atoms.pbc.any():
            moved.wrap()
        p1 = evaluate(model, graph_of(moved, model))
        assert torch.allclose(p0.energy, p1.energy, atol=1e-10, rtol=0)
        assert torch.allclose(p0.forces, p1.forces, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_permutation(model, ethanol, periodic, seed):
    for atoms in (ethanol, periodic):
        perm = np.random.default_rng(seed).permutation(len(atoms))
        p0 = evaluate(model, graph_of(atoms, model), compute_stress=atoms.pbc.any())
        p1 = evaluate(model, graph_of(atoms[perm], model), compute_stress=atoms.pbc.any())
        assert torch.allclose(p0.energy, p1.energy, atol=1e-10, rtol=0)
        assert torch.allclose(p0.forces[perm], p1.forces, atol=1e-10)
        assert torch.allclose(p0.atomic_energies[perm], p1.atomic_energies, atol=1e-10)
        if atoms.pbc.any():
            assert torch.allclose(p0.stress, p1.stress, atol=1e-10)


def test_interaction_block_equivariant():
    """The block alone, through e3nn's own equivariance checker (rotations and parity)."""
    torch.manual_seed(0)
    irreps_in = o3.Irreps("4x0e+3x1o+2x1e+2x2e")
    irreps_sh = o3.Irreps.spherical_harmonics(2)
    with default_dtype(torch.float64):  # exact constants, as the potential builds them
        block = Interaction(irreps_in, irreps_sh, "4x0e+4x0o+4x1o+4x1e+4x2e+4x2o", num_species=3, num_basis=5,
                            radial_hidden=8)
    n_atoms, n_edges = 5, 12
    edge_index = torch.randint(0, n_atoms, (2, n_edges))

    def f(h, onehot, sh, radial):
        return block(h, onehot, sh, radial, edge_index)

    with default_dtype(torch.float64):  # e3nn draws its rotations in the default dtype
        assert_equivariant(
            f,
            args_in=[irreps_in.randn(n_atoms, -1, dtype=torch.float64),
                     torch.nn.functional.one_hot(torch.randint(0, 3, (n_atoms,)), 3).double(),
                     o3.spherical_harmonics(irreps_sh, torch.randn(n_edges, 3, dtype=torch.float64), True),
                     torch.randn(n_edges, 5, dtype=torch.float64)],
            irreps_in=[irreps_in, None, irreps_sh, None],
            irreps_out=[block.irreps_out],
            tolerance=1e-9,
        )


def test_wrong_wiring_fails_at_construction():
    with pytest.raises(ValueError, match="no l=0"):
        Interaction("4x0e", "1x1o", "4x0e+4x1o", num_species=2, num_basis=4)
    with pytest.raises(ValueError, match="no scalar output"):
        Interaction("4x1o", "1x0e", "4x0o+4x1e", num_species=2, num_basis=4)
