"""Saved models are data: a state dict plus plain metadata, loadable with ``weights_only=True``."""
from __future__ import annotations

import os
import pickle
import re
import shlex
import zipfile
from typing import Any, Dict, List, Optional

import torch

from e3pot.files import atomic_output
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
    with atomic_output(path) as tmp:  # complete or not at all; an existing file is replaced
        torch.save(payload, tmp)
    return path


def _zip_names(path: str) -> Optional[List[str]]:
    """The entries of a zip archive (torch.save and TorchScript both write one); None for other files."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return None


def _inner(names: List[str]) -> List[str]:
    """Entry names without the archive's top folder (``archive/code/...`` -> ``code/...``)."""
    return [n.split("/", 1)[1] for n in names if "/" in n]


def is_checkpoint(payload: Any) -> bool:
    """A PyTorch Lightning checkpoint (``last.ckpt``, ``best-*.ckpt`` of a training run)."""
    return isinstance(payload, dict) and "state_dict" in payload and "pytorch-lightning_version" in payload


def _checkpoint_message(path: str) -> str:
    return (f"{path} is a training checkpoint, not a model file; write a model file from it with: "
            f"e3pot export-checkpoint {shlex.quote(path)} -o model.pt")


def _pickled_checkpoint(path: str, names: Optional[List[str]]) -> bool:
    """A Lightning checkpoint that does not load as plain data, recognised without unpickling it."""
    pickles = [n for n in names or [] if n.endswith("/data.pkl")]
    if not pickles:
        return False
    try:
        with zipfile.ZipFile(path) as zf, zf.open(pickles[0]) as fh:
            return b"pytorch-lightning_version" in fh.read(1 << 24)
    except (OSError, zipfile.BadZipFile):
        return False


def read_model_file(path: str) -> Dict[str, Any]:
    """The contents of a model file written by :func:`save_model`, read as plain data (no code runs).

    Anything else gets a message saying what the file is and what to do instead: a TorchScript export,
    a training checkpoint, another PyTorch file, a folder.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if os.path.isdir(path):
        from e3pot.data.store import is_store

        what = "a data store made by e3pot preprocess" if is_store(path) else "a folder"
        raise ValueError(f"{path} is {what}, not a model file; give the model file written by training (model.pt)")
    names = _zip_names(path)
    inner = _inner(names or [])
    if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
        if any(n == "extra/metadata.json" for n in inner):
            raise ValueError(f"{path} is a TorchScript export made by e3pot export, not a model file; export from "
                             "(or use) the model file (model.pt) it was made from")
        raise ValueError(f"{path} is a TorchScript archive, not an e3pot model file; give the model file written "
                         "by training (model.pt)")
    if any(n.startswith("data/aotinductor/") for n in inner):
        models = {n.split("/")[2] for n in inner if n.count("/") >= 3 and n.startswith("data/aotinductor/")}
        if {"forces", "local_energy"} <= models:
            raise ValueError(f"{path} is an AOTInductor package made by e3pot export --format aoti, not a model file; "
                             "export from (or use) the model file (model.pt) it was made from")
        raise ValueError(f"{path} is an AOTInductor package (.pt2), not an e3pot model file; give the model file "
                         "written by training (model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure says what the file is
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and ("GLOBAL" in text or names is not None):
            if _pickled_checkpoint(path, names):
                raise ValueError(_checkpoint_message(path)) from None
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise ValueError(f"{path} is a PyTorch file but not an e3pot model file: it holds pickled Python "
                             f"objects{what}, which e3pot never loads (loading them could run any code); give the "
                             "model file written by training (model.pt)") from None
        what = f"a damaged PyTorch file ({type(exc).__name__})" if names is not None else "not a PyTorch file"
        raise ValueError(f"{path} is not an e3pot model file: it is {what}; give the model file written by "
                         "training (model.pt)") from None
    if is_checkpoint(payload):
        raise ValueError(_checkpoint_message(path))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is a PyTorch file but not an e3pot model file (it has no 'format': "
                         f"'{FORMAT}' entry); give the model file written by training (model.pt)")
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
