"""Loading any kind of model for inference, and running it on a graph: the one place that decides how.

A model is eager (an :class:`~e3pot.model.base.EnergyModel`), compiled
(:class:`~e3pot.model.compiled.CompiledModel`) or exported (:class:`~e3pot.model.export.ExportedModel`, or
an AOTInductor package: :class:`~e3pot.model.aoti.AotiModel`).
:func:`choose_path` decides, for a model and a graph, between

* ``direct``: the eager model in one piece (:func:`e3pot.model.forces.evaluate`);
* ``chunked``: chunks of receiving atoms within a memory budget (:mod:`e3pot.model.chunked`), for a
  structure too large for one piece, driving the eager model, a compiled model's eager model or an
  export's TorchScript one;
* ``compiled`` and ``exported``: the runtime's own call, in one piece.

:func:`evaluate` (``e3pot.evaluate``) and :func:`run_model` (calculator, predict, audit) both run what it
chose.
"""
from __future__ import annotations

import copy
import os
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from e3pot.data.graph import AtomicGraph
from e3pot.model import forces
from e3pot.model.aoti import AotiModel, is_aoti
from e3pot.model.base import Runtime
from e3pot.model.chunked import (MemoryBudgetError, budget_from_env, chunked_evaluate, out_of_memory_message, plan,
                                 warn_if_not_chunkable)
from e3pot.model.compiled import CompiledModel, compile_model
from e3pot.model.ensemble import Committee, Spread, spread
from e3pot.model.export import ExportedModel, is_torchscript
from e3pot.model.forces import Prediction
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


def load_any(model: Union[str, os.PathLike, torch.nn.Module, ExportedModel, Sequence], device: str = "cpu",
             dtype: Optional[str] = None, compile: bool = False):
    """A model file, a TorchScript export, an AOTInductor package (.pt2), or an already loaded model, on
    ``device`` in ``dtype``;
    with ``compile=True``, wrapped for the compiled path (:mod:`e3pot.model.compiled`). A list or tuple of
    models is a :class:`~e3pot.model.ensemble.Committee` of them (one model in a list is that model); a path
    with commas is one path (FileNotFoundError, saying so, when there is no such file).

    Raises ValueError for a device that torch does not know or cannot use, and for an
    ``E3POT_MEMORY_BUDGET`` that is not a positive number of GiB."""
    check_device(device)
    budget_from_env()  # a bad value is reported before a model is loaded, not at the first large structure
    if isinstance(model, (list, tuple)):
        if len(model) == 0:
            raise ValueError("no model given (an empty list)")
        if len(model) == 1:
            return load_any(model[0], device=device, dtype=dtype, compile=compile)
        return Committee(model, device=device, dtype=dtype, compile=compile)
    if isinstance(model, Committee):
        if model.device != torch.device(device) or (dtype is not None and dtype_from_name(dtype) != model.dtype):
            raise ValueError(f"this committee runs on {model.device} in {model.dtype}; make it again for {device} "
                             f"{dtype or ''}".rstrip())
        return model
    if isinstance(model, CompiledModel):
        if torch.device(device).type != model.device.type or (dtype is not None and dtype_from_name(dtype) != model.dtype):
            raise ValueError(f"this compiled model runs on {model.device} in {model.dtype}; compile the model "
                             f"again for {device} {dtype or ''}".rstrip())
        return model
    if compile:
        loaded = load_any(model, device=device, dtype=dtype)
        if isinstance(loaded, ExportedModel):
            raise ValueError("compile needs a model file (model.pt); a TorchScript export cannot be compiled")
        if isinstance(loaded, AotiModel):
            raise ValueError("compile needs a model file (model.pt); an AOTInductor package (.pt2) is compiled "
                             "already: use it without compile")
        return compile_model(loaded)
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        if "," in model and not os.path.exists(model):
            raise FileNotFoundError(f"no such model file: {model}; a committee is a list of models "
                                    f"({model.split(',')}), not one string with commas (commas "
                                    "separate committee members on the command line only)")
        if is_torchscript(model):
            model = ExportedModel(model, device=device)
        elif is_aoti(model):
            model = AotiModel(model, device=device)
        else:
            return load_model(model, device=device, dtype=dtype)
    if isinstance(model, (ExportedModel, AotiModel)):
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
    if isinstance(model, (Runtime, Committee)):
        return model.device
    return next(model.parameters()).device


DIRECT, CHUNKED, COMPILED, EXPORTED = "direct", "chunked", "compiled", "exported"


class Path(NamedTuple):
    """How a graph is evaluated: ``how`` is one of ``direct``, ``chunked``, ``compiled``, ``exported``;
    ``chunk_edges`` the edges per chunk of the chunked path (None otherwise)."""

    how: str
    chunk_edges: Optional[int] = None


