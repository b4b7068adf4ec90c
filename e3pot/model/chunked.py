"""Memory-bounded evaluation of large structures: chunks of receiving atoms and a layer-by-layer backward.

A direct evaluation keeps every edge's activations of every layer for the force backward, so its
memory grows with edges x layers x features (each model reports its own per-edge sizes:
``chunk_sizes()``; docs/using.md gives the numbers at NequIP's hyperparameters).
Here the edges are sorted by receiver and cut into chunks of contiguous receiving atoms. The forward
runs without an autograd graph and keeps only each layer's per-atom features. The backward walks the
layers in reverse and, chunk by chunk, recomputes the chunk's messages from the features of its own
senders and differentiates them. What stays in memory is the per-atom features of every layer, the
sorted edge list with its harmonics and radial basis, and one chunk's working set.

Energies, forces and stress equal those of the direct path up to the order of floating-point sums
(float64: about 1e-15 relative). Training never chunks: its batches are small, and a force loss
needs the double backward that only the direct path keeps.
"""
from __future__ import annotations

import math
import os
import warnings
import weakref
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from e3pot.data.graph import AtomicGraph
from e3pot.model.base import EnergyModel, Runtime
from e3pot.model.export import ExportedModel
from e3pot.model.forces import stress_from_strain_derivative
from e3pot.nn.scatter import scatter_sum

GIB = float(2 ** 30)
# Largest working set of one chunk (GiB): on the CPU a chunk should stay near the size of the caches'
# working range (bigger ones ran slower), while a GPU wants big chunks to keep its kernels busy. The
# values were chosen with benchmarks/large_systems.py --budget; its results files hold the timings.
CHUNK_GIB = {"cpu": 0.75, "cuda": 16.0}
# Default budget on the CPU (GiB), capped at 60% of the free memory. Chunked evaluation runs each
# chunk's forward twice, so it costs somewhat more per atom than the direct one (docs/benchmarks.md),
# and a direct evaluation larger than this gains little.
CPU_BUDGET_GIB = 6.0
MIN_CHUNK_ATOMS = 32  # smaller chunks would spend more time in Python than in arithmetic


class MemoryBudgetError(MemoryError):
    """A structure needs more memory than the budget allows, even when evaluated in chunks."""


class Footprint(NamedTuple):
    """Bytes that an evaluation keeps, as linear functions of the numbers of atoms and edges."""

    direct_per_edge: float  # direct path: all layers' edge activations and their gradients
    direct_per_atom: float
    chunk_per_edge: float  # chunked path: working set of one chunk of one layer, per edge
    kept_per_edge: float  # chunked path: edge list, sorted copies, geometry gradients
    kept_per_atom: float  # chunked path: per-atom features of every layer and their gradients

    def direct(self, n_atoms: int, n_edges: int) -> float:
        return self.direct_per_edge * n_edges + self.direct_per_atom * n_atoms

    def kept(self, n_atoms: int, n_edges: int) -> float:
        return self.kept_per_edge * n_edges + self.kept_per_atom * n_atoms


class _Target(NamedTuple):
    """What chunked evaluation drives: the per-atom energy module (eager, or an export's TorchScript one)
    and, per interaction layer, (numbers kept per edge, features per atom entering it)."""

    energy_model: torch.nn.Module
    sizes: List[Tuple[int, int]]


def _target(model) -> Optional[_Target]:
    """The :class:`_Target` of an eager model, a compiled or an exported one; None for a model that is
    always evaluated in one piece."""
    if isinstance(model, Runtime):
        sizes, energy_model = model.chunk_sizes(), model.energy_model
    elif isinstance(model, EnergyModel):
        sizes, energy_model = model.chunk_sizes(), model
    else:
        return None
    return None if sizes is None or energy_model is None else _Target(energy_model, sizes)


def chunkable(model) -> bool:
    """Whether ``model`` (eager, compiled or exported) can be evaluated in chunks: the ``e3`` and ``cartesian``
    kinds, whose edge embeddings stay fixed through the layers (see :meth:`EnergyModel.chunk_sizes`). Other
    kinds (``egnn``, whose edge vectors change from layer to layer) are always evaluated in one piece."""
    return _target(model) is not None


