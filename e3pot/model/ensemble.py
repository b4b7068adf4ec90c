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

A committee whose members are shallow ensembles is the mixture of its members, each member weighing 1/K
and, within a member, each of its heads the same. By the law of total variance its variance is

    var = mean over members k of var_k  +  variance over members of mean_k

with ``mean_k`` the heads' mean of member k (a plain member's prediction) and ``var_k`` the variance of
member k's heads, scaled by that member's own calibration (``energy_scale**2`` for energies,
``forces_scale**2`` for forces and stress); a plain member has ``var_k = 0``. The reported spread is
``sqrt(var)``, times the committee's calibration (which :func:`fit_calibration` fits on top of the
members' own). With equal head counts and no calibration this is the spread of all K x H heads taken
together; a committee of copies of one shallow ensemble has that ensemble's spread; a committee of plain
models, the spread of its members, computed as above. A shallow ensemble that runs its heads' mean only (an
export, a compiled model) cannot be a member: its spread would be lost without a word.

The members of a committee may list their elements in different orders: the committee's order is its
first member's (:attr:`Committee.atomic_numbers`, what graphs for it are built with), and each member
whose order differs gets the graph's species indices mapped to its own (:meth:`Committee.member_graph`).
"""
from __future__ import annotations

import dataclasses
import os
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
    """A committee, or an eager model with several read-out heads (a shallow ensemble whose heads it runs)."""
    return isinstance(model, Committee) or (getattr(model, "num_heads", 1) > 1 and hasattr(model, "head_energies"))


def stored_heads(model) -> int:
    """The read-out heads of the model behind ``model``: an eager model's own, a compiled model's eager model's,
    an export's (from its stored config); 1 for anything else."""
    heads = getattr(model, "num_heads", None)
    if heads is None:
        config = getattr(model, "config", None)  # a compiled model keeps its eager model's
        if not isinstance(config, dict):
            config = (getattr(model, "metadata", None) or {}).get("config")  # an export's
        heads = (config or {}).get("heads", 1) if isinstance(config, dict) else 1
    try:
        return max(int(heads), 1)
    except (TypeError, ValueError):
        return 1


def _members_heads(name: str, model, heads: int) -> None:
    """Refuse a member that is a shallow ensemble whose heads do not run (an export, a compiled model)."""
    if heads > 1 and not hasattr(model, "head_energies"):
        if type(model).__name__ == "CompiledModel":
            what, fix = "compiled, which runs the heads' mean only", "load its model file without compile"
        else:
            what, fix = "exported, which keeps the heads' mean only", "give its model file (model.pt)"
        raise ValueError(f"{name} is a shallow ensemble ({heads} read-out heads) {what}: in a committee its heads' "
                         f"spread would be lost; {fix}")


