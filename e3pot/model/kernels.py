"""Kernel backends of the edge convolution: a runtime choice, never part of a model file.

============  ===========================================================================================
``kernels``   what runs the edge convolution of the ``e3`` and ``cartesian`` kinds
============  ===========================================================================================
``torch``     :class:`~e3pot.nn.tensor_product.EdgeTensorProductScatter`: dense torch operations (default
              of a model built or loaded).
``cueq``      :class:`~e3pot.nn.cueq.CueqEdgeConvolution`: cuEquivariance's fused gather, tensor product
              and scatter; its CUDA kernel on a GPU with ``cuequivariance-ops-torch-cu12``, its plain
              PyTorch implementation otherwise (slow: for checks on the CPU). Needs ``e3pot[cueq]``.
``auto``      ``cueq`` for a model on a GPU when cuEquivariance's CUDA kernels can be imported, else ``torch``.
============  ===========================================================================================

:func:`use_kernels` switches a loaded (or freshly built) model; a model trained with one backend runs with
the other (``tests/test_cueq.py``: float64 energies, forces, stress and training gradients agree to 1e-10).
The state dict and the config of a model do not change with the backend, so a model saved while it runs
with ``cueq`` is the same file as with ``torch``. Compiled models and exports run the torch kernels: an
export of a ``cueq`` model writes the torch modules in their place.
"""
from __future__ import annotations

import copy
import importlib.util
from typing import Optional

import torch

from e3pot.model.base import Runtime
from e3pot.nn.tensor_product import EdgeTensorProductScatter

KERNELS = ("torch", "cueq", "auto")
INSTALL = ("pip install 'e3pot[cueq]' (cuequivariance-torch; on a GPU also cuequivariance-ops-torch-cu12, "
           "or -cu13 for CUDA 13)")


def check_kernels(kernels: str, compile: bool = False) -> str:
    """``kernels`` if it names a backend (see the table above); ValueError listing the choices otherwise, and for
    ``cueq`` with ``compile=True`` (the compiled path runs the torch kernels)."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; use one of {', '.join(repr(k) for k in KERNELS)}")
    if compile and kernels == "cueq":
        raise ValueError("kernels='cueq' does not combine with compile: the compiled path runs the torch kernels; "
                         "use kernels='cueq' without compile, or compile with kernels='torch' (or 'auto')")
    return kernels


def cueq_installed() -> bool:
    """Whether ``cuequivariance_torch`` (the ``cueq`` extra) is installed."""
    return importlib.util.find_spec("cuequivariance_torch") is not None


def cueq_ops_available() -> bool:
    """Whether cuEquivariance's CUDA kernels (``cuequivariance_ops_torch``) can be imported."""
    if not cueq_installed():
        return False
    from e3pot.nn.cueq import ops_available

    return ops_available()


def _convolutions(model: torch.nn.Module):
    """(parent module, attribute name, convolution) of every edge convolution in ``model``."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, EdgeTensorProductScatter)]


def kernels_of(model) -> Optional[str]:
    """``"cueq"`` or ``"torch"``: the backend of ``model``'s edge convolutions (compiled and exported models:
    ``"torch"``); None for a model without one (``egnn``, a model of your own). A committee: its first member's."""
    from e3pot.model.ensemble import Committee

    if isinstance(model, Committee):
        return kernels_of(model.members[0])
    if isinstance(model, Runtime):
        return "torch"
    convs = _convolutions(model) if isinstance(model, torch.nn.Module) else []
    if not convs:
        return None
    return "torch" if all(type(conv) is EdgeTensorProductScatter for _, _, conv in convs) else "cueq"


def _device(model) -> torch.device:
    if isinstance(model, Runtime):
        return model.device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def resolve(model, kernels: str) -> str:
    """The backend ``kernels`` (``torch``, ``cueq`` or ``auto``) means for ``model``: ``auto`` is ``cueq`` for a
    model with edge convolutions on a GPU when cuEquivariance's CUDA kernels can be imported, else ``torch``."""
    check_kernels(kernels)
    if kernels != "auto":
        return kernels
    if isinstance(model, Runtime) or kernels_of(model) is None or _device(model).type != "cuda":
        return "torch"
    return "cueq" if cueq_ops_available() else "torch"


def _refuse_cueq(model) -> None:
    name = type(model).__name__
    if isinstance(model, Runtime):
        raise ValueError(f"kernels='cueq' needs an eager model (a model file), not a {name}: compiled models and "
                         "exports run the torch kernels; load the model file, or use kernels='torch' (or 'auto')")
    if kernels_of(model) is None:
        kind = getattr(model, "kind", name)
        raise ValueError(f"kernels='cueq': a model of kind {kind!r} has no edge tensor-product convolution "
                         f"(EdgeTensorProductScatter) for cuEquivariance to run; use kernels='torch' (or 'auto')")
    if not cueq_installed():
        raise ValueError(f"kernels='cueq' needs cuEquivariance, which is not installed: {INSTALL}")


def use_kernels(model, kernels: str = "auto", inplace: bool = False, method: Optional[str] = None):
    """``model`` with its edge convolutions run by the backend ``kernels`` (``torch``, ``cueq`` or ``auto``).

    ``model`` is never changed unless ``inplace=True``: when it already runs with that backend it is returned as it
    is, otherwise a copy (``copy.deepcopy``) with its convolutions replaced. With ``inplace=True`` the convolutions
    of ``model`` itself are replaced and ``model`` is returned: the parameters stay the same objects, so an
    optimiser made before keeps training them (train with one backend, or switch between them, at will).
    ``method`` (``cueq`` only): the cuEquivariance method, see :class:`~e3pot.nn.cueq.CueqEdgeConvolution`.

    A model without edge convolutions (``egnn``, a model of your own), a compiled model and an export run the
    torch kernels: ``torch`` and ``auto`` return them unchanged, ``cueq`` is a ValueError saying why; so is
    ``cueq`` when cuEquivariance is not installed, and an unknown name.
    """
    from e3pot.model.ensemble import Committee

    if isinstance(model, Committee):  # every member, each by this function
        members = [use_kernels(m, kernels, inplace=inplace, method=method) for m in model.members]
        if all(a is b for a, b in zip(members, model.members)):
            return model
        return Committee(members, device=str(model.device), calibration=model.calibration, names=model.names)
    backend = resolve(model, kernels)
    if backend == "cueq":
        _refuse_cueq(model)
    elif kernels_of(model) in (None, "torch"):
        return model
    from e3pot.nn import cueq

    def done(conv) -> bool:
        if backend == "torch":
            return type(conv) is EdgeTensorProductScatter
        return isinstance(conv, cueq.CueqEdgeConvolution) and conv.method == method

    if all(done(conv) for _, _, conv in _convolutions(model)):
        return model
    if not inplace:
        model = copy.deepcopy(model)
    for parent, name, conv in _convolutions(model):
        if not done(conv):
            setattr(parent, name, cueq.torch_convolution(conv) if backend == "torch"
                    else cueq.CueqEdgeConvolution(conv, method))
    return model
