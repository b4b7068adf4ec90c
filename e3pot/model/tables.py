"""How the radial networks run: ``exact`` (the networks themselves) or ``table`` (cubic Hermite tables of them,
:mod:`e3pot.nn.radial_table`), a runtime choice for inference like the kernel backend
(:mod:`e3pot.model.kernels`): the model file is the same for both.

``table`` is for the ``e3`` kind, eager (also in chunks); it is refused for the ``cartesian`` kind (whose radial
features carry the edge direction), for ``egnn`` (no radial networks of this form), for compiled and exported
models, and for training (the networks' weights change at every step). It is off by default.
"""
from __future__ import annotations

import copy
from typing import Optional

from e3pot.model.base import EnergyModel

RADIAL = ("exact", "table")
DEFAULT_POINTS = 2048


def check_radial(radial: str, compile: bool = False) -> str:
    if radial not in RADIAL:
        raise ValueError(f"unknown radial {radial!r}; use one of {', '.join(RADIAL)}")
    if radial == "table" and compile:
        raise ValueError("radial='table' runs eager (or in chunks); it is not compiled: leave out compile")
    return radial


def radial_of(model) -> Optional[str]:
    """``"table"`` or ``"exact"`` for a model with tabulatable radial networks, else None."""
    from e3pot.nn.radial_table import TabulatedRadial

    if not _tabulatable(model):
        return None
    return "table" if isinstance(model.layers[0].radial, TabulatedRadial) else "exact"


def _tabulatable(model) -> bool:
    from e3pot.model.potential import CartesianPotential, E3Potential

    return isinstance(model, E3Potential) and not isinstance(model, CartesianPotential)


def use_radial(model, radial: str = "exact", points: int = DEFAULT_POINTS):
    """``model`` with its radial networks run as ``radial`` says. ``exact`` returns an exact model as it is (and
    refuses a tabulated one: load the model file again); ``table`` returns a copy whose radial networks are tables
    of ``points`` intervals (a tabulated model is returned as it is). Models that cannot be tabulated (see the
    module's notes) are refused with ``table`` and returned unchanged with ``exact``."""
    check_radial(radial)
    current = radial_of(model)
    if radial == "exact":
        if current == "table":
            raise ValueError("this model runs tabulated radial networks; load its model file again for the exact ones")
        return model
    if current == "table":
        return model
    if current is None:
        what = getattr(model, "kind", type(model).__name__)
        if not isinstance(model, EnergyModel):
            what = f"a {type(model).__name__} (compiled or exported)"
        raise ValueError(f"radial='table' needs an eager e3 model (a model file); {what} has no radial networks "
                         "that a table can replace")
    from e3pot.nn.radial_table import EdgeLength, TabulatedRadial

    tabulated = copy.deepcopy(model)
    for layer in tabulated.layers:
        layer.radial = TabulatedRadial(model.radial, layer.radial, model.r_max, points)
        layer.radial_edge_floats = 2 * layer.conv.weight_numel  # the gathered rows' interpolation, kept per edge
    tabulated.radial = EdgeLength()
    tabulated.fuse_radial = False
    return tabulated.eval()
