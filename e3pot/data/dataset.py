"""Datasets of (graph, labels): in memory (neighbour lists computed once, when built) or read lazily from
an on-disk store (neighbour lists built when a frame is read, in the DataLoader's workers).

Both give ``frame_columns()``: per-frame element counts, energies, sums of squared forces, numbers of
atoms and edges and which labels each frame has, from which the training statistics are computed.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from e3pot.data.graph import AtomicGraph, Labels, collate, collate_labels
from e3pot.data.io import Frame
from e3pot.data.neighbors import SpeciesMap, frame_to_graph, frame_to_labels


class GraphDataset(Dataset):
    """(graph, labels) pairs plus the source of each frame for error messages."""

    def __init__(self, frames: Sequence[Frame], species: SpeciesMap, r_max: float,
                 desc: str = "building graphs", progress: bool = True):
        self.atomic_numbers = list(species.atomic_numbers)
        self.r_max = r_max
        self.items: List[Tuple[AtomicGraph, Labels]] = []
        self.sources: List[str] = []
        for frame in tqdm(frames, desc=desc, disable=not progress or len(frames) < 1000,
                          leave=False, unit="frame"):
            self.items.append((frame_to_graph(frame, species, r_max), frame_to_labels(frame)))
            self.sources.append(frame.source)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Tuple[AtomicGraph, Labels, int]:
        graph, labels = self.items[k]
        return graph, labels, k

    def frame_columns(self) -> Dict[str, Optional[np.ndarray]]:
        if getattr(self, "_columns", None) is None:
            self._columns = self._frame_columns()
        return self._columns

    def _frame_columns(self) -> Dict[str, Optional[np.ndarray]]:
        n_species = len(self.atomic_numbers)
        graphs = [g for g, _ in self.items]
        labels = [lab for _, lab in self.items]
        forces = [lab.forces for lab in labels]
        return {
            "counts": np.stack([np.bincount(g.species.numpy(), minlength=n_species) for g in graphs]),
            "n_atoms": np.array([g.positions.shape[0] for g in graphs]),
            "n_edges": np.array([g.edge_index.shape[1] for g in graphs]),
            "energy": np.array([float(lab.energy[0]) for lab in labels]),
            "force_sq": np.array([float(torch.nan_to_num(f).pow(2).sum()) for f in forces]),
            "has_energy": np.array([bool(torch.isfinite(lab.energy).all()) for lab in labels]),
            "has_forces": np.array([bool(torch.isfinite(f).all()) for f in forces]),
            "has_stress": np.array([bool(torch.isfinite(lab.stress).all()) for lab in labels]),
        }


class _StoreSources:
    def __init__(self, store, indices):
        self.store, self.indices = store, indices

    def __getitem__(self, k: int) -> str:
        return self.store.source(int(self.indices[k]))

    def __len__(self) -> int:
        return len(self.indices)


class StoreDataset(Dataset):
    """Frames ``indices`` of a :class:`~e3pot.data.store.FrameStore`, read and turned into graphs on access."""

    def __init__(self, store, indices: Sequence[int], species: SpeciesMap, r_max: float):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.species, self.r_max = species, r_max
        self.atomic_numbers = list(species.atomic_numbers)
        self.sources = _StoreSources(store, self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Tuple[AtomicGraph, Labels, int]:
        frame = self.store.frame(int(self.indices[k]))
        return frame_to_graph(frame, self.species, self.r_max), frame_to_labels(frame), k

    def frame_columns(self) -> Dict[str, Optional[np.ndarray]]:
        from e3pot.data.store import frame_columns

        if getattr(self, "_columns", None) is None:
            cols = frame_columns(self.store, self.indices, self.atomic_numbers)
            if abs(self.store.r_max - self.r_max) > 1e-9:  # edges were counted at another cutoff
                cols["n_edges"] = None
            self._columns = cols
        return self._columns


def collate_batch(items: Sequence[Tuple[AtomicGraph, Labels, int]],
                  augment: bool = False) -> Tuple[AtomicGraph, Labels, Tensor]:
    """One batch: the joined graph, the joined labels and the dataset index of each structure
    (so that errors can name the frames of a batch). ``augment``: each structure randomly rotated
    and reflected first (:mod:`e3pot.data.augment`)."""
    if augment:
        from e3pot.data.augment import random_orthogonal, rotate

        items = [(*rotate(graph, labels, random_orthogonal()), k) for graph, labels, k in items]
    graphs, labels, index = zip(*items)
    return collate(graphs), collate_labels(labels), torch.tensor(index)


class NumpyBatch:
    """A collated batch as numpy arrays, for the way back from a DataLoader worker: a worker sends
    tensors through one shared-memory segment each (a dozen per batch, each with a system call and a
    file descriptor),
    while numpy arrays travel inside the pickle. :meth:`tensors` restores the batch without copies."""

    def __init__(self, batch: Tuple[AtomicGraph, Labels, Tensor]):
        graph, labels, index = batch
        self.graph = [t.numpy() for t in graph]
        self.labels = [t.numpy() for t in labels]
        self.index = index.numpy()

    def tensors(self) -> Tuple[AtomicGraph, Labels, Tensor]:
        return (AtomicGraph(*(torch.from_numpy(a) for a in self.graph)),
                Labels(*(torch.from_numpy(a) for a in self.labels)), torch.from_numpy(self.index))


def collate_batch_numpy(items: Sequence[Tuple[AtomicGraph, Labels, int]], augment: bool = False) -> NumpyBatch:
    """:func:`collate_batch` for DataLoader workers (see :class:`NumpyBatch`)."""
    return NumpyBatch(collate_batch(items, augment))
