"""Saved models are data: a state dict plus plain metadata, loadable with ``weights_only=True``."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from e3pot.model.base import EnergyModel

FORMAT = "e3pot-model"
FORMAT_VERSION = 2  # 2: fused edge convolution (parameter layout of format 1 no longer loads)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def save_model(model: EnergyModel, path: str, metadata: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` to ``path``; returns the path. ``metadata`` must hold plain values only."""
    from e3pot import __version__

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "e3pot_version": __version__,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "atomic_numbers": list(model.atomic_numbers),
        "r_max": model.r_max,
        "units": {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å^3"},
        "dtype": dtype_name(model.dtype),
        "metadata": dict(metadata or {}),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written model behind
    return path


def read_model_file(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not an e3pot model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an e3pot model file")
    if payload["format_version"] > FORMAT_VERSION:
        raise ValueError(f"{path}: model format {payload['format_version']} is newer than this e3pot "
                         f"understands ({FORMAT_VERSION}); upgrade e3pot")
    if payload["format_version"] < FORMAT_VERSION:
        raise ValueError(f"{path}: model format {payload['format_version']} (written by e3pot "
                         f"{payload.get('e3pot_version', '?')}) is older than this e3pot reads ({FORMAT_VERSION}); "
                         "retrain the model with this version")
    return payload


def load_model(path: str, device: str | torch.device = "cpu", dtype: Optional[str | torch.dtype] = None) -> EnergyModel:
    """Load a model file written by :func:`save_model` (no training code, no pickled modules).

    The model comes back in eval mode, in the dtype it was trained in unless ``dtype`` is given.
    Its ``metadata`` attribute holds what was stored with it (e.g. validation metrics).
    """
    from e3pot.model.kinds import build_model

    payload = read_model_file(path)
    model = build_model(payload["config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the model described in the file ({exc})") from None
    if dtype is None:
        dtype = payload["dtype"]
    model = model.to(device=device, dtype=dtype_from_name(dtype) if isinstance(dtype, str) else dtype)
    model.metadata = payload["metadata"]
    return model.eval()
