"""Exported models: TorchScript archives that run with torch alone (no e3pot training code).

The archive's ``forward`` takes the graph as plain tensors (see :mod:`e3pot.data.graph` for the
edge convention) and returns ``(energy, forces, stress, atomic_energies)``; its ``local_energy`` method
is the call of MD engines (:mod:`e3pot.model.engine`: LAMMPS's pair style loads these archives). The metadata
(species, cutoff, units, dtype, version, and for the kinds that chunked evaluation handles the
per-layer sizes of its memory estimate) travels in the archive as ``metadata.json``.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from e3nn.util.jit import compile as e3nn_compile
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from e3pot.data.graph import AtomicGraph
from e3pot.files import atomic_output
from e3pot.model.base import Runtime
from e3pot.model.engine import LocalEnergy, ghost_cutoff
from e3pot.model.forces import Conservative
from e3pot.model.io import dtype_name

METADATA_FILE = "metadata.json"


@compile_mode("script")
class _Exported(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.conservative = Conservative(model)
        self.engine = LocalEnergy(model)  # the same model: its weights are stored once

    def forward(self, positions: Tensor, species: Tensor, edge_index: Tensor, edge_shift: Tensor, batch: Tensor,
                cell: Tensor, pbc: Tensor, compute_stress: bool) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
        graph = AtomicGraph(positions, species, edge_index, edge_shift, batch, cell, pbc)
        return self.conservative(graph, compute_stress, False)

    @torch.jit.export
    def local_energy(self, positions: Tensor, species: Tensor, edge_index: Tensor, local: Tensor,
                     edge_shift: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The engines' call (LAMMPS): see :class:`e3pot.model.engine.LocalEnergy`."""
        return self.engine(positions, species, edge_index, local, edge_shift)


def export_metadata(model, fmt: str, metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What an export carries besides the weights (the same for every format)."""
    from e3pot import __version__

    config = dict(model.config)
    return {
        "format": fmt, "e3pot_version": __version__,
        "atomic_numbers": list(model.atomic_numbers), "r_max": model.r_max, "dtype": dtype_name(model.dtype),
        "units": {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å^3"},
        "config": config, "metadata": dict(metadata or getattr(model, "metadata", {}) or {}),
        "chunk_sizes": model.chunk_sizes(),
        "num_layers": int(config["num_layers"]),
        "ghost_cutoff": ghost_cutoff(model.r_max, config["num_layers"]),
    }


def export_model(model, path: str, metadata: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` (an ``E3Potential``) as a TorchScript archive at ``path``.

    The archive is written to a temporary file next to ``path`` and moved over it when complete (an
    existing file is replaced: commands check ``--overwrite`` themselves, see :mod:`e3pot.files`).
    """
    model = copy.deepcopy(model).eval()
    info = export_metadata(model, "e3pot-torchscript", metadata)  # before scripting replaces the submodules
    with warnings.catch_warnings():  # TorchScript's notes on e3nn's generated modules
        warnings.simplefilter("ignore", UserWarning)
        scripted = e3nn_compile(_Exported(model))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path) as tmp:
        torch.jit.save(scripted, tmp, _extra_files={METADATA_FILE: json.dumps(info)})
    return path


class ExportedModel(Runtime):
    """A loaded TorchScript archive with the attributes the calculator and predictor use.

    ``energy_model`` is the archive's TorchScript per-atom energy module, which chunked evaluation
    drives for structures too large for one call; None for a kind that is always evaluated in one
    piece, and for an archive written before the archives carried the sizes of the memory estimate
    (export the model again to evaluate large structures in chunks).
    """

    def __init__(self, path: str, device: str | torch.device = "cpu"):
        extra = {METADATA_FILE: ""}
        self.module = torch.jit.load(path, map_location=device, _extra_files=extra)
        info = json.loads(extra[METADATA_FILE])
        self.atomic_numbers = info["atomic_numbers"]
        self.r_max = float(info["r_max"])
        self.dtype = getattr(torch, info["dtype"])
        self.metadata = info
        self.device = torch.device(device)
        self.kind = str((info.get("config") or {}).get("kind", "e3"))
        sizes = info.get("chunk_sizes")
        self.written_without_sizes = "chunk_sizes" not in info  # by an earlier version: even an e3 model
        self._chunk_sizes = None if sizes is None else [(int(e), int(d)) for e, d in sizes]
        self.energy_model = None if sizes is None else self.module.conservative.model  # the layout of _Exported

    def chunk_sizes(self) -> Optional[List[Tuple[int, int]]]:
        return self._chunk_sizes

    def __call__(self, graph: AtomicGraph, compute_stress: bool = False):
        return self.module(*graph, compute_stress)


def is_torchscript(path: str) -> bool:
    """True for a TorchScript archive written by :func:`export_model`."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith(f"extra/{METADATA_FILE}") for name in zf.namelist())
