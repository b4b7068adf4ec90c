"""ASE calculator: MD, relaxations and cell filters with an e3pot model."""
from __future__ import annotations

from typing import Optional

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from e3pot.allocator import tune_allocator
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, VerletList, atoms_to_graph
from e3pot.model.chunked import check_budget, warn_if_not_chunkable
from e3pot.model.compiled import CompiledModel
from e3pot.model.kernels import check_kernels, kernels_of, use_kernels
from e3pot.model.runtime import check_device, check_finite, load_any, run_model


class E3PotCalculator(Calculator):
    """ASE calculator for e3pot models.

    Args:
        model: path (str or ``pathlib.Path``) of a model file (``model.pt``) or TorchScript export,
            or a loaded model.
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

    Implements ``energy``, ``free_energy``, ``forces``, per-atom ``energies`` and, for periodic
    cells, ``stress`` (ASE's Voigt order, eV/Å^3). ``neighbor_list_builds`` counts the list builds.
    On the CPU it applies :func:`e3pot.allocator.tune_allocator` (``E3POT_MALLOC=off`` to opt out).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model, device: str = "cpu", dtype: Optional[str] = None,
                 memory_budget: Optional[float] = None, skin: float = 0.0, compile: bool = False,
                 threads: Optional[int] = None, kernels: str = "auto", **kwargs):
        super().__init__(**kwargs)
        check_kernels(kernels, compile)
        check_budget(memory_budget)  # memory_budget, and E3POT_MEMORY_BUDGET whether or not it is used
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)
        self.device = check_device(device)
        if self.device.type == "cpu":
            tune_allocator()
        if compile:  # the compiled path traces the torch kernels
            model = use_kernels(model, "torch")
        self.model = use_kernels(load_any(model, device=device, dtype=dtype, compile=compile), kernels)
        self.kernels = kernels_of(self.model) or "torch"
        warn_if_not_chunkable(self.model.model if isinstance(self.model, CompiledModel) else self.model, memory_budget)
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
