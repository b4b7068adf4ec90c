"""Symmetry below the totals: per-atom energies, and the interaction block alone. Energies, forces and stress
of every model kind under rotations, reflections, translations and permutations: tests/test_battery.py."""
import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3
from e3nn.util.test import assert_equivariant

from e3pot.audit.symmetry import random_rotation
from e3pot.model.forces import evaluate
from e3pot.model.potential import default_dtype
from e3pot.nn.interaction import Interaction
from e3pot.testing import random_model
from tests.conftest import graph_of


@pytest.mark.parametrize("kind, options", [("e3", {}), ("e3", {"parity": False}), ("e3", {"l_max": 0}),
                                           ("cartesian", {}), ("egnn", {})],
                         ids=["e3", "e3-no-parity", "invariant", "cartesian", "egnn"])
def test_per_atom_energies_follow_the_atoms(kind, options, ethanol, periodic):
    """Not only the total: each atom's energy is unchanged by a permutation, a translation and (but for
    the Cartesian kind) a rotoreflection, and moves with its atom."""
    model = random_model(kind, **options)
    for atoms in (ethanol, periodic):
        perm = np.random.default_rng(3).permutation(len(atoms))
        R = np.eye(3) if kind == "cartesian" else -random_rotation(np.random.default_rng(4))
        moved = Atoms(atoms.numbers[perm], positions=atoms.positions[perm] @ R.T + [3.7, -11.2, 0.4],
                      cell=atoms.cell.array @ R.T, pbc=atoms.pbc)
        if atoms.pbc.any():
            moved.wrap()
        before = evaluate(model, graph_of(atoms, model)).atomic_energies
        after = evaluate(model, graph_of(moved, model)).atomic_energies
        assert torch.allclose(before[perm], after, atol=1e-10, rtol=0)
        spread = (before - model.energy_shift[graph_of(atoms, model).species]).std()
        assert spread > 0.05  # atoms of the same element differ: the test could tell them apart


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

    args = [irreps_in.randn(n_atoms, -1, dtype=torch.float64),
            torch.nn.functional.one_hot(torch.randint(0, 3, (n_atoms,)), 3).double(),
            o3.spherical_harmonics(irreps_sh, torch.randn(n_edges, 3, dtype=torch.float64), True),
            torch.randn(n_edges, 5, dtype=torch.float64)]
    out = f(*args)
    for block_slice in block.irreps_out.slices():  # a zero output block would be equivariant trivially
        assert out[:, block_slice].abs().max() > 0.1
    with default_dtype(torch.float64):  # e3nn draws its rotations in the default dtype
        assert_equivariant(
            f,
            args_in=args,
            irreps_in=[irreps_in, None, irreps_sh, None],
            irreps_out=[block.irreps_out],
            tolerance=1e-9,
        )


def test_wrong_wiring_fails_at_construction():
    with pytest.raises(ValueError, match="no l=0"):
        Interaction("4x0e", "1x1o", "4x0e+4x1o", num_species=2, num_basis=4)
    with pytest.raises(ValueError, match="no scalar output"):
        Interaction("4x1o", "1x0e", "4x0o+4x1e", num_species=2, num_basis=4)