SMALL_GIB = 0.25  # a structure whose direct evaluation needs less never asks how much memory is free


def footprint(model, itemsize: int) -> Footprint:
    """Estimated memory of an energy+forces call, per edge and per atom, for ``model`` (chunkable) in a
    dtype of ``itemsize`` bytes, from the sizes its layers report (:meth:`EnergyModel.chunk_sizes`). The
    constants were fitted to the peak RSS of water boxes (768 to 12,288 atoms, three model sizes, float32
    and float64) and err on the high side."""
    target = _target(model)
    if target is None:
        raise ValueError(f"a model of kind {model_kind(model)!r} is not evaluated in chunks: no memory estimate")
    edge_floats = [e for e, _ in target.sizes]
    in_dims = [d for _, d in target.sizes]
    return Footprint(
        direct_per_edge=itemsize * (1.4 * sum(edge_floats) + 60),
        direct_per_atom=itemsize * 8.0 * sum(in_dims),
        chunk_per_edge=itemsize * 1.6 * max(edge_floats),
        kept_per_edge=64.0 + itemsize * 40,
        kept_per_atom=64.0 + itemsize * (sum(in_dims) + 8 * max(in_dims)),
    )


def _itemsize(model) -> int:
    return torch.finfo(model.dtype).bits // 8