def choose_path(model, graph: AtomicGraph, compute_stress: bool = False, memory_budget: Optional[float] = None,
                training: bool = False) -> Path:
    """How ``model`` (eager, compiled or exported) evaluates ``graph`` within ``memory_budget`` GiB (default:
    ``E3POT_MEMORY_BUDGET``, else :func:`~e3pot.model.chunked.default_budget`): in chunks when the one-piece
    evaluation would exceed the budget and the model can be chunked, else by its own path.

    Training (``training=True``: the graph of the derivatives is kept for a force loss) is always direct:
    its batches are small, and only the direct path keeps the double backward. Raises ValueError for a
    bad budget (also when it does not matter) and for training anything but an eager model, and
    :class:`~e3pot.model.chunked.MemoryBudgetError` when even the chunked path would exceed the budget."""
    if training:
        if isinstance(model, Runtime):
            raise ValueError(f"training needs an eager model, not a {type(model).__name__}")
        return Path(DIRECT)
    chunk_edges = plan(model, graph, compute_stress, memory_budget)  # checks the budget first
    if chunk_edges is not None:
        return Path(CHUNKED, chunk_edges)
    if isinstance(model, CompiledModel):
        return Path(COMPILED)
    if isinstance(model, (ExportedModel, AotiModel)):
        return Path(EXPORTED)
    return Path(DIRECT)


def _run(model, graph: AtomicGraph, compute_stress: bool, training: bool,
         path: Path) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    if path.how == CHUNKED:
        return chunked_evaluate(model, graph, compute_stress, path.chunk_edges)
    if path.how == DIRECT:
        return tuple(forces.evaluate(model, graph, compute_stress, training))
    return model(graph, compute_stress)


def evaluate(model, graph: AtomicGraph, compute_stress: bool = False, training: bool = False,
             memory_budget: Optional[float] = None) -> Prediction:
    """Energies, forces and, if asked, stress for a batch, from an eager, compiled or exported model, by the
    path :func:`choose_path` picks (``e3pot.evaluate``).

    ``training=True`` keeps the graph of the derivatives so that a loss on forces can be back-propagated
    (double backward; eager models only). ``memory_budget`` (GiB; default: see
    :func:`e3pot.model.chunked.default_budget`) bounds the memory of inference: a graph whose direct
    evaluation would exceed it is evaluated in chunks of receiving atoms, with the same result (see
    :mod:`e3pot.model.chunked`). A ``memory_budget`` or ``E3POT_MEMORY_BUDGET`` that is not a positive number
    of GiB is a ValueError, whatever the size of the graph.
    """
    if isinstance(model, Committee):
        if training:
            raise ValueError("training needs one eager model, not a committee")
        return Prediction(*model.spread(graph, compute_stress, memory_budget)[:4])
    path = choose_path(model, graph, compute_stress, memory_budget, training)
    return Prediction(*_run(model, graph, compute_stress, training, path))


def run_model(model, graph, compute_stress: bool, memory_budget: Optional[float] = None):
    """(energy, forces, stress, atomic_energies) from an eager, compiled or exported model, within
    ``memory_budget`` GiB, as :func:`evaluate` gives them.

    Raises :class:`~e3pot.model.chunked.MemoryBudgetError` when the structure does not fit in the
    budget, or when the allocator fails (the budget was larger than the memory that was free); ValueError
    when ``memory_budget`` or ``E3POT_MEMORY_BUDGET`` is not a positive number of GiB. A budget given to a
    model kind that is never chunked (``egnn``) is ignored, with a warning the first time.
    """
    if isinstance(model, Committee):  # each member runs here, by its own path
        return tuple(model.spread(graph, compute_stress, memory_budget)[:4])
    try:
        path = choose_path(model, graph, compute_stress, memory_budget)
        warn_if_not_chunkable(model, memory_budget, once=True)
        return tuple(_run(model, graph, compute_stress, False, path))
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not isinstance(exc, torch.OutOfMemoryError) and "allocate memory" not in str(exc):
            raise
        raise MemoryBudgetError(out_of_memory_message(model, graph, memory_budget)) from exc


def run_spread(model, graph: AtomicGraph, compute_stress: bool, memory_budget: Optional[float] = None) -> Spread:
    """The mean prediction and its spread (:class:`~e3pot.model.ensemble.Spread`) from a committee or a shallow
    ensemble, for calculator, predict and select alike; ValueError for a model without uncertainty."""
    try:
        return spread(model, graph, compute_stress, memory_budget)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not isinstance(exc, torch.OutOfMemoryError) and "allocate memory" not in str(exc):
            raise
        raise MemoryBudgetError(out_of_memory_message(model, graph, memory_budget)) from exc
