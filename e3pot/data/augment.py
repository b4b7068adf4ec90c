"""Random rotations and reflections of training structures, for models that are not equivariant.

Each structure of a batch gets its own random orthogonal matrix Q (a uniform rotation, times -1
with probability 1/2): positions, image shifts, cell vectors and forces become x Q^T, the stress
Q sigma Q^T, and the energy stays. The graph's edges are unchanged, because all distances are.
"""
from __future__ import annotations

from typing import Tuple

import torch
from e3nn import o3

from e3pot.data.graph import AtomicGraph, Labels


def random_orthogonal() -> torch.Tensor:
    """A random 3x3 orthogonal matrix (float64) from torch's global generator (seeded by
    ``seed_everything``; DataLoader workers get their own seeds): a Haar-uniform rotation, reflected
    with probability 1/2."""
    flip = 1.0 - 2.0 * float(torch.randint(0, 2, ()))
    return o3.rand_matrix(dtype=torch.float64) * flip


def rotate(graph: AtomicGraph, labels: Labels, q: torch.Tensor) -> Tuple[AtomicGraph, Labels]:
    """One structure (graph and labels) transformed by the orthogonal matrix ``q`` (3, 3)."""
    def turn(x: torch.Tensor) -> torch.Tensor:
        return x @ q.to(x.dtype).T

    graph = graph._replace(positions=turn(graph.positions), edge_shift=turn(graph.edge_shift), cell=turn(graph.cell))
    qs = q.to(labels.stress.dtype)
    labels = labels._replace(forces=turn(labels.forces), stress=qs @ labels.stress @ qs.T)
    return graph, labels