def _symbols(numbers: Sequence[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in numbers)


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
            :func:`e3pot.model.runtime.load_any`), at least two. All must know the same elements (in any
            order: see the module's notes) and share one cutoff. A member may be a shallow ensemble (a model
            file with several heads): see the module's notes for how the spreads combine.
        device, dtype, compile: as for :func:`~e3pot.model.runtime.load_any`, for every member.
        calibration: factors for the spreads (:class:`Calibration`); default none (1, 1).
        stacked: ``"auto"`` (default): evaluate the members in one pass with stacked weights when all are eager
            models of one architecture on one device and the batch has at most :data:`STACK_MAX_ATOMS` atoms
            (where it pays: benchmarks/uncertainty_cost.py), else one after the other; ``True``: stacked for
            any batch that needs no chunks; ``False``: always one after the other.
        names: how errors name the members (default: the paths given, or ``member k``).

    Called like a runtime, ``committee(graph, compute_stress)`` returns the mean ``(energy, forces, stress,
    atomic_energies)``; :meth:`spread` returns the :class:`Spread`. Graphs for it are built with its
    :attr:`atomic_numbers` (its first member's order).
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
        if len(names) != len(members):
            raise ValueError(f"names: {len(names)} names for {len(members)} members")
        self.names = [str(n) for n in names]
        self.members = [load_any(m, device=device, dtype=dtype, compile=compile) for m in members]
        first = self.members[0]
        order = [int(z) for z in first.atomic_numbers]
        self.device = torch.device(device)
        # per member: None when it lists its elements in the committee's order, else the index of each of the
        # committee's species in the member's own list
        self._species: List[Optional[Tensor]] = []
        for name, m in zip(self.names, self.members):
            theirs = [int(z) for z in m.atomic_numbers]
            if sorted(theirs) != sorted(order):
                raise ValueError(f"committee members must know the same elements: {self.names[0]} knows "
                                 f"{_symbols(order)} (atomic numbers {order}), {name} knows {_symbols(theirs)} "
                                 f"(atomic numbers {theirs})")
            if float(m.r_max) != float(first.r_max):
                raise ValueError(f"committee members must share one cutoff: {self.names[0]} has r_max "
                                 f"{first.r_max} Å, {name} has {m.r_max} Å")
            if m.dtype != first.dtype:
                raise ValueError(f"committee members must run in one dtype: {self.names[0]} runs in {first.dtype}, "
                                 f"{name} in {m.dtype}; give dtype= to load them all in one")
            self._species.append(None if theirs == order else
                                 torch.tensor([theirs.index(z) for z in order], dtype=torch.long, device=self.device))
        self.heads = [stored_heads(m) for m in self.members]
        for name, m, heads in zip(self.names, self.members, self.heads):
            _members_heads(name, m, heads)
        self.atomic_numbers = order
        self.r_max = float(first.r_max)
        self.dtype = first.dtype
        self.kind = getattr(first, "kind", "committee")
        self.calibration = calibration or Calibration()
        self.metadata = {}
        if stacked not in ("auto", False, True):
            raise ValueError(f"stacked must be 'auto', True or False, got {stacked!r}")
        self._stack = self._stack_weights() if stacked else None
        self._stack_max_atoms = None if stacked is True else STACK_MAX_ATOMS
        if stacked is True and self._stack is None:
            raise ValueError("stacked=True needs eager members of one architecture (the same model config, elements "
                             "in the same order) with one read-out head each")

    def __len__(self) -> int:
        return len(self.members)

    def member_graph(self, k: int, graph: AtomicGraph) -> AtomicGraph:
        """``graph`` (built with the committee's :attr:`atomic_numbers`) as member ``k`` reads it: its species
        indices mapped to the member's own order of the elements."""
        index = self._species[k]
        if index is None:
            return graph
        return graph._replace(species=index.to(graph.species.device)[graph.species])

    def _stack_weights(self):
        from e3pot.model.base import EnergyModel

        members = self.members
        if not all(isinstance(m, EnergyModel) and type(m) is type(members[0]) for m in members):
            return None
        # one config: the same elements in the same order, so that one graph serves every member
        if any(m.config != members[0].config or getattr(m, "num_heads", 1) != 1 for m in members):
            return None
        if any(index is not None for index in self._species):
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
        """The members' mean and spread for a batch, calibrated by :attr:`calibration` (see the module's notes)."""
        from e3pot.model.chunked import plan
        from e3pot.model.runtime import run_model

        if any(heads > 1 for heads in self.heads):
            return self._mixture(graph, compute_stress, memory_budget)
        small = self._stack_max_atoms is None or graph.positions.shape[0] <= self._stack_max_atoms
        if self._stack is not None and small and plan(self.members[0], graph, compute_stress, memory_budget) is None:
            energies, forces, stress, atomic = self._stacked(graph, compute_stress)
        else:
            outs = [run_model(m, self.member_graph(k, graph), compute_stress, memory_budget)
                    for k, m in enumerate(self.members)]
            energies = torch.stack([o[0].detach() for o in outs])
            forces = torch.stack([o[1].detach() for o in outs])
            atomic = torch.stack([o[3].detach() for o in outs])
            stress = torch.stack([o[2].detach() for o in outs]) if compute_stress and outs[0][2] is not None else None
        return combine(energies.detach(), forces.detach(), None if stress is None else stress.detach(),
                       atomic.detach(), self.calibration)

    def _mixture(self, graph: AtomicGraph, compute_stress: bool, memory_budget: Optional[float]) -> Spread:
        """The spread of a committee with shallow ensembles among its members (the module's notes)."""
        from e3pot.model.runtime import run_model

        means, within = [], []  # per member: (energy, forces, stress, atomic); (energy, forces, stress) variances
        for k, (name, m) in enumerate(zip(self.names, self.members)):
            g = self.member_graph(k, graph)
            if self.heads[k] > 1:
                try:
                    s = spread(m, g, compute_stress, memory_budget)  # calibrated by the member's own factors
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
                means.append((s.energy, s.forces, s.stress, s.atomic_energies))
                within.append((s.energy_std ** 2, s.forces_std ** 2,
                               None if s.stress_std is None else s.stress_std ** 2))
            else:
                out = run_model(m, g, compute_stress, memory_budget)
                means.append(tuple(None if t is None else t.detach() for t in out))
                within.append(None)
        energies = torch.stack([p[0] for p in means])
        forces = torch.stack([p[1] for p in means])
        atomic = torch.stack([p[3] for p in means])
        var_e = torch.stack([torch.zeros_like(energies[0]) if w is None else w[0] for w in within]).mean(0)
        var_f = torch.stack([torch.zeros_like(forces[0, :, 0]) if w is None else w[1] for w in within]).mean(0)
        var_e = var_e + energies.var(dim=0, unbiased=False)
        var_f = var_f + forces.var(dim=0, unbiased=False).sum(-1)
        stress_mean = stress_std = None
        if compute_stress and all(p[2] is not None for p in means):
            stress = torch.stack([p[2] for p in means])
            var_s = torch.stack([torch.zeros_like(stress[0]) if w is None or w[2] is None else w[2]
                                 for w in within]).mean(0)
            stress_mean = stress.mean(0)
            stress_std = (var_s + stress.var(dim=0, unbiased=False)).sqrt() * self.calibration.forces
        return Spread(energies.mean(0), forces.mean(0), stress_mean, atomic.mean(0),
                      var_e.sqrt() * self.calibration.energy, var_f.sqrt() * self.calibration.forces, stress_std,
                      len(self.members))

    def __call__(self, graph: AtomicGraph, compute_stress: bool = False):
        s = self.spread(graph, compute_stress)
        return s.energy, s.forces, s.stress, s.atomic_energies


def spread(model, graph: AtomicGraph, compute_stress: bool = False, memory_budget: Optional[float] = None) -> Spread:
    """The :class:`Spread` of a committee or a shallow ensemble for a batch; ValueError for a model that has
    no uncertainty (one model, one head; or a shallow ensemble exported or compiled, which runs its heads' mean
    only)."""
    if isinstance(model, Committee):
        return model.spread(graph, compute_stress, memory_budget)
    if getattr(model, "num_heads", 1) > 1 and hasattr(model, "head_energies"):
        from e3pot.model.chunked import plan

        if plan(model, graph, compute_stress, memory_budget) is not None:
            raise ValueError(f"the uncertainty of a shallow ensemble is computed in one piece, and this batch of "
                             f"{graph.positions.shape[0]} atoms needs more than the memory budget; give a larger "
                             "memory budget or fewer structures per batch")
        return head_spread(model, graph, compute_stress)
    what = describe(model)
    if stored_heads(model) > 1:
        raise ValueError(f"{what[0].upper()}{what[1:]}; it has no uncertainty here")
    raise ValueError(f"{what[0].upper()}{what[1:]} has no uncertainty: give a committee of models (several model "
                     "files) or a shallow ensemble (a model trained with model.heads > 1)")


def describe(model) -> str:
    """What ``model`` is, for messages: ``an e3 model with one read-out head``, ``an exported e3 model with one
    read-out head``, ``a committee of 3 models``; a shallow ensemble that runs its heads' mean only (exported,
    compiled) says so and what gives its spread."""
    if isinstance(model, Committee):
        return f"a committee of {len(model)} models"
    from e3pot.model.base import Runtime

    heads = getattr(model, "num_heads", None)
    runtime = isinstance(model, Runtime)
    if heads is None and not runtime:
        name = type(model).__name__
        return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"
    heads = stored_heads(model)
    kind = str(getattr(model, "kind", "") or "")
    model_words = f"{kind} model" if kind else "model"
    with_heads = f"with {'one read-out head' if heads == 1 else f'{heads} read-out heads'}"
    if not runtime:
        return f"{'an' if model_words[:1] in 'aeiou' else 'a'} {model_words} {with_heads}"
    if type(model).__name__ == "CompiledModel":
        text = f"a compiled {model_words} {with_heads}"
        if heads > 1:
            text += ", which runs the heads' mean only (their spread needs the model run without compile)"
        return text
    if heads > 1:
        return (f"an export of {'an' if model_words[:1] in 'aeiou' else 'a'} {model_words} {with_heads}, which keeps "
                "the heads' mean only (their spread needs the model file, model.pt)")
    return f"an exported {model_words} {with_heads}"


class IdenticalMembersWarning(UserWarning):
    """Members of a committee (or heads of a shallow ensemble) that predict the same: their spread says nothing."""


def identical_predictions_message(model, where: str = "every structure") -> str:
    """Why a spread that is exactly 0 for ``where`` means nothing, for ``model`` (a committee or a shallow
    ensemble)."""
    if isinstance(model, Committee):
        return (f"the spread is exactly 0 for {where}: the {len(model)} committee members give identical "
                "predictions, so it measures nothing (the same model file given twice, or members trained with the "
                "same seed and the same data)")
    return (f"the spread is exactly 0 for {where}: the {stored_heads(model)} heads of this shallow ensemble give "
            "identical predictions, so it measures nothing (heads that were never trained apart)")


def duplicate_members(committee: Committee) -> List[str]:
    """Members of ``committee`` that are another member again (the same file, or the same loaded model), as
    ``"b.pt is a.pt again"`` texts; they add nothing to the spread."""
    def same_file(a: str, b: str) -> bool:
        try:
            return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
        except OSError:
            return False

    out = []
    for i in range(1, len(committee.members)):
        for j in range(i):
            if committee.members[i] is committee.members[j] or same_file(committee.names[i], committee.names[j]):
                out.append(f"{committee.names[i]} is {committee.names[j]} again")
                break
    return out


def fit_calibration(model, batches: Iterable) -> Calibration:
    """Factors that make the spreads of ``model`` (a committee or a shallow ensemble; its own calibration is
    set aside, while a committee's members that are shallow ensembles keep theirs: the committee's factors
    multiply their mixture, see the module's notes) match its errors on labelled structures, by maximum
    Gaussian likelihood (:func:`e3pot.calibration.fit_scale`): energy errors against ``energy_std``, force
    components against ``forces_std / sqrt(3)``. ``batches`` yields ``(graph, labels)`` pairs
    (:class:`AtomicGraph`, :class:`~e3pot.data.graph.Labels`; more items, such as the frame indices of a
    training loader, are ignored). ValueError for a model without an uncertainty."""
    from e3pot.calibration import fit_scale, force_components

    if not has_uncertainty(model):
        what = describe(model)
        raise ValueError(f"a calibration needs an uncertainty, but {what} has none: give a committee or a shallow "
                         "ensemble (a model trained with model.heads > 1)")

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
