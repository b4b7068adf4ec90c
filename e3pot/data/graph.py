"""The graph that every model call takes, and batching of several structures into one.

Edge convention (the only place it is written down):
    ``edge_index[0]`` is the *sender* j, ``edge_index[1]`` the *receiver* i, and the edge vector is

        r_ij = positions[j] - positions[i] + edge_shift        # (n_edges, 3) Å

    i.e. it points from atom i to the periodic image of atom j. Messages flow from j to i and
    are summed on i. ``edge_shift`` is the Cartesian image offset ``S @ cell`` (zero for
    molecules); the list is a full list (both i->j and j->i are present).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor


class AtomicGraph(NamedTuple):
    positions: Tensor  # (n_atoms, 3) Å
    species: Tensor  # (n_atoms,) long, index into the model's species list
    edge_index: Tensor  # (2, n_edges) long, [sender, receiver]
    edge_shift: Tensor  # (n_edges, 3) Å, periodic image offset added to the edge vector
    batch: Tensor  # (n_atoms,) long, graph index of each atom
    cell: Tensor  # (n_graphs, 3, 3) Å, zeros where not periodic
    pbc: Tensor  # (n_graphs, 3) bool

    @property
    def n_graphs(self) -> int:
        return self.cell.shape[0]

    def to(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> "AtomicGraph":
        """Move to ``device``; floating-point fields are also cast to ``dtype`` when given."""
        return AtomicGraph(
            *(t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
              for t in self)
        )


class Labels(NamedTuple):
    """Reference values, kept apart from the graph so that a model can never read them."""

    energy: Tensor  # (n_graphs,) eV
    forces: Tensor  # (n_atoms, 3) eV/Å
    stress: Tensor  # (n_graphs, 3, 3) eV/Å^3, NaN where a structure has no stress label
    n_atoms: Tensor  # (n_graphs,) long

    def to(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> "Labels":
        return Labels(
            *(t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)
              for t in self)
        )


def collate(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Join single-structure graphs into one disconnected graph; edge indices are offset."""
    n_atoms = torch.tensor([g.positions.shape[0] for g in graphs])
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        species=torch.cat([g.species for g in graphs]),
        edge_index=torch.cat([g.edge_index + off for g, off in zip(graphs, offsets)], dim=1),
        edge_shift=torch.cat([g.edge_shift for g in graphs]),
        batch=torch.repeat_interleave(torch.arange(len(graphs)), n_atoms),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
    )


def collate_labels(labels: Sequence[Labels]) -> Labels:
    return Labels(*(torch.cat(parts) for parts in zip(*labels)))
