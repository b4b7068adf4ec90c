"""Loading any kind of model for inference, and running it on a graph."""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch

from e3pot.model.export import ExportedModel, is_torchscript
from e3pot.model.forces import evaluate
from e3pot.model.io import dtype_from_name, load_model


def load_any(model: Union[str, torch.nn.Module, ExportedModel], device: str = "cpu", dtype: Optional[str] = None):
    """A model file, a TorchScript export, or an already loaded model, on ``device`` in ``dtype``."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available to torch {torch.__version__} "
                         f"(a CPU build, or no GPU visible); use device 'cpu'")
    if isinstance(model, str):
        if is_torchscript(model):
            model = ExportedModel(model, device=device)
        else:
            return load_model(model, device=device, dtype=dtype)
    if isinstance(model, ExportedModel):
        if dtype is not None and dtype_from_name(dtype) != model.dtype:
            raise ValueError(f"the exported model runs in {model.dtype}, not {dtype}; export it again in {dtype}")
        return model
    target = model.dtype if dtype is None else dtype_from_name(dtype)
    if target != model.dtype or model_device(model) != torch.device(device):
        # a copy: nn.Module.to() works in place, and the caller's model (or another calculator
        # sharing it) must keep its own dtype and device
        model = copy.deepcopy(model).to(device=device, dtype=target)
    return model.eval()


def model_device(model) -> torch.device:
    if isinstance(model, ExportedModel):
        return model.device
    return next(model.parameters()).device


def run_model(model, graph, compute_stress: bool):
    """(energy, forces, stress, atomic_energies) from an eager model or an exported one."""
    if isinstance(model, ExportedModel):
        return model(graph, compute_stress)
    return tuple(evaluate(model, graph, compute_stress=compute_stress))
