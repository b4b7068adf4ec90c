"""Radius graphs from a neighbour-list library (vesin), periodic images included."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from e3pot.data.graph import AtomicGraph, Labels
from e3pot.data.io import DataError, Frame

MIN_DISTANCE = 0.1  # Å; closer atoms are reported as an error (no real structure has them)


class SpeciesMap:
    """Maps atomic numbers to the model's species indices; unknown elements raise by name."""

    def __init__(self, atomic_numbers: Sequence[int]):
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        self._table = np.full(119, -1, dtype=np.int64)
        self._table[self.atomic_numbers] = np.arange(len(self.atomic_numbers))

    def __call__(self, numbers: np.ndarray, source: str = "?") -> np.ndarray:
        idx = self._table[numbers]
        if np.any(idx < 0):
            unknown = sorted({chemical_symbols[z] for z in numbers[idx < 0]})
            known = ", ".join(chemical_symbols[z] for z in self.atomic_numbers)
            raise DataError(f"{source}: element(s) {', '.join(unknown)} not known to the model "
                            f"(trained on {known})")
        return idx


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float):
    """Full neighbour list within ``r_max``: (receiver i, sender j, integer shift S, distance d).

    Edge vectors are ``positions[j] - positions[i] + S @ cell``. Cells smaller than ``2 r_max``
    are handled (several images of the same atom appear as separate edges).
    """
    import vesin

    nl = vesin.NeighborList(cutoff=float(r_max), full_list=True)
    box = cell if np.any(pbc) else np.zeros((3, 3))
    i, j, shifts, d = nl.compute(positions, box, np.asarray(pbc, dtype=bool).tolist(), "ijSd")
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.float64), d


def check_distances(i: np.ndarray, j: np.ndarray, dist: np.ndarray, source: str) -> None:
    """Raise :class:`DataError` when two atoms (or an atom and a periodic image) are closer than
    ``MIN_DISTANCE``: the edge direction is undefined at zero distance, and the energy is NaN."""
    if len(i) == 0:
        return
    k = int(np.argmin(dist))
    if dist[k] < MIN_DISTANCE:
        close = np.flatnonzero(dist < MIN_DISTANCE)
        pairs = sorted({(int(min(i[e], j[e])), int(max(i[e], j[e]))) for e in close})
        shown = ", ".join(f"{a} and {b}" for a, b in pairs[:5]) + (f" and {len(pairs) - 5} more pairs" if len(pairs) > 5 else "")
        raise DataError(f"{source}: atoms {shown} (indices from 0) are {dist[k]:.3g} Å apart (closer than {MIN_DISTANCE} Å; "
                        "duplicated or overlapping atoms?)")


class VerletList:
    """A neighbour list with a skin, for MD: built once with cutoff ``r_max + skin`` and reused while no
    atom has moved more than ``skin / 2`` from where it was at the build (and the cell, the periodic
    boundaries and the atoms are unchanged). Each call returns the pairs closer than ``r_max`` among
    the stored candidates, which are exactly the pairs of a fresh list.

    Attributes:
        builds: how many times the list has been built.
    """

    def __init__(self, r_max: float, skin: float):
        if not skin > 0:
            raise ValueError(f"skin must be positive, got {skin}")
        self.r_max, self.skin = float(r_max), float(skin)
        self.builds = 0
        self._ref = None  # positions, cell, pbc and numbers at the last build
        self._pairs = None  # i, j, Cartesian shifts of the candidates

    def _stale(self, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray) -> bool:
        if self._ref is None:
            return True
        ref_pos, ref_cell, ref_pbc, ref_numbers = self._ref
        if (pos.shape != ref_pos.shape or not np.array_equal(cell, ref_cell) or not np.array_equal(pbc, ref_pbc)
                or not np.array_equal(numbers, ref_numbers)):
            return True
        moved = np.einsum("ij,ij->i", pos - ref_pos, pos - ref_pos).max()
        return moved > (0.5 * self.skin) ** 2

    def __call__(self, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, numbers: np.ndarray):
        """(receiver i, sender j, Cartesian shift, distance) of the pairs closer than ``r_max``."""
        if self._stale(pos, cell, pbc, numbers):
            i, j, shifts, _ = neighbor_list(pos, cell, pbc, self.r_max + self.skin)
            self._pairs = (i, j, shifts @ cell)
            self._ref = (pos.copy(), cell.copy(), pbc.copy(), numbers.copy())
            self.builds += 1
        i, j, shift = self._pairs
        vec = pos[j] - pos[i] + shift
        dist = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        keep = dist < self.r_max
        return i[keep], j[keep], shift[keep], dist[keep]


def frame_to_graph(frame: Frame, species: SpeciesMap, r_max: float,
                   verlet: Optional[VerletList] = None) -> AtomicGraph:
    """Build the graph of one structure (float64; cast when batching for the model); ``verlet``
    reuses a neighbour list with a skin between calls."""
    pos = np.ascontiguousarray(frame.positions, dtype=np.float64)
    cell = np.asarray(frame.cell, dtype=np.float64)
    pbc = np.asarray(frame.pbc, dtype=bool)
    if verlet is None:
        i, j, shifts, dist = neighbor_list(pos, cell, pbc, r_max)
        shifts = shifts @ cell
    else:
        i, j, shifts, dist = verlet(pos, cell, pbc, np.asarray(frame.numbers))
    check_distances(i, j, dist, frame.source)
    return AtomicGraph(
        positions=torch.from_numpy(pos),
        species=torch.from_numpy(species(frame.numbers, frame.source)),
        edge_index=torch.from_numpy(np.stack([j, i])),
        edge_shift=torch.from_numpy(shifts),
        batch=torch.zeros(frame.n_atoms, dtype=torch.long),
        cell=torch.from_numpy(cell if pbc.any() else np.zeros((3, 3))).unsqueeze(0),
        pbc=torch.from_numpy(pbc).unsqueeze(0),
    )


def frame_to_labels(frame: Frame) -> Labels:
    nan = float("nan")
    return Labels(
        energy=torch.tensor([nan if frame.energy is None else frame.energy], dtype=torch.float64),
        forces=torch.from_numpy(frame.forces) if frame.forces is not None
        else torch.full((frame.n_atoms, 3), nan, dtype=torch.float64),
        stress=torch.from_numpy(frame.stress).unsqueeze(0) if frame.stress is not None
        else torch.full((1, 3, 3), nan, dtype=torch.float64),
        n_atoms=torch.tensor([frame.n_atoms]),
    )


def atoms_to_graph(atoms, species: SpeciesMap, r_max: float, source: str = "structure",
                   verlet: Optional[VerletList] = None) -> AtomicGraph:
    """Graph of an ``ase.Atoms`` without reading its labels (for prediction)."""
    from e3pot.data.io import check_frame

    frame = Frame(numbers=np.asarray(atoms.numbers, dtype=np.int64), positions=atoms.positions,
                  cell=atoms.cell.array, pbc=np.asarray(atoms.pbc, dtype=bool), source=source)
    return frame_to_graph(check_frame(frame), species, r_max, verlet)
