"""Predictions for many ``ase.Atoms`` at once, batched, on a stream of structures, and the files
that hold them."""
from __future__ import annotations

import os
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np
import torch

from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.kernels import check_kernels, use_kernels
from e3pot.model.runtime import check_finite, load_any, model_device, run_model, run_spread


def iter_predictions(model, structures: Iterable, batch_size: int = 32, compute_stress: Optional[bool] = None,
                     named: bool = False, memory_budget: Optional[float] = None,
                     compile: bool = False, kernels: Optional[str] = None,
                     uncertainty: bool = False) -> Iterator[Dict[str, np.ndarray]]:
    """Yield one dict per structure: ``energy`` (eV), ``forces`` (eV/Å), ``energies`` (per atom, eV)
    and, for periodic structures with a cell volume, ``stress`` (3x3, eV/Å^3, ASE sign). With
    ``uncertainty=True`` (a committee or a shallow ensemble, see :mod:`e3pot.model.ensemble`) also
    ``energy_std`` (eV), ``forces_std`` (per atom, eV/Å) and, with a stress, ``stress_std`` (3x3, eV/Å^3).

    ``model`` is a loaded model or the path of a model file or export, or a list of them (a committee). ``structures`` is one
    ``ase.Atoms`` or an iterable of them, consumed lazily, ``batch_size`` at a time, so it may be a
    generator over a file larger than memory. With ``named=True`` it yields ``(name, atoms)`` pairs
    and errors quote the name; otherwise structures are named by their position in the stream.
    ``memory_budget`` (GiB) bounds the memory of one batch; larger ones are evaluated in chunks
    (see :mod:`e3pot.model.chunked`). A structure whose energy or forces come out NaN or infinite raises
    :class:`~e3pot.model.runtime.NonFiniteError` naming it; nothing non-finite is returned.
    ``compile=True`` runs the compiled path (:mod:`e3pot.model.compiled`; it pays for its compilation
    after some thousands of small structures). ``kernels``: ``"torch"``, ``"cueq"`` or ``"auto"`` (see
    :mod:`e3pot.model.kernels`); default None: the model runs as it is given (a model file: with torch kernels).
    """
    from ase import Atoms

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if kernels is not None:
        check_kernels(kernels, compile)
    if compile:  # the compiled path traces the torch kernels
        model = use_kernels(model, "torch")
    if isinstance(model, (str, os.PathLike, list, tuple)) or compile:
        model = load_any(model, device=str(model_device(model)) if isinstance(model, torch.nn.Module) else "cpu",
                         compile=compile)
    if uncertainty:
        from e3pot.model.ensemble import describe, has_uncertainty, stored_heads

        if not has_uncertainty(model):
            what = describe(model)
            why = f"the model is {what}" if stored_heads(model) > 1 else f"{what} has no uncertainty"
            raise ValueError(f"uncertainty needs a committee (several model files) or a shallow ensemble (a model "
                             f"trained with model.heads > 1); {why}")
    if kernels is not None:
        model = use_kernels(model, kernels)
    if isinstance(structures, Atoms):
        structures = [("structure 0", structures)] if named else [structures]
    species = SpeciesMap(model.atomic_numbers)
    device = model_device(model)
    buffer: List = []
    names: List[str] = []

    def flush():
        graph = collate(buffer).to(device=device)  # float64 geometry (see the calculator)
        periodic = graph.pbc.any(dim=1).tolist()
        want_stress = any(periodic) if compute_stress is None else compute_stress
        spread = None
        if uncertainty:
            spread = run_spread(model, graph, want_stress, memory_budget)
            energy, forces, stress, atomic = spread[:4]
        else:
            energy, forces, stress, atomic = run_model(model, graph, want_stress, memory_budget)
        check_finite(energy, forces, graph.batch, names)
        n_atoms = torch.bincount(graph.batch, minlength=len(buffer)).tolist()
        forces = forces.detach().cpu().double().numpy()
        atomic = atomic.detach().cpu().double().numpy()
        energy = energy.detach().cpu().double().numpy()
        stress = None if stress is None else stress.detach().cpu().double().numpy()
        if spread is not None:
            energy_std = spread.energy_std.cpu().double().numpy()
            forces_std = spread.forces_std.cpu().double().numpy()
            stress_std = None if spread.stress_std is None else spread.stress_std.cpu().double().numpy()
        start = 0
        for k, n in enumerate(n_atoms):
            out = {"energy": float(energy[k]), "forces": forces[start:start + n], "energies": atomic[start:start + n]}
            if stress is not None and np.isfinite(stress[k]).all():
                out["stress"] = stress[k]
            if spread is not None:
                out["energy_std"] = float(energy_std[k])
                out["forces_std"] = forces_std[start:start + n]
                if "stress" in out and stress_std is not None:
                    out["stress_std"] = stress_std[k]
            start += n
            yield out

    for k, item in enumerate(structures):
        name, atoms = item if named else (f"structure {k}", item)
        if not isinstance(atoms, Atoms):
            raise TypeError(f"{name}: expected an ase.Atoms, got {type(atoms).__name__}")
        buffer.append(atoms_to_graph(atoms, species, model.r_max, source=name))
        names.append(name)
        if len(buffer) == batch_size:
            yield from flush()
            buffer, names = [], []
    if buffer:
        yield from flush()


