"""Energy -> forces and stress, in one place for every caller (trainer, calculator, CLI, export, the
compiled and the chunked paths).

This module knows nothing of how a model is run (direct, chunked, compiled, exported: see
:mod:`e3pot.model.runtime`); it depends on the graph and the scatter-sum only.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from e3pot.data.graph import AtomicGraph
from e3pot.nn.scatter import scatter_sum


class Prediction(NamedTuple):
    energy: Tensor  # (n_graphs,) eV
    forces: Tensor  # (n_atoms, 3) eV/Å
    stress: Optional[Tensor]  # (n_graphs, 3, 3) eV/Å^3 (ASE sign), NaN for graphs without a cell volume
    atomic_energies: Tensor  # (n_atoms,) eV


def strain_geometry(graph: AtomicGraph, positions: Tensor, strain: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Positions and edge shifts of ``graph`` with ``positions`` in place of its own, deformed by ``strain``
    (n_graphs, 3, 3; its symmetric part is applied) when one is given."""
    if strain is None:
        return positions, graph.edge_shift
    sym = 0.5 * (strain + strain.transpose(1, 2))
    if graph.cell.shape[0] == 1:  # one structure: no per-edge copies of the strain
        return positions + positions @ sym[0], graph.edge_shift + graph.edge_shift @ sym[0]
    strained_positions = positions + torch.bmm(positions.unsqueeze(1), sym[graph.batch]).squeeze(1)
    edge_graph = graph.batch[graph.edge_index[1]]
    edge_shift = graph.edge_shift + torch.bmm(graph.edge_shift.unsqueeze(1), sym[edge_graph]).squeeze(1)
    return strained_positions, edge_shift


def apply_strain(graph: AtomicGraph, compute_stress: bool) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Positions and edge shifts from fresh leaf positions (and, for stress, a zero strain applied to
    both), and the tensors to differentiate the energy by: ``[positions]`` or ``[positions, strain]``."""
    positions = graph.positions.detach().requires_grad_(True)
    inputs: List[Tensor] = [positions]
    strain: Optional[Tensor] = None
    if compute_stress:
        strain = torch.zeros_like(graph.cell).requires_grad_(True)  # (n_graphs, 3, 3)
        inputs.append(strain)
    strained_positions, edge_shift = strain_geometry(graph, positions, strain)
    return strained_positions, edge_shift, inputs


def derivatives(energy: Tensor, inputs: List[Tensor], cell: Tensor, pbc: Tensor,
                training: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Forces -dE/dR (n_atoms, 3) and, when ``inputs`` holds a strain, stress (n_graphs, 3, 3)."""
    grad_outputs: List[Optional[Tensor]] = [torch.ones_like(energy)]
    grads = torch.autograd.grad([energy], inputs, grad_outputs=grad_outputs, create_graph=training)
    d_positions = grads[0]
    assert d_positions is not None
    stress: Optional[Tensor] = None
    if len(inputs) > 1:
        d_strain = grads[1]
        assert d_strain is not None
        stress = stress_from_strain_derivative(d_strain, cell, pbc)
    return -d_positions, stress


def stress_from_strain_derivative(d_strain: Tensor, cell: Tensor, pbc: Tensor) -> Tensor:
    """(1/V) dE/dε (n_graphs, 3, 3), ASE's convention with V the cell volume, vacuum included. A cell with
    a zero vector along a non-periodic direction (a 2D material) has no volume: NaN there."""
    volume = torch.linalg.det(cell).abs()  # (n_graphs,)
    has_volume = pbc.any(dim=1) & (volume > 1e-10)
    stress = d_strain / torch.where(has_volume, volume, torch.ones_like(volume))[:, None, None]
    return torch.where(has_volume[:, None, None], stress, torch.full_like(stress, float("nan")))


@compile_mode("script")
class Conservative(nn.Module):
    """Wraps a per-atom energy model; returns energy, forces = -dE/dR and stress = (1/V) dE/d(strain).

    The strain is applied to positions and to the Cartesian image shifts of the edges, so the
    stress is exact for any cell, including cells smaller than twice the cutoff.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, graph: AtomicGraph, compute_stress: bool = False,
                training: bool = False) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
        positions, edge_shift, inputs = apply_strain(graph, compute_stress)
        strained = AtomicGraph(positions, graph.species, graph.edge_index, edge_shift, graph.batch, graph.cell,
                               graph.pbc)
        atomic_energies = self.model(strained)  # (n_atoms,)
        energy = scatter_sum(atomic_energies, graph.batch, graph.cell.shape[0])  # (n_graphs,)
        forces, stress = derivatives(energy, inputs, graph.cell, graph.pbc, training)
        return energy, forces, stress, atomic_energies


def evaluate(model: nn.Module, graph: AtomicGraph, compute_stress: bool = False,
             training: bool = False, memory_budget: Optional[float] = None) -> Prediction:
    """Energies, forces and, if asked, stress for a batch, from an eager per-atom energy model in one
    piece (see :class:`Conservative`): the direct path, without memory planning.

    ``training=True`` keeps the graph of the derivatives so that a loss on forces can be
    back-propagated (double backward). A memory budget, chunked evaluation of large structures, and
    compiled and exported models are the business of :func:`e3pot.evaluate`
    (:func:`e3pot.model.runtime.evaluate`), which takes the same arguments; ``memory_budget`` is
    accepted here only to say so.
    """
    if memory_budget is not None:
        raise ValueError("e3pot.model.forces.evaluate evaluates in one piece and takes no memory budget; "
                         "use e3pot.evaluate (e3pot.model.runtime.evaluate) for memory_budget=")
    return Prediction(*Conservative(model)(graph, compute_stress, training))
