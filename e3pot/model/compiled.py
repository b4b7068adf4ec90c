"""A compiled inference path: energy, forces and stress as one Inductor-compiled graph.

The eager path runs a few thousand small tensor operations per call (forward, then autograd's
backward for the forces). For a small molecule most of that time is per-operation overhead,
not arithmetic. Here the whole call, forward and derivative pass together, is traced once into
a flat graph of ATen operations (``make_fx``, which records what autograd executes), with the
numbers of atoms, edges and structures as symbols. Inductor then compiles that graph into fused
C++ kernels on the CPU (Triton on CUDA). Because the sizes are symbolic, a new structure, a new
edge count in MD or a new batch size runs the same compiled code without compiling again.

The result equals the eager path to rounding (``tests/test_compiled.py``: float64 to 1e-10,
float32 to 1e-5). Compiling takes from tens of seconds to a few minutes, once per process, per
dtype, device and kind of call (with or without stress, one structure or a batch); Inductor
keeps its kernels in a cache on disk (``TORCHINDUCTOR_CACHE_DIR``), so that later processes
start faster. The weights are frozen into the compiled graph: compile after training, not
during it.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from e3pot.data.graph import AtomicGraph
from e3pot.model.forces import Conservative

Key = Tuple[bool, bool, torch.dtype, torch.device]


class CompiledModel:
    """Wraps an eager ``E3Potential`` for inference with ``torch.compile``.

    Called like an exported model, ``compiled(graph, compute_stress)`` returns ``(energy, forces,
    stress, atomic_energies)``. The first call of each kind compiles (see the module's notes); a
    graph with fewer than two atoms or two edges (sizes that the trace cannot keep symbolic) runs
    eagerly. ``model`` (the eager model) stays available, for the chunked path of structures too
    large for one call.
    """

    def __init__(self, model: torch.nn.Module):
        if not hasattr(model, "layers"):
            raise TypeError(f"compile needs an eager e3pot model (a model file), not {type(model).__name__}; "
                            "a TorchScript export cannot be compiled")
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.atomic_numbers = list(self.model.atomic_numbers)
        self.r_max = float(self.model.r_max)
        self.dtype = self.model.dtype
        self.device = next(self.model.parameters()).device
        self.config = getattr(self.model, "config", {})
        self.metadata = getattr(model, "metadata", {})
        self._conservative = Conservative(self.model)
        self._compiled: Dict[Key, Callable] = {}
        self.compilations = 0

    def key(self, graph: AtomicGraph, compute_stress: bool) -> Key:
        return (bool(compute_stress), graph.cell.shape[0] == 1, graph.positions.dtype, graph.positions.device)

    def _function(self, compute_stress: bool) -> Callable:
        conservative = self._conservative

        def energy_forces(positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor, batch: Tensor,
                          cell: Tensor, pbc: Tensor):
            graph = AtomicGraph(positions, species, edge_index, edge_shift, batch, cell, pbc)
            energy, forces, stress, atomic = conservative(graph, compute_stress, False)
            if stress is None:
                return energy, forces, atomic
            return energy, forces, atomic, stress

        return energy_forces

    def _compile(self, graph: AtomicGraph, compute_stress: bool) -> Callable:
        from torch.fx.experimental import _config as fx_config
        from torch.fx.experimental.proxy_tensor import make_fx

        # No "duck sizing": sizes that happen to be equal in the traced graph (say 3 structures and
        # the 3 Cartesian components) must stay independent symbols.
        with warnings.catch_warnings(), fx_config.patch(use_duck_shape=False):
            warnings.simplefilter("ignore", UserWarning)
            traced = make_fx(self._function(compute_stress), tracing_mode="symbolic",
                             _allow_non_fake_inputs=True)(*graph)
        self.compilations += 1
        return torch.compile(traced, dynamic=True, fullgraph=True)

    def __call__(self, graph: AtomicGraph, compute_stress: bool = False):
        if graph.positions.shape[0] < 2 or graph.edge_index.shape[1] < 2:
            return tuple(self._conservative(graph, compute_stress, False))
        key = self.key(graph, compute_stress)
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = self._compile(graph, compute_stress)
        out = fn(*graph)
        stress: Optional[Tensor] = out[3] if compute_stress else None
        return out[0], out[1], stress, out[2]


def compile_model(model) -> CompiledModel:
    """A :class:`CompiledModel` of an eager model (a :class:`CompiledModel` is returned as it is)."""
    if isinstance(model, CompiledModel):
        return model
    return CompiledModel(model)
