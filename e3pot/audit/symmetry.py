"""E(3) and permutation symmetry: energy invariant, forces rotate and permute with the atoms, stress
rotates as R sigma R^T (the cell is rotated with the atoms)."""
from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import numpy as np
from ase import Atoms

from e3pot.audit import tolerances as tol
from e3pot.audit.report import Check
from e3pot.audit.subject import relative

KINDS = ("rotation", "rotoreflection", "translation", "permutation")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A proper rotation (det +1), uniform over SO(3): QR of a Gaussian matrix with a sign fix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def transform(atoms: Atoms, kind: str, rng: np.random.Generator) -> Tuple[Atoms, np.ndarray, np.ndarray]:
    """(transformed copy, R, perm): positions ``x[perm] @ R.T + t``, the cell ``cell @ R.T``."""
    R, perm, shift = np.eye(3), np.arange(len(atoms)), np.zeros(3)
    if kind == "rotation":
        R = random_rotation(rng)
    elif kind == "rotoreflection":
        R = -random_rotation(rng)  # inversion times a rotation: any improper orthogonal matrix
    elif kind == "translation":
        shift = rng.uniform(-10.0, 10.0, size=3)
    else:
        perm = rng.permutation(len(atoms))
    out = Atoms(atoms.numbers[perm], positions=atoms.positions[perm] @ R.T + shift, cell=atoms.cell.array @ R.T,
                pbc=atoms.pbc)
    if atoms.pbc.any():
        out.wrap()  # atoms re-enter the cell through its faces: periodic images are exercised too
    return out, R, perm


def symmetry_checks(subject, name: str, atoms: Atoms, dtype: str, rng: np.random.Generator,
                    kinds: Sequence[str] = KINDS) -> Iterator[Check]:
    """For each kind of transformation in ``kinds`` (of :data:`KINDS`), the largest error of energy, forces
    (and stress) over :data:`~e3pot.audit.tolerances.DRAWS` random draws."""
    draws: List[Tuple[str, np.ndarray, np.ndarray]] = []
    copies = [atoms]
    for kind in kinds:
        for _ in range(tol.DRAWS):
            moved, R, perm = transform(atoms, kind, rng)
            copies.append(moved)
            draws.append((kind, R, perm))
    ref, *preds = subject.predict(dtype, copies)
    n = len(atoms)
    f_floor = tol.FORCE_FLOOR * np.sqrt(n)
    worst = {}
    for (kind, R, perm), p in zip(draws, preds):
        errors = {
            "energy": abs(p["energy"] - ref["energy"]) / n,
            "forces": relative(p["forces"] - ref["forces"][perm] @ R.T, ref["forces"], f_floor),
        }
        if "stress" in ref:
            errors["stress"] = relative(p.get("stress", np.nan) - R @ ref["stress"] @ R.T, ref["stress"],
                                        tol.STRESS_FLOOR)
        for quantity, e in errors.items():
            key = (kind, quantity)
            worst[key] = max(worst.get(key, 0.0), e) if np.isfinite(e) else float("nan")
    for (kind, quantity), error in worst.items():
        yield Check(f"{kind}: {quantity}", name, dtype, error, tol.SYMMETRY[quantity][dtype],
                    "eV/atom" if quantity == "energy" else "relative")
