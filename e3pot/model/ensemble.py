"""Uncertainty: committees of models, and shallow ensembles (one model with several read-out heads).

Both give K predictions of the same structure. The prediction is their mean; the uncertainty is their
spread (population standard deviation over the K members, ``ddof=0``):

* ``energy_std`` (n_graphs,) eV;
* ``forces_std`` (n_atoms,) eV/Å per atom, ``sqrt(sum over x, y, z of the variance of F_c)``: the RMS
  length of the members' deviations from the mean force;
* ``stress_std`` (n_graphs, 3, 3) eV/Å^3, per component.

A :class:`Committee` holds K independently trained models (model files, exports, or loaded modules). Its
members run one after the other, or, when all are eager models of the same architecture and the batch is
small, in one pass with stacked weights (``torch.func.vmap`` over :func:`torch.func.functional_call`). A shallow ensemble
is an :class:`~e3pot.model.potential.E3Potential` with ``heads > 1``: the heads share every layer but
the read-out, so that its uncertainty costs one forward pass and one batched backward pass.

A :class:`Calibration` multiplies the raw spreads by factors fitted on validation frames (see
:func:`fit_calibration`): training a shallow ensemble stores them in its model file, and a committee
takes them as an argument.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from e3pot.data.graph import AtomicGraph
from e3pot.model.forces import derivatives, stress_from_strain_derivative, strain_geometry
from e3pot.nn.scatter import scatter_sum


class Spread(NamedTuple):
    """The mean prediction of K members and its spread (see the module's notes for the definitions)."""

    energy: Tensor  # (n_graphs,) eV
    forces: Tensor  # (n_atoms, 3) eV/Å
    stress: Optional[Tensor]  # (n_graphs, 3, 3) eV/Å^3, NaN without a cell volume
    atomic_energies: Tensor  # (n_atoms,) eV
    energy_std: Tensor  # (n_graphs,) eV
    forces_std: Tensor  # (n_atoms,) eV/Å
    stress_std: Optional[Tensor]  # (n_graphs, 3, 3) eV/Å^3
    members: int


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Factors that multiply the raw spreads: ``energy`` for ``energy_std``, ``forces`` for ``forces_std`` and
    ``stress_std`` (both are derivatives of the energies). 1 and 1: the raw spread."""

    energy: float = 1.0
    forces: float = 1.0

    @classmethod
    def of(cls, model) -> "Calibration":
        """The calibration stored with a model (its ``metadata["uncertainty"]``), else none."""
        stored = (getattr(model, "metadata", None) or {}).get("uncertainty") or {}
        return cls(float(stored.get("energy_scale", 1.0)), float(stored.get("forces_scale", 1.0)))

    def metadata(self, **extra) -> Dict[str, float]:
        return {"energy_scale": self.energy, "forces_scale": self.forces, **extra}


def combine(energies: Tensor, forces: Tensor, stress: Optional[Tensor], atomic: Tensor,
            calibration: Calibration = Calibration()) -> Spread:
    """The :class:`Spread` of K members' predictions: energies (K, n_graphs), forces (K, n_atoms, 3),
    stress (K, n_graphs, 3, 3) or None, atomic energies (K, n_atoms)."""
    forces_std = forces.var(dim=0, unbiased=False).sum(-1).sqrt()
    stress_mean = stress_std = None
    if stress is not None:
        stress_mean = stress.mean(0)
        stress_std = stress.std(dim=0, unbiased=False) * calibration.forces
    return Spread(energies.mean(0), forces.mean(0), stress_mean, atomic.mean(0),
                  energies.std(dim=0, unbiased=False) * calibration.energy, forces_std * calibration.forces,
                  stress_std, int(energies.shape[0]))


def has_uncertainty(model) -> bool:
    """A committee, or a model with several read-out heads."""
    return isinstance(model, Committee) or getattr(model, "num_heads", 1) > 1


def head_spread(model, graph: AtomicGraph, compute_stress: bool = False,
                calibration: Optional[Calibration] = None) -> Spread:
    """The :class:`Spread` of the heads of a shallow ensemble (an eager model with ``num_heads > 1``), in one
    forward pass and one backward pass batched over the heads. Default calibration: the model's own."""
    if calibration is None:
        calibration = Calibration.of(model)
    positions = graph.positions.detach().requires_grad_(True)
    inputs: List[Tensor] = [positions]
    strain = None
    if compute_stress:
        strain = torch.zeros_like(graph.cell).requires_grad_(True)
        inputs.append(strain)
    strained, edge_shift = strain_geometry(graph, positions, strain)
    atomic = model.head_energies(graph._replace(positions=strained, edge_shift=edge_shift))  # (n_atoms, K)
    n_heads = atomic.shape[1]
    energies = scatter_sum(atomic, graph.batch, graph.cell.shape[0])  # (n_graphs, K)
    basis = torch.eye(n_heads, dtype=energies.dtype, device=energies.device)  # one head per batched gradient
    grad_outputs = basis[:, None, :].expand(n_heads, *energies.shape)
    grads = torch.autograd.grad(energies, inputs, grad_outputs=grad_outputs, is_grads_batched=True)
    stress = None
    if compute_stress:
        volume_cell = graph.cell
        stress = torch.stack([stress_from_strain_derivative(g, volume_cell, graph.pbc) for g in grads[1]])
    return combine(energies.detach().T, -grads[0].detach(), None if stress is None else stress.detach(),
                   atomic.detach().T, calibration)


def evaluate_heads(model, graph: AtomicGraph, compute_stress: bool = False, training: bool = False):
    """The prediction of a shallow ensemble (the heads' mean, as :func:`e3pot.model.forces.evaluate` gives it) and
    the energies of its heads (n_graphs, heads), for its training loss; ``training=True`` keeps the graph of the
    derivatives (double backward)."""
    from e3pot.model.forces import Prediction, apply_strain

    positions, edge_shift, inputs = apply_strain(graph, compute_stress)
    atomic = model.head_energies(graph._replace(positions=positions, edge_shift=edge_shift))  # (n_atoms, heads)
    energies = scatter_sum(atomic, graph.batch, graph.cell.shape[0])  # (n_graphs, heads)
    energy = energies.mean(1)
    forces, stress = derivatives(energy, inputs, graph.cell, graph.pbc, training)
    return Prediction(energy, forces, stress, atomic.mean(1)), energies


# Stacked weights (one vmapped pass) pay for small batches only: measured 2.5x one model against 3.0x one after
# the other for a committee of 3 on ethanol (9 atoms), but 4.2-5.9x against 3.0-3.2x at 288 atoms.
STACK_MAX_ATOMS = 32


class Committee:
    """K models that predict together: the mean is the prediction, the spread the uncertainty.

    Args:
        members: model files, TorchScript exports, AOTInductor packages or loaded models (see
            :func:`e3pot.model.runtime.load_any`), at least two. All must know the same elements, in the
            same order, and share one cutoff.
        device, dtype, compile: as for :func:`~e3pot.model.runtime.load_any`, for every member.
        calibration: factors for the spreads (:class:`Calibration`); default none (1, 1).
        stacked: ``"auto"`` (default): evaluate the members in one pass with stacked weights when all are eager
            models of one architecture on one device and the batch has at most :data:`STACK_MAX_ATOMS` atoms
            (where it pays: benchmarks/uncertainty_cost.py), else one after the other; ``True``: stacked for
            any batch that needs no chunks; ``False``: always one after the other.
        names: how errors name the members (default: the paths given, or ``member k``).

    Called like a runtime, ``committee(graph, compute_stress)`` returns the mean ``(energy, forces, stress,
    atomic_energies)``; :meth:`spread` returns the :class:`Spread`.
    """

    def __init__(self, members: Sequence, device: str = "cpu", dtype: Optional[str] = None, compile: bool = False,
                 calibration: Optional[Calibration] = None, stacked="auto", names: Optional[Sequence[str]] = None):
        from e3pot.model.runtime import load_any

        members = list(members)
        if len(members) < 2:
            raise ValueError(f"a committee needs at least two members, got {len(members)}")
        if names is None:
            names = [str(m) if isinstance(m, (str, bytes)) or hasattr(m, "__fspath__") else f"member {k}"
                     for k, m in enumerate(members)]
        self.names = list(names)
        self.members = [load_any(m, device=device, dtype=dtype, compile=compile) for m in members]
        first = self.members[0]
        for name, m in zip(self.names[1:], self.members[1:]):
            if list(m.atomic_numbers) != list(first.atomic_numbers) or float(m.r_max) != float(first.r_max):
                raise ValueError(f"committee members must know the same elements with the same cutoff: {self.names[0]} "
                                 f"has elements {list(first.atomic_numbers)} and r_max {first.r_max} Å, {name} has "
                                 f"{list(m.atomic_numbers)} and {m.r_max} Å")
            if m.dtype != first.dtype:
                raise ValueError(f"committee members must run in one dtype: {self.names[0]} runs in {first.dtype}, "
                                 f"{name} in {m.dtype}; give dtype= to load them all in one")
        self.atomic_numbers = list(first.atomic_numbers)
        self.r_max = float(first.r_max)
        self.dtype = first.dtype
        self.device = torch.device(device)
        self.kind = getattr(first, "kind", "committee")
        self.calibration = calibration or Calibration()
        self.metadata = {}
        if stacked not in ("auto", False, True):
            raise ValueError(f"stacked must be 'auto', True or False, got {stacked!r}")
        self._stack = self._stack_weights() if stacked else None
        self._stack_max_atoms = None if stacked is True else STACK_MAX_ATOMS
        if stacked is True and self._stack is None:
            raise ValueError("stacked=True needs eager members of one architecture (the same model config)")

    def __len__(self) -> int:
        return len(self.members)

    def _stack_weights(self):
        from e3pot.model.base import EnergyModel

        members = self.members
        if not all(isinstance(m, EnergyModel) and type(m) is type(members[0]) for m in members):
            return None
        if any(m.config != members[0].config or getattr(m, "num_heads", 1) != 1 for m in members):
            return None
        if any(next(m.parameters()).device != next(members[0].parameters()).device for m in members):
            return None
        from e3pot.model.kernels import kernels_of

        if any((kernels_of(m) or "torch") != "torch" for m in members):
            return None
        params, buffers = torch.func.stack_module_state(members)
        return ({k: v.detach() for k, v in params.items()}, {k: v.detach() for k, v in buffers.items()})

    def _stacked(self, graph: AtomicGraph, compute_stress: bool):
        params, buffers = self._stack
        base = self.members[0]
        n_graphs = graph.cell.shape[0]

        def energy(p, b, positions, strain):
            strained, edge_shift = strain_geometry(graph, positions, strain)
            atomic = torch.func.functional_call(base, (p, b), (graph._replace(positions=strained, edge_shift=edge_shift),))
            per_graph = scatter_sum(atomic, graph.batch, n_graphs)
            return per_graph.sum(), (per_graph, atomic)

        strain = torch.zeros_like(graph.cell) if compute_stress else None
        argnums = (2, 3) if compute_stress else (2,)
        grad = torch.func.grad(energy, argnums=argnums, has_aux=True)
        grads, (energies, atomic) = torch.func.vmap(grad, in_dims=(0, 0, None, None))(
            params, buffers, graph.positions.detach(), strain)
        stress = None
        if compute_stress:
            stress = torch.stack([stress_from_strain_derivative(g, graph.cell, graph.pbc) for g in grads[1]])
        return energies, -grads[0], stress, atomic

    def spread(self, graph: AtomicGraph, compute_stress: bool = False,
               memory_budget: Optional[float] = None) -> Spread:
        """The members' mean and spread for a batch, calibrated by :attr:`calibration`."""
        from e3pot.model.chunked import plan
        from e3pot.model.runtime import run_model

        small = self._stack_max_atoms is None or graph.positions.shape[0] <= self._stack_max_atoms
        if self._stack is not None and small and plan(self.members[0], graph, compute_stress, memory_budget) is None:
            energies, forces, stress, atomic = self._stacked(graph, compute_stress)
        else:
            outs = [run_model(m, graph, compute_stress, memory_budget) for m in self.members]
            energies = torch.stack([o[0].detach() for o in outs])
            forces = torch.stack([o[1].detach() for o in outs])
            atomic = torch.stack([o[3].detach() for o in outs])
            stress = torch.stack([o[2].detach() for o in outs]) if compute_stress and outs[0][2] is not None else None
        return combine(energies.detach(), forces.detach(), None if stress is None else stress.detach(),
                       atomic.detach(), self.calibration)

    def __call__(self, graph: AtomicGraph, compute_stress: bool = False):
        s = self.spread(graph, compute_stress)
        return s.energy, s.forces, s.stress, s.atomic_energies


def spread(model, graph: AtomicGraph, compute_stress: bool = False, memory_budget: Optional[float] = None) -> Spread:
    """The :class:`Spread` of a committee or a shallow ensemble for a batch; ValueError for a model that has
    no uncertainty (one model, one head)."""
    if isinstance(model, Committee):
        return model.spread(graph, compute_stress, memory_budget)
    if getattr(model, "num_heads", 1) > 1 and hasattr(model, "head_energies"):
        from e3pot.model.chunked import plan

        if plan(model, graph, compute_stress, memory_budget) is not None:
            raise ValueError(f"the uncertainty of a shallow ensemble is computed in one piece, and this batch of "
                             f"{graph.positions.shape[0]} atoms needs more than the memory budget; give a larger "
                             "memory budget or fewer structures per batch")
        return head_spread(model, graph, compute_stress)
    raise ValueError(f"{describe(model)[0].upper()}{describe(model)[1:]} has no uncertainty: give a committee of models (several model files) or "
                     "a shallow ensemble (a model trained with model.heads > 1)")


def describe(model) -> str:
    """What ``model`` is, for messages: ``an e3 model with one read-out head``, ``an ExportedModel``."""
    heads = getattr(model, "num_heads", None)
    if heads is None:
        return f"a {type(model).__name__}"
    kind = getattr(model, "kind", "")
    article = "an" if kind[:1] in "aeiou" and kind else "a"
    return f"{article} {kind} model with {'one read-out head' if heads == 1 else f'{heads} read-out heads'}"


def fit_calibration(model, batches: Iterable) -> Calibration:
    """Factors that make the spreads of ``model`` (a committee or a shallow ensemble; its own calibration is
    set aside) match its errors on labelled structures, by maximum Gaussian likelihood
    (:func:`e3pot.calibration.fit_scale`): energy errors against ``energy_std``, force components against
    ``forces_std / sqrt(3)``. ``batches`` yields ``(graph, labels)`` pairs (:class:`AtomicGraph`,
    :class:`~e3pot.data.graph.Labels`; more items, such as the frame indices of a training loader, are ignored)."""
    from e3pot.calibration import fit_scale, force_components

    e_err, e_std, f_err, f_std = [], [], [], []
    for item in batches:
        graph, labels = item[0], item[1]
        if isinstance(model, Committee):
            raw, model.calibration = model.calibration, Calibration()
            try:
                s = model.spread(graph)
            finally:
                model.calibration = raw
        else:
            s = head_spread(model, graph, calibration=Calibration())
        e_err.append((s.energy.double() - labels.energy.double()).cpu().numpy())
        e_std.append(s.energy_std.double().cpu().numpy())
        comp_err, comp_std = force_components((s.forces.double() - labels.forces.double()).cpu().numpy(),
                                              s.forces_std.double().cpu().numpy())
        f_err.append(comp_err)
        f_std.append(comp_std)
    if not e_err:
        raise ValueError("no labelled structures to fit the calibration on")
    return Calibration(fit_scale(np.concatenate(e_err), np.concatenate(e_std)),
                       fit_scale(np.concatenate(f_err), np.concatenate(f_std)))
