"""Energy -> forces and stress, in one place for every caller (trainer, calculator, CLI)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from e3pot.data.graph import AtomicGraph
from e3pot.nn.scatter import scatter_sum


class Prediction(NamedTuple):
    energy: Tensor  # (n_graphs,) eV
    forces: Tensor  # (n_atoms, 3) eV/Å
    stress: Optional[Tensor]  # (n_graphs, 3, 3) eV/Å^3 (ASE sign), NaN for non-periodic graphs
    atomic_energies: Tensor  # (n_atoms,) eV


def evaluate(model: nn.Module, graph: AtomicGraph, compute_stress: bool = False,
             training: bool = False) -> Prediction:
    """Energies, forces = -dE/dR and, if asked, stress = (1/V) dE/d(strain) for a batch.

    ``training=True`` keeps the graph of the derivatives so that a loss on forces can be
    back-propagated (double backward).
    """
    positions = graph.positions.detach().requires_grad_(True)
    edge_shift = graph.edge_shift
    strain = None
    if compute_stress:
        strain = torch.zeros_like(graph.cell, requires_grad=True)  # (n_graphs, 3, 3)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        positions_strained = positions + torch.bmm(positions.unsqueeze(1), sym[graph.batch]).squeeze(1)
        edge_graph = graph.batch[graph.edge_index[1]]
        edge_shift = edge_shift + torch.bmm(edge_shift.unsqueeze(1), sym[edge_graph]).squeeze(1)
        graph = graph._replace(positions=positions_strained, edge_shift=edge_shift)
    else:
        graph = graph._replace(positions=positions)

    atomic_energies = model(graph)
    energy = scatter_sum(atomic_energies, graph.batch, graph.n_graphs)
    inputs = [positions] if strain is None else [positions, strain]
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training)
    forces = -grads[0]
    stress = None
    if strain is not None:
        volume = torch.linalg.det(graph.cell).abs()  # (n_graphs,)
        periodic = graph.pbc.any(dim=1)
        stress = grads[1] / torch.where(periodic, volume, torch.ones_like(volume))[:, None, None]
        stress = torch.where(periodic[:, None, None], stress, torch.full_like(stress, float("nan")))
    return Prediction(energy=energy, forces=forces, stress=stress, atomic_energies=atomic_energies)
