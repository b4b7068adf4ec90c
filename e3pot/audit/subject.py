"""The model under audit: loaded once per dtype it can run in, and evaluated on lists of structures.

Only :func:`~e3pot.model.runtime.load_any` and :func:`~e3pot.predict.predict` (which runs
:func:`~e3pot.model.runtime.run_model`) touch the model, so whatever they accept can be audited:
a model file, a TorchScript export, or a loaded module with the model contract
(``forward(graph) -> per-atom energies`` and ``atomic_numbers``, ``r_max``, ``dtype``).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from e3pot.model.io import dtype_name
from e3pot.audit.report import Check
from e3pot.model.runtime import NonFiniteError, load_any
from e3pot.predict import predict


class Subject:
    """The model of an audit. ``model`` is anything :func:`load_any` takes.

    ``compute_stress``: as :func:`~e3pot.predict.predict` (None: for periodic structures only). True
    makes every call compute the strain derivative, so that a compiled model runs one kind of call
    for molecules and cells alike (and compiles it once).

    Raises what :func:`load_any` raises for a missing or unreadable model file.
    """

    def __init__(self, model, compute_stress: Optional[bool] = None):
        native = load_any(model)
        self.source = model
        self.name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
        self.atomic_numbers: List[int] = [int(z) for z in native.atomic_numbers]
        self.r_max = float(native.r_max)
        self.native = dtype_name(native.dtype)
        self._loaded = {self.native: native}
        self.refused: Dict[str, str] = {}  # dtype -> why the model cannot run in it
        self.compute_stress = compute_stress

    def model(self, dtype: str):
        """The model cast to ``dtype``, or None when it cannot be cast (a TorchScript export, for one)."""
        if dtype not in self._loaded and dtype not in self.refused:
            try:
                self._loaded[dtype] = load_any(self.source, dtype=dtype)
            except ValueError as exc:
                self.refused[dtype] = str(exc)
        return self._loaded.get(dtype)

    @property
    def precise(self) -> str:
        """float64 when the model can run in it, else its own dtype: for derivatives, cutoffs and MD."""
        return "float64" if self.model("float64") is not None else self.native

    def predict(self, dtype: str, structures: Sequence, batch_size: int = 16) -> List[dict]:
        """``energy`` (eV), ``forces`` (eV/Å), per-atom ``energies`` and, for periodic cells, ``stress``
        (3x3, eV/Å^3) per structure, in batches of at most ``batch_size`` structures and of sizes that
        differ by one at most, so that a long list does not end in a batch of one structure (a compiled
        model would compile that kind of call too)."""
        structures = list(structures)
        n_batches = -(-len(structures) // batch_size)
        even = -(-len(structures) // max(n_batches, 1))
        return predict(self.model(dtype), structures, batch_size=max(even, 1), compute_stress=self.compute_stress)


def relative(error, reference, floor: float) -> float:
    """|error| / max(|reference|, floor) with Frobenius norms; ``floor`` guards a reference near zero."""
    return float(np.linalg.norm(error) / max(float(np.linalg.norm(reference)), floor))


def guarded(group: str, name: str, dtype: str, run: Callable[[], Iterable[Check]]) -> List[Check]:
    """The checks of ``run``, or one failed check when the model returned NaN or infinity on the way."""
    try:
        return list(run())
    except NonFiniteError as exc:
        return [Check(f"{group}: evaluation", name, dtype, float("nan"), 0.0, "-", str(exc))]
