"""Batching and locality: a structure evaluated in a batch with others equals itself evaluated alone
(nothing leaks between the structures of a batch), and two molecules far apart, as one structure,
equal the sum of each alone (the energy is extensive: no term reads the whole structure)."""
from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from ase import Atoms

from e3pot.audit import tolerances as tol
from e3pot.audit.report import Check
from e3pot.audit.subject import relative

Named = Tuple[str, Atoms]


def _errors(got: dict, want: dict, n_atoms: int) -> Dict[str, float]:
    """Energy per atom (eV), forces and, where the reference has one, stress (relative)."""
    errors = {"energy": abs(got["energy"] - want["energy"]) / n_atoms,
              "forces": relative(got["forces"] - want["forces"], want["forces"], tol.FORCE_FLOOR * np.sqrt(n_atoms))}
    if "stress" in want:
        errors["stress"] = relative(got.get("stress", np.nan) - want["stress"], want["stress"], tol.STRESS_FLOOR)
    return errors


def _rows(group: str, structure: str, dtype: str, worst: Dict[str, float], note: str) -> Iterator[Check]:
    for quantity, error in worst.items():
        yield Check(f"{group}: {quantity}", structure, dtype, error, tol.CONSISTENCY[quantity][dtype],
                    "eV/atom" if quantity == "energy" else "relative", note)


def batch_checks(subject, named: Sequence[Named], dtype: str) -> Iterator[Check]:
    """All structures in one batch against each alone: the largest error over the structures. A single
    structure is batched with a copy of itself, so that a batch is always exercised."""
    structures: List[Atoms] = [a for _, a in named]
    if len(structures) == 1:
        structures = structures * 2
    together = subject.predict(dtype, structures, batch_size=len(structures))
    alone = subject.predict(dtype, structures, batch_size=1)
    worst: Dict[str, float] = {}
    for atoms, got, want in zip(structures, together, alone):
        for quantity, e in _errors(got, want, len(atoms)).items():
            worst[quantity] = max(worst.get(quantity, 0.0), e) if np.isfinite(e) else float("nan")
    yield from _rows("batch", f"{len(structures)} structures in one batch", dtype, worst,
                     "each structure alone against all in one batch")


def far_apart(a: Atoms, b: Atoms, r_max: float) -> Atoms:
    """``b`` moved along x so that its atoms are ``r_max + ADDITIVITY_GAP`` beyond the farthest of ``a``."""
    moved = b.copy()
    moved.positions[:, 0] += a.positions[:, 0].max() - b.positions[:, 0].min() + r_max + tol.ADDITIVITY_GAP
    return moved


def additivity_checks(subject, named: Sequence[Named], dtype: str) -> Iterator[Check]:
    """The first two molecules (or the first twice) far apart, as one structure, against the sum of each
    (the three in one batch; batches are the batch check's business): energy per atom, and forces.
    Nothing when ``named`` holds no molecule."""
    molecules = [(n, a) for n, a in named if not a.pbc.any()]
    if not molecules:
        return
    (name_a, a), (name_b, b) = molecules[0], molecules[min(1, len(molecules) - 1)]
    b = far_apart(a, b, subject.r_max)
    pair = Atoms(np.concatenate([a.numbers, b.numbers]), positions=np.concatenate([a.positions, b.positions]))
    p_a, p_b, p_pair = subject.predict(dtype, [a, b, pair], batch_size=3)
    summed = {"energy": p_a["energy"] + p_b["energy"], "forces": np.concatenate([p_a["forces"], p_b["forces"]])}
    yield from _rows("additivity", f"{name_a} + {name_b}", dtype, _errors(p_pair, summed, len(pair)),
                     f"{tol.ADDITIVITY_GAP:g} Å beyond r_max apart, against each on its own")
