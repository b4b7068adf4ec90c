"""In-memory datasets of graphs whose neighbour lists are computed once, when built."""
from __future__ import annotations

from typing import List, Sequence, Tuple

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


def collate_batch(items: Sequence[Tuple[AtomicGraph, Labels, int]]) -> Tuple[AtomicGraph, Labels, Tensor]:
    """One batch: the joined graph, the joined labels and the dataset index of each structure
    (so that errors can name the frames of a batch)."""
    graphs, labels, index = zip(*items)
    return collate(graphs), collate_labels(labels), torch.tensor(index)
