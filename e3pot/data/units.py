"""Unit conversion at the edges. Inside e3pot everything is eV, Å, eV/Å and eV/Å^3."""
from __future__ import annotations

from ase import units as _u

ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": _u.kcal / _u.mol,
    "kJ/mol": _u.kJ / _u.mol,
    "Hartree": _u.Hartree,
    "Ha": _u.Hartree,
    "Ry": _u.Rydberg,
}
LENGTH_UNITS = {"Å": 1.0, "Angstrom": 1.0, "A": 1.0, "Bohr": _u.Bohr, "nm": 10.0}
PRESSURE_UNITS = {"GPa": _u.GPa, "kbar": 0.1 * _u.GPa, "bar": 1e-4 * _u.GPa}


def _lookup(table: dict, unit: str, kind: str) -> float:
    try:
        return table[unit]
    except KeyError:
        raise ValueError(f"unknown {kind} unit {unit!r}; known: {', '.join(table)}") from None


def energy_factor(unit: str) -> float:
    """Multiply a value in ``unit`` by this to get eV."""
    return _lookup(ENERGY_UNITS, unit, "energy")


def length_factor(unit: str) -> float:
    """Multiply a value in ``unit`` by this to get Å."""
    return _lookup(LENGTH_UNITS, unit, "length")


def stress_factor(unit: str | None, energy_unit: str, length_unit: str) -> float:
    """Factor to eV/Å^3; ``None`` means energy_unit / length_unit^3."""
    if unit is None:
        return energy_factor(energy_unit) / length_factor(length_unit) ** 3
    return _lookup(PRESSURE_UNITS, unit, "stress")
