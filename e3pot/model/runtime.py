"""Loading any kind of model for inference, and running it on a graph."""
from __future__ import annotations

import copy
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from e3pot.model.export import ExportedModel, is_torchscript
from e3pot.model.forces import evaluate
from e3pot.model.io import dtype_from_name, load_model


class NonFiniteError(ValueError):
    """The model returned NaN or infinite energies or forces for a structure."""


def check_finite(energy: Tensor, forces: Tensor, batch: Tensor, names: Sequence[str]) -> None:
    """Raise :class:`NonFiniteError` naming the structures of a batch whose energy or forces are not finite."""
    bad = ~torch.isfinite(energy.detach())
    bad_atoms = ~torch.isfinite(forces.detach()).all(dim=1)
    if bool(bad_atoms.any()):
        bad[batch[bad_atoms]] = True
    if bool(bad.any()):
        which = [names[k] for k in torch.nonzero(bad).flatten().tolist()]
        raise NonFiniteError(f"{'; '.join(which[:5])}{f' and {len(which) - 5} more' if len(which) > 5 else ''}: "
                             "the model returned NaN or infinite energy or forces (a structure far outside "
                             "the training data, or a damaged model file)")


DEVICE_CHOICES = "'cpu', 'cuda' or 'cuda:N' (N: the index of a GPU)"


def check_device(device: Union[str, torch.device]) -> torch.device:
    """``device`` as a :class:`torch.device`; ValueError naming it and the choices when torch does not know
    it, or when it asks for a GPU that torch cannot use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use {DEVICE_CHOICES}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available to torch {torch.__version__} "
                             f"(a CPU build, or no GPU visible); use device 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r} asked for, but torch sees {count} GPU{'s' if count != 1 else ''} "
                             f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); use {DEVICE_CHOICES}")
    return dev


def load_any(model: Union[str, os.PathLike, torch.nn.Module, ExportedModel], device: str = "cpu",
             dtype: Optional[str] = None, compile: bool = False):
    """A model file, a TorchScript export, or an already loaded model, on ``device`` in ``dtype``;
    with ``compile=True``, wrapped for the compiled path (:mod:`e3pot.model.compiled`).

    Raises ValueError for a device that torch does not know or cannot use, and for an
    ``E3POT_MEMORY_BUDGET`` that is not a positive number of GiB."""
    from e3pot.model.chunked import budget_from_env
    from e3pot.model.compiled import CompiledModel, compile_model

    check_device(device)
    budget_from_env()  # a bad value is reported before a model is loaded, not at the first large structure
    if isinstance(model, CompiledModel):
        if torch.device(device).type != model.device.type or (dtype is not None and dtype_from_name(dtype) != model.dtype):
            raise ValueError(f"this compiled model runs on {model.device} in {model.dtype}; compile the model "
                             f"again for {device} {dtype or ''}".rstrip())
        return model
    if compile:
        loaded = load_any(model, device=device, dtype=dtype)
        if isinstance(loaded, ExportedModel):
            raise ValueError("compile needs a model file (model.pt); a TorchScript export cannot be compiled")
        return compile_model(loaded)
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
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


def _is_compiled(model) -> bool:
    from e3pot.model.compiled import CompiledModel

    return isinstance(model, CompiledModel)


def model_device(model) -> torch.device:
    if isinstance(model, ExportedModel) or _is_compiled(model):
        return model.device
    return next(model.parameters()).device


def run_model(model, graph, compute_stress: bool, memory_budget: Optional[float] = None):
    """(energy, forces, stress, atomic_energies) from an eager model or an exported one, within
    ``memory_budget`` GiB (see :func:`e3pot.model.forces.evaluate`).

    Raises :class:`~e3pot.model.chunked.MemoryBudgetError` when the structure does not fit in the
    budget, or when the allocator fails (the budget was larger than the memory that was free); ValueError
    when ``memory_budget`` or ``E3POT_MEMORY_BUDGET`` is not a positive number of GiB. A budget given to a
    model kind that is never chunked (``egnn``) is ignored, with a warning the first time.
    """
    from e3pot.model.chunked import (MemoryBudgetError, chunked_evaluate, out_of_memory_message, plan,
                                     warn_if_not_chunkable)

    # a compiled model runs in one piece; a structure too large for that goes through the chunks
    # of its eager model
    eager = model.model if _is_compiled(model) else model
    try:
        chunk_edges = plan(eager, graph, compute_stress, memory_budget)  # checks the budget first
        warn_if_not_chunkable(eager, memory_budget, once=True)
        if chunk_edges is not None:
            return chunked_evaluate(eager, graph, compute_stress, chunk_edges)
        if isinstance(model, ExportedModel) or _is_compiled(model):
            return model(graph, compute_stress)
        return tuple(evaluate(model, graph, compute_stress=compute_stress, memory_budget=float("inf")))
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not isinstance(exc, torch.OutOfMemoryError) and "allocate memory" not in str(exc):
            raise
        raise MemoryBudgetError(out_of_memory_message(eager, graph, memory_budget)) from exc
