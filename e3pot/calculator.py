"""ASE calculator: MD, relaxations and cell filters with an e3pot model."""
from __future__ import annotations

from typing import Optional

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from e3pot.allocator import tune_allocator
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.runtime import check_finite, load_any, run_model


class E3PotCalculator(Calculator):
    """ASE calculator for e3pot models.

    Args:
        model: path (str or ``pathlib.Path``) of a model file (``model.pt``) or TorchScript export,
            or a loaded model.
        device: "cpu" or "cuda".
        dtype: "float32" or "float64"; default: the dtype the model was trained in.

    Implements ``energy``, ``free_energy``, ``forces``, per-atom ``energies`` and, for periodic
    cells, ``stress`` (ASE's Voigt order, eV/Å^3). The neighbour list is rebuilt at every call.
    On the CPU it applies :func:`e3pot.allocator.tune_allocator` (``E3POT_MALLOC=off`` to opt out).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model, device: str = "cpu", dtype: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if torch.device(device).type == "cpu":
            tune_allocator()
        self.model = load_any(model, device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = self.model.dtype
        self.r_max = float(self.model.r_max)
        self.species = SpeciesMap(self.model.atomic_numbers)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        graph = collate([atoms_to_graph(atoms, self.species, self.r_max, source="atoms")])
        graph = graph.to(device=self.device, dtype=self.dtype)
        energy, forces, stress, atomic = run_model(self.model, graph, compute_stress=bool(atoms.pbc.any()))
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
