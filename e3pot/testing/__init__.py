"""One battery of physics checks for any model: the e3pot kinds, their compiled runtime, or your own.

:func:`check_model` runs the checks of :data:`CHECKS` on a model and returns an
:class:`~e3pot.audit.AuditReport` (one row per measured error against its tolerance, from
:mod:`e3pot.audit.tolerances`, looser in float32 than in float64):

- ``rotation``, ``rotoreflection``, ``translation``, ``permutation``: energy invariant, forces
  rotate and permute with the atoms, stress rotates as R σ Rᵀ (several random draws);
- ``finite differences``: every force component and the stress against finite differences of
  the model's energy;
- ``cutoff``: energy and forces continuous as a neighbour crosses ``r_max``;
- ``batch``: every structure in one batch equals each evaluated alone;
- ``additivity``: two molecules far apart equal the sum of each.

The checks are those of ``e3pot audit`` (:mod:`e3pot.audit`), run here in one dtype, each on its
own, and a check that finds nothing to measure (no neighbour crossing ``r_max``, no molecule for
``additivity``) fails with a note rather than passing unseen. :class:`ModelTests` turns the battery
into pytest tests. Models with a known flaw, to see a check fail, are in :mod:`e3pot.testing.flawed`;
tiny random models of every kind in :mod:`e3pot.testing.models`.

Checking a model of your own: a subclass of :class:`~e3pot.model.base.EnergyModel` whose
``forward(graph)`` returns per-atom energies (here a smooth pair potential)::

    import pytest
    import torch
    from e3pot.model.base import EnergyModel, default_dtype
    from e3pot.testing import ModelTests, check_model

    class PairModel(EnergyModel):
        kind = "pair"

        def __init__(self, atomic_numbers, r_max=3.5):
            super().__init__()
            with default_dtype(torch.float64):
                self._init_species(atomic_numbers, r_max, None, 1.0, {})
                self.depth = torch.nn.Parameter(torch.full((len(atomic_numbers),), 0.3))

        def forward(self, graph):
            sender, receiver = graph.edge_index
            vec = graph.positions[sender] - graph.positions[receiver] + graph.edge_shift
            u = 1 - torch.linalg.vector_norm(vec, dim=-1) / self.r_max  # vanishes smoothly at r_max
            pair = self.depth[graph.species[sender]] * self.depth[graph.species[receiver]] * (u ** 4 - u ** 3)
            energy = torch.zeros(graph.positions.shape[0], dtype=pair.dtype).index_add(0, receiver, pair)
            return self.scale_shift(energy, graph.species)

then::

    report = check_model(PairModel([1, 6, 8]), dtype="float64")
    assert report.passed, report.table()

or, in a test file, one test per check and dtype (``pytest -k 'TestPairModel and cutoff'``)::

    class TestPairModel(ModelTests):
        @pytest.fixture(scope="class")
        def model(self):
            return PairModel([1, 6, 8])

Override the ``dtype`` fixture to run one dtype only, ``structures`` to check your own systems
(``ase.Atoms`` or ``(name, atoms)`` pairs), and ``expected_failures`` with the checks your model
fails by design (they must then fail: a Cartesian model that turns out rotation-invariant is as
wrong as it claims not to be).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from e3pot.audit.consistency import additivity_checks, batch_checks
from e3pot.audit.derivatives import derivative_checks
from e3pot.audit.report import AuditReport, Check
from e3pot.audit.smoothness import pull_targets, smoothness_checks
from e3pot.audit.structures import builtin, checked
from e3pot.audit.subject import Subject, guarded
from e3pot.audit.symmetry import KINDS as SYMMETRIES, symmetry_checks
from e3pot.model.io import dtype_from_name
from e3pot.testing.models import random_model

__all__ = ["CHECKS", "check_model", "failed_checks", "ModelTests", "random_model", "AuditReport", "Check"]

CHECKS = (*SYMMETRIES, "finite differences", "cutoff", "batch", "additivity")

NOTHING_MEASURED = {
    "cutoff": "no neighbour crosses r_max as an atom is pulled out of the molecules",
    "additivity": "no molecule among the structures",
}


def check_model(model, structures: Optional[Sequence] = None, dtype: str = "float64",
                checks: Iterable[str] = CHECKS, seed: int = 0, max_structures: int = 3) -> AuditReport:
    """Run ``checks`` (names of :data:`CHECKS`) on ``model`` in ``dtype``, on ``structures``.

    ``model``: anything :func:`~e3pot.model.runtime.load_any` takes (a module with the model contract,
    a compiled model, a model file, a TorchScript export); a model in another dtype is checked on a
    cast copy. ``structures``: ``ase.Atoms`` or ``(name, atoms)`` pairs, the first ``max_structures``
    used (default: built-in molecules of the model's elements and a small periodic cell). Random draws
    follow ``seed``.

    Raises ValueError for an unknown check or dtype, or a model that cannot run in ``dtype`` (a
    TorchScript export, a compiled model), and :class:`~e3pot.data.io.DataError` for a structure the
    model cannot evaluate.
    """
    checks = list(dict.fromkeys(checks))
    unknown = [c for c in checks if c not in CHECKS]
    if unknown or not checks:
        raise ValueError(f"unknown checks {unknown}; choose among {', '.join(CHECKS)}" if unknown else "no checks")
    dtype_from_name(dtype)
    subject = Subject(model, compute_stress=True)
    if subject.model(dtype) is None:
        raise ValueError(f"the model cannot run in {dtype}: {subject.refused[dtype]}")
    if structures is None:
        structures = builtin(subject.atomic_numbers, max_structures, seed)
    named = checked(subject, structures, max_structures)
    report = AuditReport(subject.name)
    for index, check in enumerate(CHECKS):  # in a fixed order, each with its own random stream
        if check in checks:
            rows = _run(check, subject, named, dtype, lambda k: np.random.default_rng([seed, index, k]))
            if not rows:
                rows = [Check(f"{check}: nothing measured", "-", dtype, float("nan"), 0.0, "-",
                              NOTHING_MEASURED.get(check, "no structure to check"))]
            report.checks += rows
    return report


def _run(check: str, subject: Subject, named, dtype: str, rng: Callable[[int], np.random.Generator]) -> List[Check]:
    out: List[Check] = []
    if check in SYMMETRIES:
        for k, (name, atoms) in enumerate(named):
            out += guarded(check, name, dtype, lambda: symmetry_checks(subject, name, atoms, dtype, rng(k), (check,)))
    elif check == "finite differences":
        for k, (name, atoms) in enumerate(named):
            out += guarded(check, name, dtype, lambda: derivative_checks(subject, name, atoms, dtype, rng(k), None))
    elif check == "cutoff":
        for name, atoms in pull_targets(named, subject):
            out += guarded(check, name, dtype, lambda: smoothness_checks(subject, name, atoms, dtype))
    elif check == "batch":
        out += guarded(check, "all", dtype, lambda: batch_checks(subject, named, dtype))
    else:
        out += guarded(check, "molecules", dtype, lambda: additivity_checks(subject, named, dtype))
    return out


def failed_checks(report: AuditReport) -> Dict[str, List[Check]]:
    """The failed rows of ``report`` by check (the part of a row's name before the colon)."""
    out: Dict[str, List[Check]] = {}
    for c in report.failed:
        out.setdefault(c.name.split(":")[0], []).append(c)
    return out


def __getattr__(name: str):
    if name == "ModelTests":  # needs pytest, which a user of check_model alone may not have
        from e3pot.testing.suite import ModelTests

        return ModelTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
