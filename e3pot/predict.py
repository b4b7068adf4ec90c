"""Predictions for many ``ase.Atoms`` at once, batched."""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch

from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.forces import evaluate


def iter_predictions(model, structures: Iterable, batch_size: int = 32,
                     compute_stress: Optional[bool] = None) -> Iterator[Dict[str, np.ndarray]]:
    """Yield one dict per structure: ``energy`` (eV), ``forces`` (eV/Å), ``energies`` (per atom)
    and, for periodic structures, ``stress`` (3x3, eV/Å^3). Works on a stream of structures."""
    species = SpeciesMap(model.atomic_numbers)
    param = next(model.parameters())
    buffer: List = []

    def flush():
        graph = collate(buffer).to(device=param.device, dtype=param.dtype)
        want_stress = bool(graph.pbc.any()) if compute_stress is None else compute_stress
        pred = evaluate(model, graph, compute_stress=want_stress)
        n_atoms = torch.bincount(graph.batch, minlength=graph.n_graphs).tolist()
        forces = pred.forces.detach().cpu().double().numpy()
        atomic = pred.atomic_energies.detach().cpu().double().numpy()
        energy = pred.energy.detach().cpu().double().numpy()
        stress = None if pred.stress is None else pred.stress.detach().cpu().double().numpy()
        start = 0
        for k, n in enumerate(n_atoms):
            out = {"energy": float(energy[k]), "forces": forces[start:start + n],
                   "energies": atomic[start:start + n]}
            if stress is not None and bool(graph.pbc[k].any()):
                out["stress"] = stress[k]
            start += n
            yield out

    for k, atoms in enumerate(structures):
        buffer.append(atoms_to_graph(atoms, species, model.r_max, source=f"structure {k}"))
        if len(buffer) == batch_size:
            yield from flush()
            buffer = []
    if buffer:
        yield from flush()


def predict(model, structures: Iterable, batch_size: int = 32,
            compute_stress: Optional[bool] = None) -> List[Dict[str, np.ndarray]]:
    """List version of :func:`iter_predictions`."""
    return list(iter_predictions(model, structures, batch_size, compute_stress))
