"""The model kinds, chosen with ``model.kind`` in a training config.

=========  =====================================================================================
kind       what it is
=========  =====================================================================================
e3         :class:`~e3pot.model.potential.E3Potential`: E(3)-equivariant features up to
           ``l_max`` (NequIP-style). At ``l_max: 0`` it sees distances only (invariant,
           SchNet-like).
cartesian  :class:`~e3pot.model.potential.CartesianPotential`: the same message passing fed
           raw Cartesian edge directions; nothing built in (train with ``data.augment``).
egnn       :class:`~e3pot.model.egnn.EGNNPotential`: E(n)-equivariant message passing on scalars
           and coordinates (Satorras et al., 2021).
=========  =====================================================================================
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

from e3pot.model.base import EnergyModel
from e3pot.model.egnn import EGNNPotential
from e3pot.model.potential import CartesianPotential, E3Potential

KINDS = {cls.kind: cls for cls in (E3Potential, CartesianPotential, EGNNPotential)}


def model_class(kind: str) -> type:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}") from None


def hyperparameters(kind: str) -> set:
    """The constructor arguments of ``kind`` (besides ``atomic_numbers``)."""
    return set(inspect.signature(model_class(kind).__init__).parameters) - {"self", "atomic_numbers"}


def build_model(config: Mapping[str, Any]) -> EnergyModel:
    """The model described by ``config`` (a model's ``config``; without ``kind``: an ``e3`` model)."""
    config = dict(config)
    kind = config.pop("kind", "e3")
    unknown = set(config) - hyperparameters(kind) - {"atomic_numbers"}
    if unknown:
        raise ValueError(f"model kind {kind!r} takes no {', '.join(sorted(unknown))}")
    return model_class(kind)(**config)


def select(kind: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of ``settings`` that ``kind`` takes (training hyperparameters hold those of every kind)."""
    wanted = hyperparameters(kind)
    return {k: v for k, v in settings.items() if k in wanted}
