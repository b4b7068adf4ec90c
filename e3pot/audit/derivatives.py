"""Forces and stress against finite differences of the model's own energy: forces must be -dE/dR and
stress (1/V) dE/d(strain), whatever produced them."""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np
from ase import Atoms

from e3pot.audit import tolerances as tol
from e3pot.audit.report import Check
from e3pot.audit.subject import relative

STENCIL = ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12))  # f'(0) ~ sum(w f(k h)) / h


def derivative_checks(subject, name: str, atoms: Atoms, dtype: str, rng: np.random.Generator,
                      components: Optional[int] = tol.FD_COMPONENTS) -> Iterator[Check]:
    """Forces: ``components`` random (atom, direction) pairs (None: every one); stress: all six strains."""
    h, eta = tol.FD_STEP[dtype], tol.FD_STRAIN[dtype]
    n = len(atoms)
    count = 3 * n if components is None else min(components, 3 * n)
    picks = rng.choice(3 * n, size=count, replace=False)
    copies: List[Atoms] = [atoms]
    for flat in picks:
        for k, _ in STENCIL:
            moved = atoms.copy()
            moved.positions[flat // 3, flat % 3] += k * h
            copies.append(moved)
    has_stress = bool(atoms.pbc.any()) and atoms.cell.volume > 1e-10  # as e3pot.model.forces: a 2D cell has none
    strains = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)] if has_stress else []  # Voigt order
    for i, j in strains:
        for k, _ in STENCIL:
            eps = np.zeros((3, 3))
            eps[i, j] = eps[j, i] = k * eta if i == j else k * eta / 2  # symmetric strain, eps_ij + eps_ji = k eta
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            copies.append(strained)
    ref, *preds = subject.predict(dtype, copies)
    energies = np.array([p["energy"] for p in preds])
    weights = np.array([w for _, w in STENCIL])

    n_f = len(picks) * len(STENCIL)
    fd_forces = -(energies[:n_f].reshape(len(picks), len(STENCIL)) @ weights) / h
    autograd = ref["forces"].reshape(-1)[picks]
    floor = tol.FORCE_FLOOR * np.sqrt(len(picks))
    which = "all components" if len(picks) == 3 * n else f"{len(picks)} random components"
    yield Check("finite differences: forces", name, dtype, relative(autograd - fd_forces, autograd, floor),
                tol.FD["forces"][dtype], "relative", note=f"{which}, step {h:g} Å")
    if has_stress:
        fd_stress = (energies[n_f:].reshape(len(strains), len(STENCIL)) @ weights) / eta / atoms.get_volume()
        autograd = np.array([ref["stress"][i, j] for i, j in strains])
        error = relative(autograd - fd_stress, autograd, tol.STRESS_FLOOR)
        yield Check("finite differences: stress", name, dtype, error, tol.FD["stress"][dtype], "relative",
                    note=f"6 strain components, step {eta:g}")