def predict(model, structures: Iterable, batch_size: int = 32, compute_stress: Optional[bool] = None,
            memory_budget: Optional[float] = None, compile: bool = False,
            kernels: Optional[str] = None, uncertainty: bool = False) -> List[Dict[str, np.ndarray]]:
    """List version of :func:`iter_predictions`."""
    return list(iter_predictions(model, structures, batch_size, compute_stress, memory_budget=memory_budget,
                                 compile=compile, kernels=kernels, uncertainty=uncertainty))


PREFIX = "e3pot_"  # of the predictions' keys in extended XYZ
OUTPUT_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}


class PredictionWriter:
    """Appends structures with their predictions to an ASE trajectory (``fmt="traj"``: the
    predictions are each frame's calculator results) or an extended XYZ file (``fmt="extxyz"``:
    the structure as given, with its own labels, and the predictions under ``e3pot_energy`` (eV),
    ``e3pot_forces`` (eV/Å), ``e3pot_energies`` (eV, per atom) and ``e3pot_stress`` (eV/Å^3, Voigt
    order xx yy zz yz xz xy, periodic structures only)). Uncertainties, when predicted, go under
    ``e3pot_energy_std`` (eV), ``e3pot_forces_std`` (per atom, eV/Å) and ``e3pot_stress_std`` (Voigt,
    eV/Å^3) in both formats (in a trajectory, in each frame's ``info``). Use as a context manager or
    :meth:`close`."""

    def __init__(self, path: str, fmt: str):
        if fmt not in ("traj", "extxyz"):
            raise ValueError(f"unknown prediction file format {fmt!r}; use 'traj' or 'extxyz'")
        self.fmt = fmt
        if fmt == "traj":
            from ase.io.trajectory import Trajectory

            self.handle = Trajectory(path, "w")
        else:
            self.handle = open(path, "w")

    def write(self, atoms, pred: dict) -> None:
        from ase.stress import full_3x3_to_voigt_6_stress

        stress = full_3x3_to_voigt_6_stress(pred["stress"]) if "stress" in pred else None
        if self.fmt == "traj":
            from ase.calculators.singlepoint import SinglePointCalculator

            atoms = atoms.copy()  # the input's own labels stay with the input
            results = {"energy": pred["energy"], "forces": pred["forces"], "energies": pred["energies"]}
            if stress is not None:
                results["stress"] = stress
            atoms.calc = SinglePointCalculator(atoms, **results)
            for key, value in _uncertainties(pred).items():
                atoms.info[PREFIX + key] = value.tolist() if isinstance(value, np.ndarray) else value
            self.handle.write(atoms)
            return
        import ase.io

        ase.io.write(self.handle, with_predictions(atoms, pred), format="extxyz")

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _uncertainties(pred: dict) -> dict:
    """The uncertainties of a prediction (stress in Voigt order), by name without the prefix."""
    from ase.stress import full_3x3_to_voigt_6_stress

    out = {key: pred[key] for key in ("energy_std", "forces_std") if key in pred}
    if "stress_std" in pred:
        value = np.asarray(pred["stress_std"])
        out["stress_std"] = value if value.shape == (6,) else full_3x3_to_voigt_6_stress(value)
    return out


def with_predictions(atoms, pred: dict):
    """``atoms`` with a prediction (of :func:`iter_predictions`, or a calculator's ``results``) under the
    ``e3pot_*`` keys of :class:`PredictionWriter`'s extended XYZ: per-structure values in ``info``, per-atom
    ones in ``arrays``. Returns ``atoms`` (changed in place)."""
    from ase.stress import full_3x3_to_voigt_6_stress

    atoms.info[PREFIX + "energy"] = pred["energy"]
    atoms.arrays[PREFIX + "forces"] = np.asarray(pred["forces"])
    if "energies" in pred:
        atoms.arrays[PREFIX + "energies"] = np.asarray(pred["energies"])
    if "stress" in pred:
        stress = np.asarray(pred["stress"])
        atoms.info[PREFIX + "stress"] = stress if stress.shape == (6,) else full_3x3_to_voigt_6_stress(stress)
    for key, value in _uncertainties(pred).items():
        (atoms.arrays if key == "forces_std" else atoms.info)[PREFIX + key] = value
    return atoms
