"""Models with one deliberate flaw each: the negative controls of a battery of checks.

Each wraps a sound model and adds ``flaw(graph)`` (per-atom eV, float64) to its per-atom energies,
keeping the model contract (``forward(graph) -> per-atom energies``, ``atomic_numbers``, ``r_max``,
``dtype``, ``config``). A check that passes on the sound model and fails on the flawed one measures
what it claims to; :data:`FAILS` says which checks of :func:`e3pot.testing.check_model` each flaw
must fail (and so that all the others must pass).
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

import torch
from torch import Tensor, nn


class Flawed(nn.Module):
    """A sound model ``inner`` plus ``flaw(graph)``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.atomic_numbers, self.r_max, self.config = inner.atomic_numbers, inner.r_max, inner.config

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(self, graph) -> Tensor:
        return self.inner(graph) + self.flaw(graph)

    def flaw(self, graph) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def edges(self, graph) -> Tuple[Tensor, Tensor]:
        """Edge vectors (n_edges, 3) and a smooth envelope (n_edges,) that vanishes with two derivatives at r_max."""
        sender, receiver = graph.edge_index
        vec = (graph.positions[sender] - graph.positions[receiver] + graph.edge_shift).to(torch.float64)
        return vec, (1 - vec.norm(dim=-1) / self.r_max) ** 3

    def per_atom(self, graph, values: Tensor) -> Tensor:
        """Per-edge ``values`` summed onto the receiving atoms."""
        out = torch.zeros((graph.positions.shape[0],) + values.shape[1:], dtype=values.dtype, device=values.device)
        return out.index_add(0, graph.edge_index[1], values)


class AbsoluteX(Flawed):
    """Depends on where the structure is: neither translation- nor rotation-invariant."""

    def flaw(self, graph):
        return 0.05 * graph.positions[:, 0].to(torch.float64)


class Chiral(Flawed):
    """A pseudoscalar: invariant under rotations and permutations, odd under reflections."""

    def flaw(self, graph):
        vec, env = self.edges(graph)
        r = vec.norm(dim=-1, keepdim=True)
        a, b, c = (self.per_atom(graph, env[:, None] * r ** k * vec) for k in range(3))
        return 0.1 * torch.linalg.det(torch.stack([a, b, c], dim=1))


class DetachedPair(Flawed):
    """Energy that autograd does not see: the forces are not -dE/dR."""

    def flaw(self, graph):
        _, env = self.edges(graph)
        return self.per_atom(graph, 0.5 * env.detach())


class HessianBlind(Flawed):
    """A pair term whose value and first derivative are right but whose second derivative is lost (its
    slope is taken at detached distances): forces are -dE/dR, their own derivatives (what training
    with a force loss, or a Hessian, needs) are not."""

    def flaw(self, graph):
        vec, _ = self.edges(graph)
        r = vec.norm(dim=-1)
        r0 = r.detach()
        u = 1 - r0 / self.r_max
        value, slope = 0.5 * u ** 3, -1.5 * u ** 2 / self.r_max
        return self.per_atom(graph, value + slope * (r - r0))


class NeighbourCount(Flawed):
    """0.01 eV per neighbour: the energy jumps when one crosses r_max."""

    def flaw(self, graph):
        ones = torch.ones(graph.edge_index.shape[1], dtype=torch.float64, device=graph.positions.device)
        return 0.01 * self.per_atom(graph, ones)


class NotExtensive(Flawed):
    """0.01 eV x the number of atoms of its structure, per atom: E grows as n^2, so two far-apart
    molecules are not the sum of each."""

    def flaw(self, graph):
        counts = torch.bincount(graph.batch, minlength=graph.cell.shape[0])
        return 0.01 * counts[graph.batch].to(torch.float64)


class BatchMixing(Flawed):
    """Reads the hydrogen fraction of the whole batch, not of its own structure: a structure's energy
    depends on which others share its batch. (Alone, 0.05 eV x the fraction per atom is 0.05 eV per
    hydrogen: additive.)"""

    def flaw(self, graph):
        hydrogen = torch.tensor(self.atomic_numbers, device=graph.species.device)[graph.species] == 1
        fraction = hydrogen.to(torch.float64).mean()
        return torch.full((graph.positions.shape[0],), 0.05, dtype=torch.float64,
                          device=graph.positions.device) * fraction


FAILS: Dict[type, FrozenSet[str]] = {
    AbsoluteX: frozenset({"rotation", "rotoreflection", "translation"}),
    Chiral: frozenset({"rotoreflection"}),
    DetachedPair: frozenset({"finite differences"}),
    NeighbourCount: frozenset({"cutoff"}),
    NotExtensive: frozenset({"additivity"}),
    BatchMixing: frozenset({"batch"}),
}
"""The checks of :func:`e3pot.testing.check_model` that each flaw fails. :class:`HessianBlind` fails
none of them (its forces are right); ``torch.autograd.gradcheck`` of its forces catches it."""
