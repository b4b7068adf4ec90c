"""What every e3pot model kind shares: the species it knows, its cutoff, and the energy bookkeeping.

A model maps an :class:`~e3pot.data.graph.AtomicGraph` to per-atom energies (n_atoms,) in eV,
float64. The network's output is multiplied by ``energy_scale`` and the per-species
``energy_shift`` is added in float64, whatever dtype the network runs in: the shifts are
thousands of eV, where float32 steps by 1-2 meV. Forces and stress never come from the model
itself but from :mod:`e3pot.model.forces`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class EnergyModel(nn.Module):
    """Base of the model kinds (see :mod:`e3pot.model.kinds`); subclasses build the network and
    call :meth:`_init_species` first. ``config`` holds the constructor's arguments plus ``kind``,
    so that ``kinds.build_model(model.config)`` makes the same model again."""

    kind = "base"
    num_heads = 1  # read-out heads (a shallow ensemble has several: :mod:`e3pot.model.ensemble`)

    def _init_species(self, atomic_numbers: List[int], r_max: float, energy_shift: Optional[List[float]],
                      energy_scale: float, config: Dict[str, Any]) -> None:
        if len(atomic_numbers) == 0 or len(set(atomic_numbers)) != len(atomic_numbers):
            raise ValueError(f"atomic_numbers must be non-empty and unique, got {atomic_numbers}")
        if not r_max > 0:
            raise ValueError(f"r_max must be positive, got {r_max}")
        n_species = len(atomic_numbers)
        if energy_shift is not None and len(energy_shift) != n_species:
            raise ValueError(f"energy_shift has {len(energy_shift)} entries for {n_species} species")
        self.config = dict(kind=self.kind, atomic_numbers=[int(z) for z in atomic_numbers], r_max=float(r_max),
                           **config)
        self.atomic_numbers = list(self.config["atomic_numbers"])
        self.r_max = float(r_max)
        self.num_species = n_species
        shift = torch.zeros(n_species) if energy_shift is None else torch.tensor(energy_shift)
        self.register_buffer("energy_shift", shift.double())
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale)))

    @torch.jit.export
    def onehot(self, species: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(species, self.num_species).to(self.energy_scale.dtype)

    @torch.jit.export
    def scale_shift(self, out: Tensor, species: Tensor) -> Tensor:
        """Network output per atom (n_atoms,) in the model dtype -> energies in eV, float64."""
        return (out * self.energy_scale).to(torch.float64) + self.energy_shift[species]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network runs in (positions and cell are cast to it)."""
        return self.energy_scale.dtype

    def chunk_sizes(self) -> Optional[List[Tuple[int, int]]]:
        """Per interaction layer, (numbers an energy+forces call keeps per edge, features per atom
        entering the layer): what the memory estimate of chunked evaluation (:mod:`e3pot.model.chunked`)
        needs. None for a kind that is always evaluated in one piece."""
        return None

    def _apply(self, fn, recurse=True):
        # .to(dtype)/.float()/.cuda() move the per-species shifts but never lower them from float64
        shift = self.energy_shift
        super()._apply(fn, recurse)
        self.energy_shift = shift.to(device=self.energy_scale.device, dtype=torch.float64)
        return self


class Runtime:
    """A model run other than by calling it eagerly: compiled (:mod:`e3pot.model.compiled`) or exported
    (:mod:`e3pot.model.export`). Called as ``runtime(graph, compute_stress)``, it returns ``(energy, forces,
    stress, atomic_energies)``; the dispatcher (:func:`e3pot.model.runtime.evaluate`) reads the rest here.

    Attributes:
        energy_model: the per-atom energy module the runtime runs, which chunked evaluation drives for
            structures too large for one call (a compiled model's eager model, an export's TorchScript
            one), or None when there is none to drive.
        kind: the model kind (see :mod:`e3pot.model.kinds`).
        atomic_numbers, r_max, dtype, device: as for an eager model.
    """

    energy_model: Optional[nn.Module]
    kind: str
    atomic_numbers: List[int]
    r_max: float
    dtype: torch.dtype
    device: torch.device

    def chunk_sizes(self) -> Optional[List[Tuple[int, int]]]:
        """As :meth:`EnergyModel.chunk_sizes`, for :attr:`energy_model`; None when it is not evaluated in chunks."""
        raise NotImplementedError

    def one_piece_reason(self) -> Optional[str]:
        """Why this runtime, rather than its model kind, evaluates every structure in one piece (for messages);
        None when the kind decides."""
        return None
