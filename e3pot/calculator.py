"""ASE calculator: MD, relaxations and cell filters with an e3pot model, a committee of models or a shallow
ensemble (which also give their uncertainty)."""
from __future__ import annotations

import numbers
import os
from typing import List, Optional

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from e3pot.allocator import tune_allocator
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, VerletList, atoms_to_graph
from e3pot.files import append_extxyz, check_append_output
from e3pot.model.chunked import check_budget, warn_if_not_chunkable
from e3pot.model.compiled import CompiledModel
from e3pot.model.ensemble import Committee, describe, has_uncertainty
from e3pot.model.kernels import check_kernels, kernels_of, use_kernels
from e3pot.model.runtime import check_device, check_finite, load_any, run_model, run_spread
from e3pot.model.tables import check_radial, use_radial


class UncertainStructure(RuntimeError):
    """Raised by :class:`E3PotCalculator` with ``stop_when_uncertain=True`` when the force uncertainty of an atom
    passes the threshold. ``atoms`` holds the structure with its predictions and uncertainties (as written to the
    calculator's ``flagged_file``), ``max_forces_std`` (eV/Å) and ``atom`` (its index) say where."""

    def __init__(self, message: str, atoms, max_forces_std: float, atom: int):
        super().__init__(message)
        self.atoms, self.max_forces_std, self.atom = atoms, max_forces_std, atom


