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
import os
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from e3pot.data.graph import AtomicGraph
from e3pot.model.base import EnergyModel, Runtime
from e3pot.model.forces import Conservative, Prediction, evaluate

Key = Tuple[bool, bool, torch.dtype, torch.device]


def _sizes_from_shapes(traced: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace ``aten.sym_numel(x)`` nodes (from the backward of ``mean``) by the product of
    ``aten.sym_size(x, d)``: Dynamo refuses an ATen op that returns a Python int, not a symbolic size."""
    import operator

    graph = traced.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.sym_numel.default:
            source = node.args[0]
            with graph.inserting_before(node):
                numel = None
                for d in range(source.meta["val"].dim()):
                    size = graph.call_function(torch.ops.aten.sym_size.int, (source, d))
                    numel = size if numel is None else graph.call_function(operator.mul, (numel, size))
                if numel is None:
                    numel = 1
            node.replace_all_uses_with(numel)
            graph.erase_node(node)
    traced.recompile()
    return traced


def _inductor(gm: torch.fx.GraphModule, example_inputs):
    """Inductor, with ``index_add`` (every scatter-sum, and the derivative of every gather) left to
    ATen's kernel on the CPU. Inductor's own lowering fuses the gather-multiply-scatter into one loop
    that accumulates with atomic adds across threads; on 2 CPU threads that made an aspirin
    energy+forces call several times slower than with ATen's ``index_add``."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    table = dict(select_decomp_table())
    if not any(isinstance(x, Tensor) and x.is_cuda for x in example_inputs):
        table.pop(torch.ops.aten.index_add.default, None)
    return compile_fx(gm, example_inputs, decompositions=table)


def inductor_cache_dir() -> str:
    """Where Inductor keeps its compiled kernels: ``TORCHINDUCTOR_CACHE_DIR`` if set, else its default
    (``torchinductor_<user>`` in the temporary folder). Creates nothing."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not path:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir

            path = default_cache_dir()
        except ImportError:  # another torch layout: the same default, spelled out
            import getpass
            import tempfile

            path = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return os.path.abspath(path)


def compiling_message(what: str, device: torch.device) -> str:
    """The note printed when a compilation starts: what is compiled, how long it takes, where the cache is."""
    return (f"e3pot: compiling {what} on {torch.device(device).type} with torch.compile (Inductor): this "
            "usually takes about a minute or two on a CPU the first time, less when Inductor's cache is warm "
            f"(cache: {inductor_cache_dir()}; set TORCHINDUCTOR_CACHE_DIR to move it)")


def announce_compilation(what: str, device: torch.device) -> None:
    """Print :func:`compiling_message` on stderr (on the first process of a distributed run only)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    print(compiling_message(what, device), file=sys.stderr, flush=True)


class CompiledModel(Runtime):
    """Wraps an eager ``E3Potential`` for inference with ``torch.compile``.

    Called like an exported model, ``compiled(graph, compute_stress)`` returns ``(energy, forces,
    stress, atomic_energies)``. The first call of each kind compiles (see the module's notes) and says so on stderr; a
    graph with fewer than two atoms or two edges (sizes that the trace cannot keep symbolic) runs
    eagerly. ``energy_model`` (also ``model``: the eager model) stays available, for the chunked path of
    structures too large for one call.
    """

    def __init__(self, model: torch.nn.Module):
        if not isinstance(model, EnergyModel):
            raise TypeError(f"compile needs an eager e3pot model (a model file), not {type(model).__name__}; "
                            "a TorchScript export cannot be compiled")
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.energy_model = self.model
        self.kind = self.model.kind
        self.atomic_numbers = list(self.model.atomic_numbers)
        self.r_max = float(self.model.r_max)
        self.dtype = self.model.dtype
        self.device = next(self.model.parameters()).device
        self.config = getattr(self.model, "config", {})
        self.metadata = getattr(model, "metadata", {})
        self._conservative = Conservative(self.model)
        self._compiled: Dict[Key, Callable] = {}
        self.compilations = 0

    def chunk_sizes(self) -> Optional[List[Tuple[int, int]]]:
        return self.model.chunk_sizes()

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

        announce_compilation("energy and forces" + (" and stress" if compute_stress else "")
                             + (" of one structure" if graph.cell.shape[0] == 1 else " of a batch"),
                             graph.positions.device)
        # No "duck sizing": sizes that happen to be equal in the traced graph (say 3 structures and
        # the 3 Cartesian components) must stay independent symbols.
        with warnings.catch_warnings(), fx_config.patch(use_duck_shape=False):
            warnings.simplefilter("ignore", UserWarning)
            traced = make_fx(self._function(compute_stress), tracing_mode="symbolic",
                             _allow_non_fake_inputs=True)(*graph)
        self.compilations += 1
        return torch.compile(_sizes_from_shapes(traced), backend=_inductor, dynamic=True, fullgraph=True)

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


class _WithGradients(torch.autograd.Function):
    """The loss value as a node of autograd whose backward hands the precomputed parameter gradients
    (times the incoming gradient) to the parameters, so that ``loss.backward()``, optimisers,
    gradient clipping and DDP's gradient hooks work as for an eager loss."""

    @staticmethod
    def forward(ctx, loss: Tensor, n: int, *grads_and_params: Tensor) -> Tensor:
        ctx.n = n
        ctx.save_for_backward(*grads_and_params[:n])
        return loss.detach().clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        grads = ctx.saved_tensors
        return (None, None) + (None,) * ctx.n + tuple(g.to(x.dtype) * x for x in grads)


class CompiledTrainingLoss:
    """The training loss, its parts and the gradients of the loss for all trainable parameters, in one
    compiled graph: forward, forces (and stress) by the first derivative, and the parameter gradients
    of the loss by the second (``make_fx`` records both passes of autograd; Inductor compiles them).

    Unlike :class:`CompiledModel`, the parameters are inputs of the compiled graph, so the optimiser
    updates them in place between calls. ``loss_fn(prediction, labels)`` returns the dict of loss parts
    (``"loss"`` among them). Calling returns ``(parts, prediction)``: ``parts["loss"]`` back-propagates
    the precomputed gradients into the parameters; the prediction is detached. A batch of a single
    structure runs eagerly (it would need a compilation of its own).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, compute_stress: bool):
        self.model = model
        self.loss_fn = loss_fn
        self.compute_stress = compute_stress
        self._compiled: Dict[Tuple, Tuple[Callable, Tuple[str, ...]]] = {}
        self.compilations = 0

    def _trace(self, graph: AtomicGraph, labels, names, buffer_names):
        from torch.fx.experimental import _config as fx_config
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.func import functional_call

        model, loss_fn = Conservative(self.model), self.loss_fn
        compute_stress = self.compute_stress
        n_params, n_graph = len(names), len(graph)
        announce_compilation("the training loss and its gradients", graph.positions.device)
        keys: list = []

        def step(*args):
            params = args[:n_params]
            buffers = args[n_params:n_params + len(buffer_names)]
            rest = args[n_params + len(buffer_names):]
            g = AtomicGraph(*rest[:n_graph])
            lab = type(labels)(*rest[n_graph:])
            # the parameters and buffers are inputs of the traced graph (the optimiser updates them), so the
            # energy -> forces sequence runs through a functional call of the same Conservative
            state = {f"model.{n}": p for n, p in zip(names, params)}
            state.update((f"model.{n}", b) for n, b in zip(buffer_names, buffers))
            pred = Prediction(*functional_call(model, state, (g, compute_stress, True)))
            parts = loss_fn(pred, lab)
            keys[:] = list(parts)
            grads = torch.autograd.grad(parts["loss"], params, allow_unused=True)
            grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]
            out = [parts[k] for k in keys] + [pred.energy, pred.forces, pred.atomic_energies] + grads
            return tuple(out) + ((pred.stress,) if pred.stress is not None else ())

        params = [p for _, p in self._named_parameters()]
        buffers = [b for _, b in self.model.named_buffers()]
        with warnings.catch_warnings(), fx_config.patch(use_duck_shape=False):
            warnings.simplefilter("ignore", UserWarning)
            traced = make_fx(step, tracing_mode="symbolic", _allow_non_fake_inputs=True)(
                *[p.detach().requires_grad_(True) for p in params], *buffers, *graph, *labels)
        self.compilations += 1
        return torch.compile(_sizes_from_shapes(traced), backend=_inductor, dynamic=True, fullgraph=True), tuple(keys)

    def _named_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def __call__(self, graph: AtomicGraph, labels):
        if graph.cell.shape[0] < 2 or graph.positions.shape[0] < 2 or graph.edge_index.shape[1] < 2:
            # a batch of one structure (the last of an epoch, say) would need a compilation of its own
            pred = evaluate(self.model, graph, compute_stress=self.compute_stress, training=True)
            return self.loss_fn(pred, labels), pred
        named = self._named_parameters()
        names = [n for n, _ in named]
        params = [p for _, p in named]
        buffer_names = [n for n, _ in self.model.named_buffers()]
        key = (graph.positions.dtype, graph.positions.device, tuple(names))
        if key not in self._compiled:
            self._compiled[key] = self._trace(graph, labels, names, buffer_names)
        fn, keys = self._compiled[key]
        out = fn(*[p.detach() for p in params], *[b for _, b in self.model.named_buffers()], *graph, *labels)
        k = len(keys)
        parts = dict(zip(keys, out[:k]))
        energy, forces, atomic = out[k:k + 3]
        grads = out[k + 3:k + 3 + len(params)]
        stress = out[k + 3 + len(params)] if len(out) > k + 3 + len(params) else None
        parts["loss"] = _WithGradients.apply(parts["loss"], len(grads), *grads, *params)
        return parts, Prediction(energy, forces, stress, atomic)
