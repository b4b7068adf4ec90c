"""A check of a trained model's physics that a user can run: ``audit(model)`` or ``e3pot audit MODEL``.

Each check measures an error and compares it with a tolerance (:mod:`e3pot.audit.tolerances`):

- symmetry (every dtype asked for): rotations, rotoreflections, translations, permutations of atoms;
- derivatives (float64): forces and stress against finite differences of the energy;
- smoothness (float64): energy and forces where a neighbour crosses the cutoff;
- conservation (float64): drift and fluctuation of the total energy in a short NVE run.

A model that cannot be cast (a TorchScript export) runs in its own dtype only, with that dtype's
tolerances; the report's notes say what was skipped.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from e3pot.audit.conservation import conservation_checks
from e3pot.audit.derivatives import derivative_checks
from e3pot.audit.report import AuditReport, Check
from e3pot.audit.smoothness import pull_targets, smoothness_checks
from e3pot.audit.structures import builtin, checked
from e3pot.audit.subject import Subject, guarded
from e3pot.audit.symmetry import symmetry_checks
from e3pot.model.io import dtype_from_name

__all__ = ["audit", "AuditReport", "Check"]


def audit(model, structures: Optional[Sequence] = None, dtypes: Sequence[str] = ("float32", "float64"),
          nve_steps: int = 200, seed: int = 0, max_structures: int = 4,
          progress: Optional[Callable[[str], None]] = None) -> AuditReport:
    """Audit ``model`` (a model file, a TorchScript export or a loaded model: anything
    :func:`~e3pot.model.runtime.load_any` takes) on ``structures`` (``ase.Atoms`` or ``(name, atoms)``
    pairs; default: built-in molecules and a periodic cell made of the model's elements).

    Only the first ``max_structures`` structures are used. ``nve_steps=0`` skips the MD run. Random
    draws (transformations, components, velocities) follow ``seed``. ``progress`` is called with a
    line before each piece of work.

    Raises :class:`~e3pot.data.io.DataError` naming a structure the model cannot evaluate (an element
    it does not know, overlapping atoms), ``ValueError`` or ``FileNotFoundError`` for a bad model.
    """
    for name in dtypes:
        dtype_from_name(name)  # an unknown name raises here, before any work
    if isinstance(nve_steps, bool) or not isinstance(nve_steps, int) or nve_steps < 0:
        raise ValueError(f"nve_steps must be a non-negative integer, got {nve_steps!r}")
    if isinstance(max_structures, bool) or not isinstance(max_structures, int) or max_structures < 1:
        raise ValueError(f"max_structures must be a positive integer, got {max_structures!r}")
    say = progress or (lambda line: None)
    subject = Subject(model)
    if structures is None:
        structures = builtin(subject.atomic_numbers, max_structures, seed)
    named = checked(subject, structures, max_structures)
    report = AuditReport(subject.name)
    runnable = [d for d in dict.fromkeys(dtypes) if subject.model(d) is not None]
    precise = subject.precise
    for d, why in subject.refused.items():
        report.notes.append(f"{d} not checked: {why}")

    def rng(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, *key])  # one stream per check: adding one changes no other

    for k, (name, atoms) in enumerate(named):
        for d in runnable:  # the same draws in every dtype, so that their rows compare
            say(f"symmetry: {name}, {d}")
            report.checks += guarded("symmetry", name, d, lambda: symmetry_checks(subject, name, atoms, d, rng(k, 0)))
    for k, (name, atoms) in enumerate(named):
        say(f"finite differences: {name}, {precise}")
        report.checks += guarded("finite differences", name, precise,
                                 lambda: derivative_checks(subject, name, atoms, precise, rng(k, 1)))
    measured = len(report.checks)
    for name, atoms in pull_targets(named, subject):
        say(f"cutoff: {name}, {precise}")
        report.checks += guarded("cutoff", name, precise, lambda: smoothness_checks(subject, name, atoms, precise))
    if len(report.checks) == measured:
        report.notes.append("cutoff not checked: no neighbour crosses r_max as an atom is pulled out of the molecules")
    if nve_steps > 0:
        k = next((k for k, (_, a) in enumerate(named) if not a.pbc.any()), 0)  # a molecule if there is one
        name, atoms = named[k]
        say(f"NVE: {nve_steps} steps, {name}, {precise}")
        report.checks += list(conservation_checks(subject, name, atoms, nve_steps, rng(k, 2)))
    return report