class E3PotCalculator(Calculator):
    """ASE calculator for e3pot models.

    Args:
        model: path (str or ``pathlib.Path``) of a model file (``model.pt``) or TorchScript export,
            or a loaded model; or a list of them: a committee (:class:`~e3pot.model.ensemble.Committee`), whose
            mean is the prediction and whose spread is the uncertainty.
        device: "cpu", "cuda" or "cuda:N"; anything else, or a GPU that torch cannot use, is a ValueError.
        dtype: "float32" or "float64"; default: the dtype the model was trained in.
        memory_budget: GiB that one evaluation may use; a structure that needs more is evaluated in
            chunks (same result; each chunk's forward runs twice, so somewhat more time per atom: see
            docs/benchmarks.md). Default: 6 GiB on the CPU (at most
            60% of the free memory), 60% of the free GPU memory on CUDA, or ``E3POT_MEMORY_BUDGET`` (GiB) if set;
            see :mod:`e3pot.model.chunked`. A model kind that is never chunked (``egnn``) ignores it, with a
            warning.
        skin: Å. With ``skin > 0`` the neighbour list is built with cutoff ``r_max + skin`` and reused
            until an atom has moved more than ``skin / 2`` (or the cell or the atoms change); forces
            are those of a fresh list. ``0`` (default) rebuilds it at every call.
        compile: run energy, forces and stress as one compiled graph (:mod:`e3pot.model.compiled`):
            faster for small molecules (docs/benchmarks.md), after a compilation of tens of seconds to minutes
            at the first call, which is announced on stderr. Needs a model file, not a TorchScript export.
        threads: sets torch's number of CPU threads for the whole process (``torch.set_num_threads``);
            default: torch's own (one per core). For molecules of a few dozen atoms, 1-2 threads are as
            fast as more.
        kernels: what runs the edge convolutions (:mod:`e3pot.model.kernels`): ``"torch"``, ``"cueq"``
            (cuEquivariance; needs ``e3pot[cueq]``) or ``"auto"`` (default: ``cueq`` on a GPU with cuEquivariance's
            CUDA kernels installed, else ``torch``). A runtime choice: the model file is the same for both.
            ``cueq`` is refused with ``compile`` and for exports and model kinds without such convolutions
            (``egnn``). ``kernels`` (the attribute) says which backend runs: ``"torch"`` or ``"cueq"``.
        uncertainty_threshold: eV/Å. When the force uncertainty (``forces_std``) of any atom passes it, the
            structure is recorded: appended to ``flagged`` (a list of ``ase.Atoms`` with the predictions and
            uncertainties in ``info``/``arrays``, as ``e3pot predict --uncertainty`` writes them) and to
            ``flagged_file`` when one is given; with ``stop_when_uncertain=True`` the calculator then raises
            :class:`UncertainStructure`, which ends an MD run. Needs a committee or a shallow ensemble.
        flagged_file: extended XYZ file that flagged structures are appended to (never truncated).
        radial: ``"table"``: run the radial networks as cubic Hermite tables (:mod:`e3pot.model.tables`; ``e3``
            model files, not compiled): the same function to about 1e-11 relative (forces 1e-8); on a CPU no faster
            than the networks so far (docs/benchmarks.md); ``"exact"``: the networks. Default None: the model as it is given (a
            model file: exact).
        stop_when_uncertain: raise :class:`UncertainStructure` at the first flagged structure.

    Implements ``energy``, ``free_energy``, ``forces``, per-atom ``energies`` and, for periodic
    cells, ``stress`` (ASE's Voigt order, eV/Å^3). A committee or a shallow ensemble (a model trained with
    ``model.heads > 1``) also puts its uncertainty in ``results``: ``energy_std`` (eV), ``forces_std`` (per atom,
    eV/Å) and, with a stress, ``stress_std`` (Voigt order, eV/Å^3), calibrated as :mod:`e3pot.model.ensemble`
    describes. ``neighbor_list_builds`` counts the list builds.
    On the CPU it applies :func:`e3pot.allocator.tune_allocator` (``E3POT_MALLOC=off`` to opt out).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model, device: str = "cpu", dtype: Optional[str] = None,
                 memory_budget: Optional[float] = None, skin: float = 0.0, compile: bool = False,
                 threads: Optional[int] = None, kernels: str = "auto", uncertainty_threshold: Optional[float] = None,
                 flagged_file: Optional[str] = None, stop_when_uncertain: bool = False, radial: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        for name, value in (("compile", compile), ("stop_when_uncertain", stop_when_uncertain)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        check_kernels(kernels, compile)
        if radial is not None:
            check_radial(radial, compile)
        check_budget(memory_budget)  # memory_budget, and E3POT_MEMORY_BUDGET whether or not it is used
        skin = _number("skin", skin, "Å", lambda v: v >= 0, "0 or more")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        if uncertainty_threshold is not None:
            uncertainty_threshold = _number("uncertainty_threshold", uncertainty_threshold, "eV/Å", lambda v: v > 0,
                                            "a positive force uncertainty,")
        elif stop_when_uncertain or flagged_file is not None:
            raise ValueError("stop_when_uncertain and flagged_file need an uncertainty_threshold (eV/Å)")
        if flagged_file is not None:
            if not isinstance(flagged_file, (str, os.PathLike)):
                raise TypeError(f"flagged_file must be a file name, got {flagged_file!r}")
            # refused before any model is loaded or step is run: never a model or other input, never mid-run
            flagged_file = check_append_output(flagged_file, "flagged_file", inputs=_paths(model))
        self.device = check_device(device)
        if self.device.type == "cpu":
            tune_allocator()
        if compile:  # the compiled path traces the torch kernels
            model = use_kernels(model, "torch")
        self.model = use_kernels(load_any(model, device=device, dtype=dtype, compile=compile), kernels)
        if radial is not None:
            self.model = use_radial(self.model, radial)
        self.kernels = kernels_of(self.model) or "torch"
        first = self.model.members[0] if isinstance(self.model, Committee) else self.model
        warn_if_not_chunkable(first.model if isinstance(first, CompiledModel) else first, memory_budget)
        self.uncertain = has_uncertainty(self.model)
        if uncertainty_threshold is not None and not self.uncertain:
            raise ValueError(f"uncertainty_threshold needs a model with an uncertainty, but {describe(self.model)} "
                             "has none: give a list of model files (a committee) or a model trained with "
                             "model.heads > 1 (a shallow ensemble)")
        self.uncertainty_threshold = uncertainty_threshold
        self.flagged_file = flagged_file
        self.stop_when_uncertain = stop_when_uncertain
        self.flagged: List = []
        self._calls = 0
        self.dtype = self.model.dtype
        self.r_max = float(self.model.r_max)
        self.species = SpeciesMap(self.model.atomic_numbers)
        self.memory_budget = memory_budget
        self.verlet = VerletList(self.r_max, skin) if skin > 0 else None
        self._builds = 0

    @property
    def neighbor_list_builds(self) -> int:
        return self.verlet.builds if self.verlet is not None else self._builds

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        graph = collate([atoms_to_graph(atoms, self.species, self.r_max, source="atoms", verlet=self.verlet)])
        self._builds += 1
        # geometry stays float64: edge vectors are formed in float64 and cast to the model dtype after
        # the subtraction, so that positions far from the origin keep their precision in float32
        graph = graph.to(device=self.device)
        self._calls += 1
        spread = None
        if self.uncertain:
            spread = run_spread(self.model, graph, compute_stress=bool(atoms.pbc.any()), memory_budget=self.memory_budget)
            energy, forces, stress, atomic = spread[:4]
        else:
            energy, forces, stress, atomic = run_model(self.model, graph, compute_stress=bool(atoms.pbc.any()),
                                                       memory_budget=self.memory_budget)
        check_finite(energy, forces, graph.batch, ["atoms"])
        # stress is NaN without periodic boundaries and a cell volume (ASE's convention, vacuum included)
        has_stress = stress is not None and bool(torch.isfinite(stress).all())
        if "stress" in properties and not has_stress:
            raise PropertyNotImplementedError(
                f"stress needs periodic boundaries and a cell with a volume; these atoms have pbc={atoms.pbc.tolist()} "
                f"and cell volume {abs(atoms.cell.volume):.3g} Å^3 (give a 2D cell a vacuum length along its "
                "non-periodic direction)")
        e = float(energy.detach()[0])
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": forces.detach().cpu().double().numpy(),
            "energies": atomic.detach().cpu().double().numpy(),
        }
        if has_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress.detach()[0].cpu().double().numpy())
        if spread is not None:
            self.results["energy_std"] = float(spread.energy_std[0])
            self.results["forces_std"] = spread.forces_std.cpu().double().numpy()
            if has_stress and spread.stress_std is not None:
                self.results["stress_std"] = full_3x3_to_voigt_6_stress(spread.stress_std[0].cpu().double().numpy())
            if self.uncertainty_threshold is not None:
                self._watch()

    def _watch(self) -> None:
        """Record the structure when an atom's force uncertainty passes the threshold; stop if asked to."""
        from e3pot.predict import with_predictions

        forces_std = self.results["forces_std"]
        atom = int(forces_std.argmax())
        worst = float(forces_std[atom])
        if not worst > self.uncertainty_threshold:
            return
        flagged = with_predictions(self.atoms.copy(), self.results)
        flagged.info.update(e3pot_max_forces_std=worst, e3pot_max_forces_std_atom=atom,
                            e3pot_uncertainty_threshold=self.uncertainty_threshold, e3pot_call=self._calls)
        self.flagged.append(flagged)
        where = ""
        if self.flagged_file is not None:
            append_extxyz(self.flagged_file, flagged)
            where = f"; saved to {self.flagged_file}"
        if self.stop_when_uncertain:
            raise UncertainStructure(
                f"force uncertainty {worst:.3f} eV/Å on atom {atom} ({flagged.get_chemical_symbols()[atom]}) passed "
                f"the threshold {self.uncertainty_threshold} eV/Å at call {self._calls}{where}", flagged, worst, atom)


def _number(name: str, value, unit: str, ok, rule: str) -> float:
    """``value`` as a float when it is a real number (not a bool or a string) that passes ``ok``; else an error
    naming the option."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in {unit}, got {value!r} ({type(value).__name__})")
    if not ok(float(value)):
        raise ValueError(f"{name} must be {rule} in {unit}, got {value!r}")
    return float(value)


def _paths(model) -> List[str]:
    """The file paths among the models given (one, or a committee's list), for the files rule."""
    models = model if isinstance(model, (list, tuple)) else [model]
    return [os.fspath(m) for m in models if isinstance(m, (str, os.PathLike))]
