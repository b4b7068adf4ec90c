"""The model under audit: loaded once per dtype it can run in, and evaluated on lists of structures.

Only :func:`~e3pot.model.runtime.load_any` and :func:`~e3pot.predict.predict` (which runs
:func:`~e3pot.model.runtime.run_model`) touch the model, so whatever they accept can be audited:
a model file, a TorchScript export, or a loaded module with the model contract
(``forward(graph) -> per-atom energies`` and ``atomic_numbers``, ``r_max``, ``dtype``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from e3pot.model.io import dtype_name
from e3pot.model.runtime import load_any
from e3pot.predict import predict


class Subject:
    """The model of an audit. ``model`` is anything :func:`load_any` takes.

    Raises what :func:`load_any` raises for a missing or unreadable model file.
    """

    def __init__(self, model):
        native = load_any(model)
        self.source = model
        self.name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
        self.atomic_numbers: List[int] = [int(z) for z in native.atomic_numbers]
        self.r_max = float(native.r_max)
        self.native = dtype_name(native.dtype)
        self._loaded = {self.native: native}
        self.refused: Dict[str, str] = {}  # dtype -> why the model cannot run in it

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

    def predict(self, dtype: str, structures: Sequence) -> List[dict]:
        """``energy`` (eV), ``forces`` (eV/Å) and, for periodic cells, ``stress`` (3x3, eV/Å^3) per structure."""
        return predict(self.model(dtype), list(structures), batch_size=16)


def relative(error, reference, floor: float) -> float:
    """|error| / max(|reference|, floor) with Frobenius norms; ``floor`` guards a reference near zero."""
    return float(np.linalg.norm(error) / max(float(np.linalg.norm(reference)), floor))