def available_memory(device: torch.device) -> float:
    """Free memory in bytes: the GPU's free memory, or the kernel's MemAvailable on Linux CPUs."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2


BUDGET_ENV = "E3POT_MEMORY_BUDGET"


def budget_from_env() -> Optional[float]:
    """``E3POT_MEMORY_BUDGET`` in GiB, or None when it is unset or empty.

    Raises ValueError when it is set to anything but a positive number."""
    raw = os.environ.get(BUDGET_ENV, "")
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{BUDGET_ENV} must be a positive number of GiB (say {BUDGET_ENV}=4), got {raw!r}; "
                         f"unset it for the default budget")
    return value


def check_budget(memory_budget: Optional[float]) -> Optional[float]:
    """The memory budget in force, in GiB: ``memory_budget`` if given, else ``E3POT_MEMORY_BUDGET``, else
    None (the default of :func:`default_budget`). Both are checked, whichever is used: a bad value of
    either raises ValueError naming it, for a molecule as for a large structure."""
    from_env = budget_from_env()
    if memory_budget is None:
        return from_env
    try:
        value = float(memory_budget)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(memory_budget, bool) or not value > 0:
        raise ValueError(f"memory_budget must be a positive number of GiB, got {memory_budget!r}")
    return value


def format_gib(gib: float) -> str:
    """A size in GiB to three significant figures, never in exponent notation and never shown as 0:
    ``0.00123 GiB``, ``1.5 GiB``, ``123 GiB``."""
    if not math.isfinite(gib):
        return f"{gib} GiB"
    if gib <= 0:
        return "0 GiB"
    if gib >= 100:
        return f"{gib:.0f} GiB"
    text = f"{gib:.{2 - math.floor(math.log10(gib))}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} GiB"


def _subject(graph: AtomicGraph, n_atoms: int, n_edges: int) -> str:
    """What is evaluated, in words: one structure, or a batch of several."""
    n_graphs = graph.cell.shape[0]
    if n_graphs > 1:
        return f"a batch of {n_graphs} structures ({n_atoms} atoms, {n_edges} edges)"
    return f"a structure of {n_atoms} atoms and {n_edges} edges"


BATCH_ADVICE = ("evaluate fewer structures at a time (a smaller --batch-size in e3pot predict, batch_size= in "
                "predict)")


def model_kind(model) -> str:
    """The kind of ``model`` (``e3``, ``cartesian``, ``egnn``; see :mod:`e3pot.model.kinds`), for messages."""
    kind = getattr(model, "kind", None)  # EnergyModel and Runtime both name it
    if isinstance(kind, str):
        return kind
    config = getattr(model, "config", None)  # a wrapper that keeps the model contract
    return config["kind"] if isinstance(config, dict) and isinstance(config.get("kind"), str) else type(model).__name__


def _one_piece_reason(model) -> str:
    """Why ``model`` (not chunkable) is evaluated in one piece, for messages."""
    if isinstance(model, ExportedModel) and model.written_without_sizes:
        return (f"this exported model (kind {model_kind(model)!r}) was written by an earlier e3pot without the sizes "
                "that chunked evaluation needs (export it again: the export of a chunkable kind carries them)")
    reason = model.one_piece_reason() if isinstance(model, Runtime) else None
    return reason or f"a model of kind {model_kind(model)!r} cannot be evaluated in chunks"


_WARNED: "weakref.WeakSet" = weakref.WeakSet()


def warn_if_not_chunkable(model, memory_budget: Optional[float], once: bool = False) -> None:
    """Warn that a memory budget given explicitly has no effect on ``model``, whose kind is always
    evaluated in one piece. With ``once=True``, only if no warning was given for this model yet."""
    if memory_budget is None or chunkable(model):
        return
    key = model.energy_model if isinstance(model, Runtime) and model.energy_model is not None else model
    try:
        if once and key in _WARNED:
            return
        _WARNED.add(key)
    except TypeError:  # not weakly referenceable: warn every time rather than never
        pass
    warnings.warn(f"the memory budget of {memory_budget} GiB (memory_budget=, --memory-budget) has no effect: "
                  f"{_one_piece_reason(model)} and is always evaluated in one piece, whatever the budget; to bound "
                  f"its memory, {BATCH_ADVICE}", UserWarning, stacklevel=3)


def default_budget(device: torch.device) -> float:
    """The default memory budget in GiB: ``E3POT_MEMORY_BUDGET`` if set; on CUDA 60% of the GPU's free
    memory; on the CPU 6 GiB or 60% of the free memory if that is less."""
    env = budget_from_env()
    if env is not None:
        return env
    free = 0.6 * available_memory(device) / GIB
    return free if device.type == "cuda" else min(CPU_BUDGET_GIB, free)


def plan(model, graph: AtomicGraph, compute_stress: bool, memory_budget: Optional[float] = None) -> Optional[int]:
    """Edges per chunk for evaluating ``graph`` within ``memory_budget`` GiB (default: ``E3POT_MEMORY_BUDGET``,
    else :func:`default_budget`), or None for the direct path.

    Raises ValueError for a budget (``memory_budget`` or ``E3POT_MEMORY_BUDGET``) that is not a positive
    number, and :class:`MemoryBudgetError` when even the chunked path would exceed the budget."""
    memory_budget = check_budget(memory_budget)
    if not chunkable(model):
        return None
    n_atoms, n_edges = graph.positions.shape[0], graph.edge_index.shape[1]
    device = graph.positions.device
    fp = footprint(model, _itemsize(model))
    if memory_budget is None and fp.direct(n_atoms, n_edges) <= SMALL_GIB * GIB:
        return None  # molecules in MD: no system call per step
    budget = (default_budget(device) if memory_budget is None else memory_budget) * GIB
    if fp.direct(n_atoms, n_edges) <= budget:
        return None
    room = min(budget - fp.kept(n_atoms, n_edges), CHUNK_GIB.get(device.type, CHUNK_GIB["cpu"]) * GIB)
    per_atom_edges = max(1.0, n_edges / max(n_atoms, 1))
    smallest = min(int(MIN_CHUNK_ATOMS * per_atom_edges), n_edges)  # the smallest useful chunk
    if room < fp.chunk_per_edge * smallest:
        need = fp.kept(n_atoms, n_edges) + fp.chunk_per_edge * smallest
        batch = graph.cell.shape[0] > 1
        raise MemoryBudgetError(
            f"{_subject(graph, n_atoms, n_edges)} needs about {format_gib(need / GIB)} even when evaluated in "
            f"chunks, more than the memory budget of {format_gib(budget / GIB)}; raise the budget "
            "(memory_budget= in the calculator and predict, --memory-budget in e3pot predict, or "
            "E3POT_MEMORY_BUDGET=GiB)" + (f", {BATCH_ADVICE}" if batch else "")
            + ", or run on a machine with more memory")
    return int(room / fp.chunk_per_edge)


def out_of_memory_message(model, graph: AtomicGraph, memory_budget: Optional[float]) -> str:
    """What to say when the allocator fails: the estimate, the budget in force and how to lower it."""
    n_atoms, n_edges = graph.positions.shape[0], graph.edge_index.shape[1]
    device = graph.positions.device
    subject = _subject(graph, n_atoms, n_edges)
    batch = graph.cell.shape[0] > 1
    free = format_gib(available_memory(device) / GIB)
    if not chunkable(model):
        return (f"out of memory on {device.type} evaluating {subject}, with {free} free; {_one_piece_reason(model)}: "
                f"{BATCH_ADVICE}, or run on a machine with more memory")
    memory_budget = check_budget(memory_budget)
    budget = default_budget(device) if memory_budget is None else memory_budget
    fp = footprint(model, _itemsize(model))
    return (f"out of memory on {device.type} evaluating {subject} with a memory budget of {format_gib(budget)} "
            f"(in one piece it needs about {format_gib(fp.direct(n_atoms, n_edges) / GIB)}; in chunks at least "
            f"{format_gib(fp.kept(n_atoms, n_edges) / GIB)}), while only {free} are free now; lower the budget "
            "(memory_budget= in the calculator and predict, --memory-budget in e3pot predict, or "
            "E3POT_MEMORY_BUDGET=GiB) so that the " + ("batch" if batch else "structure")
            + " is evaluated in smaller chunks" + (f", or {BATCH_ADVICE}" if batch else ""))


def chunk_bounds(receiver: Tensor, n_atoms: int, chunk_edges: int) -> List[Tuple[int, int, int, int]]:
    """(first atom, end atom, first edge, end edge) of each chunk, for edges sorted by ``receiver``:
    contiguous atoms whose edges number at most ``chunk_edges`` (or one atom, if it alone has more)."""
    ends = torch.cumsum(torch.bincount(receiver, minlength=n_atoms), 0).cpu()  # (n_atoms,) edge end per atom
    bounds: List[Tuple[int, int, int, int]] = []
    a0, e0 = 0, 0
    while a0 < n_atoms:
        a1 = int(torch.searchsorted(ends, e0 + chunk_edges, right=True))
        a1 = min(max(a1, a0 + 1), n_atoms)
        e1 = int(ends[a1 - 1])
        bounds.append((a0, a1, e0, e1))
        a0, e0 = a1, e1
    return bounds


class _Chunk(NamedTuple):
    first_atom: int
    end_atom: int
    first_edge: int
    end_edge: int
    senders: Tensor  # (n_senders,) long, the distinct senders of the chunk's edges
    local_sender: Tensor  # (n_edges_chunk,) long, index of each edge's sender in ``senders``
    local_receiver: Tensor  # (n_edges_chunk,) long, receiver - first_atom

    @property
    def atoms(self) -> slice:
        return slice(self.first_atom, self.end_atom)

    @property
    def edges(self) -> slice:
        return slice(self.first_edge, self.end_edge)


def chunked_evaluate(model, graph: AtomicGraph, compute_stress: bool,
                     chunk_edges: int) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """(energy, forces, stress, atomic_energies) as :class:`~e3pot.model.forces.Conservative` gives them,
    computed in chunks of receiving atoms with a layer-by-layer backward.

    The forward runs without a graph and keeps each layer's per-atom features. The backward goes
    through the layers in reverse; for each chunk it recomputes the chunk's forward from the features
    of its senders alone and takes the derivatives with respect to them, the chunk's own features and
    its edges' harmonics and radial basis. Every derivative is accumulated in place by index, so no
    chunk touches a tensor of the size of the whole structure. The energy depends on the positions only
    through the edge vectors r_ij, so forces are sums of dE/dr_ij over edges, and dE/d(strain) is the
    virial sum r_ij (dE/dr_ij)^T, symmetrised.
    """
    target = _target(model)
    if target is None:
        raise ValueError(f"{_one_piece_reason(model)}; evaluate it in one piece")
    pot = target.energy_model
    n_atoms, n_graphs = graph.positions.shape[0], graph.cell.shape[0]
    receiver = graph.edge_index[1]
    order = torch.argsort(receiver, stable=True)
    receiver = receiver[order]
    sender = graph.edge_index[0][order]
    with torch.no_grad():
        vec = graph.positions[sender] - graph.positions[receiver] + graph.edge_shift[order]  # (n_edges, 3)
        del order
        chunks = []
        for a0, a1, e0, e1 in chunk_bounds(receiver, n_atoms, chunk_edges):
            senders, local = torch.unique(sender[e0:e1], return_inverse=True)
            chunks.append(_Chunk(a0, a1, e0, e1, senders, local, receiver[e0:e1] - a0))
        # the steps of E3Potential.forward: embed, propagate through each layer (here chunk by chunk), read out
        sh, radial = pot.edge_embedding(vec)  # (n_edges, sh_dim), (n_edges, num_basis)
        h, onehot = pot.embed(graph.species)
        layers = list(pot.layers.children())  # (also of a TorchScript module, whose ModuleList cannot be iterated)
        hs = [h]  # features entering each layer, then the last layer's output
        for layer in layers:
            x = layer.linear_in(hs[-1])
            hs.append(torch.cat([layer.propagate(hs[-1][c.atoms], onehot[c.atoms], x[c.senders], sh[c.edges],
                                                 radial[c.edges], c.local_sender, c.local_receiver) for c in chunks]))
            del x

    with torch.enable_grad():
        h = hs.pop().requires_grad_(True)
        atomic = pot.atomic_energies(h, graph.species)  # (n_atoms,) float64
        (g_h,) = torch.autograd.grad([atomic.sum()], [h])
    atomic = atomic.detach()
    g_sh, g_radial = torch.zeros_like(sh), torch.zeros_like(radial)
    for layer in reversed(layers):
        h_in = hs.pop()
        g_in = torch.zeros_like(h_in)
        with torch.enable_grad():
            h_leaf = h_in.detach().requires_grad_(True)
            x_full = layer.linear_in(h_leaf)
            x = x_full.detach()
            g_x = torch.zeros_like(x)
            for c in chunks:
                x_senders = x[c.senders].requires_grad_(True)
                h_c = h_in[c.atoms].requires_grad_(True)
                sh_c = sh[c.edges].requires_grad_(True)
                radial_c = radial[c.edges].requires_grad_(True)
                out = layer.propagate(h_c, onehot[c.atoms], x_senders, sh_c, radial_c, c.local_sender,
                                      c.local_receiver)
                g_xs, g_hc, g_shc, g_rc = torch.autograd.grad([out], [x_senders, h_c, sh_c, radial_c],
                                                              [g_h[c.atoms]], allow_unused=True)
                g_x.index_add_(0, c.senders, g_xs)
                if g_hc is not None:  # None when the block has no residual and no self-connection path
                    g_in[c.atoms] += g_hc
                g_sh[c.edges] += g_shc
                g_radial[c.edges] += g_rc
            g_in += torch.autograd.grad([x_full], [h_leaf], [g_x])[0]
        g_h = g_in

    # edge vectors -> forces and the virial, chunk by chunk
    forces = torch.zeros_like(graph.positions)
    virial = torch.zeros((n_graphs, 3, 3), dtype=vec.dtype, device=vec.device)
    edge_graph = graph.batch[receiver] if n_graphs > 1 else None
    for c in chunks:
        e = c.edges
        with torch.enable_grad():
            vec_c = vec[e].detach().requires_grad_(True)
            sh_c, radial_c = pot.edge_embedding(vec_c)
            # at l_max 0 the harmonics are a constant that autograd does not track
            pairs = [(t, g[e]) for t, g in ((sh_c, g_sh), (radial_c, g_radial)) if t.requires_grad]
            (g_vec,) = torch.autograd.grad([t for t, _ in pairs], [vec_c], [g for _, g in pairs])
        forces.index_add_(0, receiver[e], g_vec)
        forces.index_add_(0, sender[e], -g_vec)
        if compute_stress:
            outer = vec[e].unsqueeze(2) * g_vec.unsqueeze(1)  # (n_edges_chunk, 3, 3)
            if edge_graph is None:
                virial[0] += outer.sum(0)
            else:
                virial.index_add_(0, edge_graph[e], outer)
    stress = None
    if compute_stress:
        stress = stress_from_strain_derivative(0.5 * (virial + virial.transpose(1, 2)), graph.cell, graph.pbc)
    energy = scatter_sum(atomic, graph.batch, n_graphs)
    return energy, forces, stress, atomic
