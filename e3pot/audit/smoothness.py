"""Continuity where a neighbour crosses the cutoff: one atom is pulled outward, away from the rest of a
molecule, and at every distance where it crosses r_max of another atom, energy and forces are
extrapolated linearly from either side to the crossing. The two extrapolations agree to ~step^2 for a
continuous function; a jump J at the crossing leaves J however small the step."""
from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from e3pot.audit import tolerances as tol
from e3pot.audit.report import Check

OFFSETS = (-2, -1, 1, 2)  # in steps either side of a crossing
CLOSEST = 0.7  # Å: crossings where the pulled atom comes closer than this to another atom are skipped


def pull_direction(atoms: Atoms) -> Tuple[int, np.ndarray]:
    """The atom farthest from the centroid and the unit vector pointing outward from the centroid to it."""
    centroid = atoms.positions.mean(axis=0)
    out = atoms.positions - centroid
    a = int(np.argmax(np.linalg.norm(out, axis=1)))
    norm = np.linalg.norm(out[a])
    return a, (out[a] / norm if norm > 1e-8 else np.array([1.0, 0.0, 0.0]))


def crossings(atoms: Atoms, a: int, u: np.ndarray, r_max: float, step: float) -> List[float]:
    """Pull distances s > 0 at which atom ``a`` moved to ``x_a + s u`` is exactly r_max from another atom,
    the last ones first (where the atom leaves its neighbours), at most MAX_CROSSINGS. Crossings closer
    than 4 steps to another are dropped: their windows would overlap."""
    d = atoms.positions[a] - np.delete(atoms.positions, a, axis=0)  # (n - 1, 3)
    b = d @ u
    disc = b ** 2 - np.einsum("ij,ij->i", d, d) + r_max ** 2  # |d + s u|^2 = r_max^2, a quadratic in s
    hit = disc > 0
    both = np.concatenate([-b[hit] - np.sqrt(disc[hit]), -b[hit] + np.sqrt(disc[hit])])
    roots = sorted(float(s) for s in both if s > 4 * step)
    isolated = [s for k, s in enumerate(roots)
                if (k == 0 or s - roots[k - 1] > 4 * step) and (k == len(roots) - 1 or roots[k + 1] - s > 4 * step)]
    clear = [s for s in isolated if np.linalg.norm(d + s * u, axis=1).min() > CLOSEST]
    return sorted(clear, reverse=True)[:tol.MAX_CROSSINGS]


def smoothness_checks(subject, name: str, atoms: Atoms, dtype: str) -> Iterator[Check]:
    step = tol.SMOOTH_STEP[dtype]
    a, u = pull_direction(atoms)
    found = crossings(atoms, a, u, subject.r_max, step)
    if not found:
        return
    copies = []
    for s in found:
        for k in OFFSETS:
            moved = atoms.copy()
            moved.positions[a] += (s + k * step) * u
            copies.append(moved)
    preds = subject.predict(dtype, copies)
    energy_jump, force_jump = 0.0, 0.0
    for c in range(len(found)):
        e = [preds[4 * c + m]["energy"] for m in range(4)]
        f = [preds[4 * c + m]["forces"] for m in range(4)]
        energy_jump = max(energy_jump, abs((2 * e[1] - e[0]) - (2 * e[2] - e[3])))
        force_jump = max(force_jump, float(np.abs((2 * f[1] - f[0]) - (2 * f[2] - f[3])).max()))
    note = f"atom {a} pulled through {len(found)} crossings of r_max = {subject.r_max:g} Å, step {step:g} Å"
    yield Check("cutoff: energy jump", name, dtype, energy_jump, tol.SMOOTH["energy"][dtype], "eV", note)
    yield Check("cutoff: force jump", name, dtype, force_jump, tol.SMOOTH["forces"][dtype], "eV/Å", note)


def pull_targets(named: Sequence[Tuple[str, Atoms]], subject) -> Iterator[Tuple[str, Atoms]]:
    """The molecules of ``named`` (an atom pulled out of a periodic cell would meet its own images), or a
    dimer of the model's first elements when there are none."""
    molecules = [(n, a) for n, a in named if not a.pbc.any() and len(a) > 1]
    if molecules:
        yield from molecules
        return
    z = subject.atomic_numbers[:2] * (2 if len(subject.atomic_numbers) == 1 else 1)
    bond = 1.1 * float(covalent_radii[z[0]] + covalent_radii[z[1]])
    distance = min(max(0.5 * subject.r_max, bond), 0.9 * subject.r_max)
    yield f"dimer {Atoms(z).get_chemical_formula()} (built-in)", Atoms(z, positions=[[0, 0, 0], [distance, 0, 0]])
