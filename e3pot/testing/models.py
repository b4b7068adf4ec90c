"""Small random models of every kind, for tests: a few hundred parameters, nudged away from the
initialisation so that no output is zero by construction."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from e3pot.model.base import EnergyModel
from e3pot.model.kinds import build_model, select

TINY = dict(r_max=3.5, num_features=6, num_layers=2, num_basis=6, radial_hidden=16, radial_layers=1,
            avg_num_neighbors=4.0, energy_scale=1.3)
TEST_SPECIES = (1, 6, 8, 14)
TEST_SHIFTS = (-13.0, -1030.0, -2040.0, -100.0)  # eV, the order of magnitude of real E0s of H, C, O, Si
# An EGNN's gated messages and tanh coordinate updates start out near zero: at 0.1 its forces are
# ~0.01 eV/Å, too small for a relative check to mean much; at 0.3 they are ~1 eV/Å like the others'.
PERTURB = {"egnn": 0.3}


def random_model(kind: str = "e3", atomic_numbers: Sequence[int] = TEST_SPECIES, seed: int = 0,
                 dtype: torch.dtype = torch.float64, perturb: Optional[float] = None, **config) -> EnergyModel:
    """A tiny model of ``kind`` (see :mod:`e3pot.model.kinds`) in eval mode, ``dtype``. ``config``
    overrides the tiny sizes (``l_max=0`` for the invariant model, say); arguments ``kind`` does not
    take are dropped. Every parameter gets ``perturb`` (default: 0.1, :data:`PERTURB` for some kinds) x a
    standard normal added, drawn from ``seed``
    without touching torch's global random state. Energy shifts: :data:`TEST_SHIFTS` for the
    default species, zero otherwise."""
    if perturb is None:
        perturb = PERTURB.get(kind, 0.1)
    settings = dict(TINY)
    if tuple(atomic_numbers) == TEST_SPECIES:
        settings["energy_shift"] = list(TEST_SHIFTS)
    settings.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(dict(kind=kind, atomic_numbers=list(atomic_numbers), **select(kind, settings)))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model.to(dtype).eval()
