"""Constants fitted once on the training data and stored with the model."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from e3pot.data.dataset import GraphDataset


def composition_matrix(dataset: GraphDataset, n_species: int, indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """(n_frames, n_species) counts of each species per frame (of the frames ``indices``; default all)."""
    items = dataset.items if indices is None else [dataset.items[k] for k in indices]
    return np.stack([np.bincount(g.species.numpy(), minlength=n_species) for g, _ in items])


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


def shift_correction(model, dataset: GraphDataset, indices: Sequence[int], batch_size: int = 32) -> np.ndarray:
    """Per-species change of ``model.energy_shift`` (eV) that least-squares fits the model's total
    energies to the labels of ``dataset[indices]``.

    Forces do not see a constant energy, and the per-atom energy loss barely does, so the constant
    part of a model's energy drifts during training; this re-fit puts it back (float64 throughout).
    """
    from e3pot.data.dataset import collate_batch
    from e3pot.nn.scatter import scatter_sum

    device, dtype = model.energy_shift.device, model.dtype
    residuals = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            graph, labels, _ = collate_batch([dataset[k] for k in indices[start:start + batch_size]])
            graph = graph.to(device=device, dtype=dtype)
            energy = scatter_sum(model(graph), graph.batch, graph.n_graphs)  # (n_graphs,) float64
            residuals.append((labels.energy.to(device) - energy).cpu().numpy())
    counts = composition_matrix(dataset, len(model.energy_shift), indices).astype(float)
    delta, *_ = np.linalg.lstsq(counts, np.concatenate(residuals), rcond=None)
    return delta
