"""Constants fitted once on the training data and stored with the model."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

# Beyond these, labels in eV and Å are implausible (usually labels in meV or kcal/mol read as eV): the
# force RMS of DFT training sets is of order 0.1-5 eV/Å; after the per-species shifts, the spread of
# energies is well under 1 eV/atom; and no element's total energy per atom reaches 1e6 eV.
PLAUSIBLE_FORCE_RMS = 30.0          # eV/Å
PLAUSIBLE_ENERGY_SPREAD = 5.0       # eV/atom, RMS of per-atom energies about the fitted shifts
PLAUSIBLE_SHIFT = 1e6               # eV/atom


def implausible_units(dataset, shift: np.ndarray, force_rms_value: float, what: str = "training labels",
                      options: Sequence[str] = ("data.energy_unit", "data.length_unit")) -> Optional[str]:
    """A warning (or None) when the labels of ``dataset`` (``what``, read with the unit ``options``) look like
    another unit than eV and Å."""
    cols = dataset.frame_columns()
    has = np.isfinite(cols["energy"])
    counts = np.asarray(cols["counts"], dtype=float)[has]
    with np.errstate(over="ignore", invalid="ignore"):  # labels that overflow are reported, not a crash
        per_atom = (cols["energy"][has] - counts @ shift) / cols["n_atoms"][has]
        spread = float(np.sqrt(np.mean(per_atom ** 2))) if len(per_atom) else 0.0
    found = []
    if force_rms_value > PLAUSIBLE_FORCE_RMS:
        found.append(f"the forces have an RMS of {force_rms_value:.4g} eV/Å (DFT data: about 0.1-5)")
    if spread > PLAUSIBLE_ENERGY_SPREAD:
        found.append(f"the energies spread by {spread:.4g} eV/atom (RMS) about the per-species shifts "
                     "(usually well under 1)")
    if len(shift) and float(np.max(np.abs(shift))) > PLAUSIBLE_SHIFT:
        found.append(f"the fitted per-atom energy shifts reach {float(np.max(np.abs(shift))):.4g} eV")
    if not found:
        return None
    return (f"the {what} do not look like eV and Å: " + "; ".join(found) + ". If the file's energies "
            f"are in meV, kcal/mol, kJ/mol or Hartree, set {options[0]} (and {options[1]} for positions "
            "in Bohr or nm)")


class FrameColumns:
    """The per-frame columns of :meth:`e3pot.data.dataset.GraphDataset.frame_columns` for frames that are not
    made into graphs (no edge counts), with the species in sorted order."""

    def __init__(self, frames, atomic_numbers: Optional[Sequence[int]] = None):
        self.frames = list(frames)
        self.atomic_numbers = sorted({int(z) for f in self.frames for z in f.numbers}) \
            if atomic_numbers is None else list(atomic_numbers)
        self.n_species = len(self.atomic_numbers)

    def with_energy(self) -> "FrameColumns":
        return FrameColumns([f for f in self.frames if f.energy is not None], self.atomic_numbers)

    def frame_columns(self) -> Dict[str, Optional[np.ndarray]]:
        index = {z: k for k, z in enumerate(self.atomic_numbers)}
        frames = self.frames
        counts = np.zeros((len(frames), self.n_species), dtype=np.int64)
        for row, f in enumerate(frames):
            for z in f.numbers:
                counts[row, index[int(z)]] += 1
        forces = [None if f.forces is None else np.asarray(f.forces, dtype=float) for f in frames]
        return {"counts": counts, "n_atoms": np.array([f.n_atoms for f in frames], dtype=np.int64),
                "n_edges": None,
                "energy": np.array([np.nan if f.energy is None else float(f.energy) for f in frames]),
                "force_sq": np.array([0.0 if x is None else float(np.square(x).sum()) for x in forces]),
                "has_energy": np.array([f.energy is not None for f in frames], dtype=bool),
                "has_forces": np.array([x is not None for x in forces], dtype=bool),
                "has_stress": np.array([f.stress is not None for f in frames], dtype=bool)}


def composition_matrix(dataset, n_species: int, indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """(n_frames, n_species) counts of each species per frame (of the frames ``indices``; default all)."""
    counts = dataset.frame_columns()["counts"]
    return counts if indices is None else counts[np.asarray(indices, dtype=np.int64)]


def fit_energy_shift(dataset, n_species: int, block: int = 65536) -> np.ndarray:
    """Per-species E0s (eV) by least squares of total energy on composition, from the normal equations
    accumulated over blocks of frames (bounded memory for any number of frames).

    When every frame has the same composition the system is underdetermined and the
    minimum-norm solution is taken; it still reproduces the mean energy exactly.
    """
    cols = dataset.frame_columns()
    counts, energies = cols["counts"], cols["energy"]
    ata = np.zeros((n_species, n_species))
    aty = np.zeros(n_species)
    for start in range(0, len(energies), block):
        a = np.asarray(counts[start:start + block], dtype=float)
        ata += a.T @ a
        aty += a.T @ np.asarray(energies[start:start + block], dtype=float)
    return np.linalg.pinv(ata, rcond=1e-10, hermitian=True) @ aty


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


def force_rms(dataset) -> float:
    """Root mean square of all force components (eV/Å): the model's energy scale."""
    cols = dataset.frame_columns()
    n = float(3 * cols["n_atoms"][cols["has_forces"]].sum())
    return float(np.sqrt(cols["force_sq"][cols["has_forces"]].sum() / n)) if n else 1.0


def avg_num_neighbors(dataset, sample: int = 1000) -> float:
    """Edges per atom; from the stored counts, or from ``sample`` frames when they were counted at
    another cutoff."""
    cols = dataset.frame_columns()
    if cols["n_edges"] is not None:
        return max(float(cols["n_edges"].sum()) / float(cols["n_atoms"].sum()), 1.0)
    n = len(dataset)
    picked = range(n) if n <= sample else np.random.default_rng(0).choice(n, sample, replace=False)
    edges = atoms = 0
    for k in picked:
        graph = dataset[int(k)][0]
        edges += graph.edge_index.shape[1]
        atoms += graph.positions.shape[0]
    return max(edges / atoms, 1.0)


def shift_correction(model, dataset, indices: Sequence[int], batch_size: int = 32) -> np.ndarray:
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


def fingerprint(dataset) -> Dict[str, float]:
    """A summary of the frames of ``dataset`` (their number, atoms, sums of the energy labels and of the squared
    forces) that tells whether data read again are the same frames."""
    cols = dataset.frame_columns()
    return {"frames": int(len(cols["n_atoms"])), "atoms": int(np.sum(cols["n_atoms"])),
            "energy_sum": float(np.nansum(cols["energy"])), "force_sq_sum": float(np.sum(cols["force_sq"]))}


def same_fingerprint(a: Dict[str, float], b: Dict[str, float]) -> bool:
    return (a["frames"] == b["frames"] and a["atoms"] == b["atoms"]
            and all(abs(a[k] - b[k]) <= 1e-9 * max(abs(a[k]), abs(b[k]), 1e-12) for k in ("energy_sum", "force_sq_sum")))
