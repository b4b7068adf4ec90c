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

A kind's settings and their defaults are written once, in its class's constructor (read here with
:func:`inspect.signature`); :func:`resolve` gives a kind the settings it takes and refuses the ones it
does not, so that a setting never goes unused without a word.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from e3pot.model.base import EnergyModel
from e3pot.model.egnn import EGNNPotential
from e3pot.model.potential import CartesianPotential, E3Potential

KINDS = {cls.kind: cls for cls in (E3Potential, CartesianPotential, EGNNPotential)}

# Constructor arguments fitted from the training data, not set in a training config.
FITTED = ("avg_num_neighbors", "energy_shift", "energy_scale")


def model_class(kind: str) -> type:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; use one of {', '.join(KINDS)}") from None


def _arguments(kind: str) -> Dict[str, inspect.Parameter]:
    """The constructor arguments of ``kind`` besides ``atomic_numbers``, in their order."""
    parameters = inspect.signature(model_class(kind).__init__).parameters
    return {name: p for name, p in parameters.items() if name not in ("self", "atomic_numbers")}


def hyperparameters(kind: str) -> set:
    """The constructor arguments of ``kind`` (besides ``atomic_numbers``)."""
    return set(_arguments(kind))


def defaults(kind: str) -> Dict[str, Any]:
    """The settings of ``kind`` (its constructor arguments that a training config sets: all but the
    species and the fitted statistics) and their defaults, in the constructor's order."""
    return {name: p.default for name, p in _arguments(kind).items() if name not in FITTED}


# Every setting of some kind, in the order of the kinds' constructors.
SETTINGS: Tuple[str, ...] = tuple(dict.fromkeys(name for kind in KINDS for name in defaults(kind)))


def kinds_taking(name: str) -> List[str]:
    """The kinds that take the setting ``name``."""
    return [kind for kind in KINDS if name in defaults(kind)]


def check_arguments(kind: str, given: Mapping[str, Any], takes: Iterable[str], prefix: str = "",
                    advice: str = "") -> None:
    """Refuse the entries of ``given`` that are not in ``takes`` (the arguments ``kind`` takes), with a
    message naming the kind, the arguments given and the ones the kind takes, then ``advice``.
    ``prefix`` goes before every name (``model.`` for the options of a training config)."""
    takes = list(takes)
    refused = [name for name in given if name not in takes]
    if refused:
        names = ", ".join(prefix + name for name in refused)
        values = ", ".join(f"{prefix}{name}={given[name]!r}" for name in refused)
        raise ValueError(f"model kind {kind!r} takes no {names} (given: {values}); the kind {kind!r} takes "
                         f"{', '.join(prefix + name for name in takes)}{advice}")


def resolve(kind: str, given: Mapping[str, Optional[Any]], prefix: str = "model.") -> Dict[str, Any]:
    """The settings that build a model of ``kind``: the values of ``given`` that are not None, and the
    kind's defaults (:func:`defaults`) for the others. A value that is not None counts as given, and
    one given for a setting that ``kind`` does not take is refused (a ValueError)."""
    table = defaults(kind)
    check_arguments(kind, {name: value for name, value in given.items() if value is not None}, table, prefix,
                    advice=f"; leave out (or set to null) the settings that {kind!r} does not take")
    return {name: default if given.get(name) is None else given[name] for name, default in table.items()}


def build_model(config: Mapping[str, Any]) -> EnergyModel:
    """The model described by ``config`` (a model's ``config``; without ``kind``: an ``e3`` model)."""
    config = dict(config)
    kind = config.pop("kind", "e3")
    takes = ["atomic_numbers", *_arguments(kind)]
    check_arguments(kind, config, takes)
    return model_class(kind)(**config)


def select(kind: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of ``settings`` that ``kind`` takes (the hyperparameters of a checkpoint written before
    they were resolved per kind hold those of every kind)."""
    wanted = hyperparameters(kind)
    return {k: v for k, v in settings.items() if k in wanted}


def describe(name: str) -> str:
    """Which kinds take the setting ``name`` and their defaults, for the help of a training option."""
    taking = kinds_taking(name)
    values = {kind: defaults(kind)[name] for kind in taking}
    if len(set(map(repr, values.values()))) == 1:
        default = f"default {next(iter(values.values()))!r}"
    else:
        default = "default " + ", ".join(f"{value!r} ({kind})" for kind, value in values.items())
    which = "every kind" if len(taking) == len(KINDS) else " and ".join(taking) + " only"
    return f"Taken by {which}; {default} when not given (null)"
