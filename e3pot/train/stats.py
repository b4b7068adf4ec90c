"""Constants fitted once on the training data and stored with the model."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from e3pot.data.dataset import GraphDataset


def composition_matrix(dataset: GraphDataset, n_species: int) -> np.ndarray:
    """(n_frames, n_species) counts of each species per frame."""
    return np.stack([np.bincount(g.species.numpy(), minlength=n_species) for g, _ in dataset.items])


def fit_energy_shift(dataset: GraphDataset, n_species: int) -> np.ndarray:
    """Per-species E0s (eV) by least squares of total energy on composition.

    When every frame has the same composition the system is underdetermined and the
    minimum-norm solution is taken; it still reproduces the mean energy exactly.
    """
    counts = composition_matrix(dataset, n_species).astype(float)
    energies = np.array([float(lab.energy[0]) for _, lab in dataset.items])
    shift, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return shift


def shift_from_table(e0s: Dict[str, float], atomic_numbers: Sequence[int]) -> np.ndarray:
    """Per-species E0s from a {symbol: eV} table; every element must be present."""
    from ase.data import chemical_symbols

    missing = [chemical_symbols[z] for z in atomic_numbers if chemical_symbols[z] not in e0s]
    if missing:
        raise ValueError(f"isolated-atom energies lack element(s) {', '.join(missing)} "
                         f"(given: {', '.join(e0s)})")
    return np.array([float(e0s[chemical_symbols[z]]) for z in atomic_numbers])


def read_e0s_file(path: str) -> Dict[str, float]:
    """Isolated-atom energies (eV) from an ASE-readable file of single-atom structures."""
    from e3pot.data.io import read_frames
    from ase.data import chemical_symbols

    table = {}
    for frame in read_frames(path, require=("energy",)):
        if frame.n_atoms != 1:
            raise ValueError(f"{frame.source}: isolated-atom file holds a structure of {frame.n_atoms} atoms")
        table[chemical_symbols[int(frame.numbers[0])]] = float(frame.energy)
    return table


def force_rms(dataset: GraphDataset) -> float:
    """Root mean square of all force components (eV/Å): the model's energy scale."""
    forces = torch.cat([lab.forces.reshape(-1) for _, lab in dataset.items])
    forces = forces[torch.isfinite(forces)]
    return float(forces.pow(2).mean().sqrt()) if forces.numel() else 1.0


def avg_num_neighbors(dataset: GraphDataset) -> float:
    edges = sum(g.edge_index.shape[1] for g, _ in dataset.items)
    atoms = sum(g.positions.shape[0] for g, _ in dataset.items)
    return max(edges / atoms, 1.0)
