"""The structures an audit runs on: the user's, checked against the model, or built-in ones made of
the model's elements (g2 molecules and a small random periodic cell, so that stress is checked too)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols, covalent_radii

from e3pot.data.io import DataError
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph

Named = Tuple[str, Atoms]
BUILTIN_MOLECULES = 2
RATTLE = 0.05  # Å: breaks the molecules' point-group symmetry, so that no force is zero by symmetry


def checked(subject, structures: Sequence, max_structures: int) -> List[Named]:
    """(name, atoms) for the first ``max_structures`` of ``structures`` (``ase.Atoms`` or (name, atoms)
    pairs), as bare copies (no calculator, no constraints). Raises :class:`DataError` naming the first
    structure the model cannot evaluate (an unknown element, overlapping atoms, a degenerate cell)."""
    species = SpeciesMap(subject.atomic_numbers)
    out: List[Named] = []
    for k, item in enumerate(structures):
        if len(out) == max_structures:
            break
        name, atoms = item if isinstance(item, tuple) else (f"structure {k}", item)
        if not isinstance(atoms, Atoms):
            raise DataError(f"{name}: expected an ase.Atoms, got {type(atoms).__name__}")
        atoms_to_graph(atoms, species, subject.r_max, source=name)
        out.append((name, Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)))
    if not out:
        raise DataError("no structures to audit")
    return out


def builtin(atomic_numbers: Sequence[int], max_structures: int, seed: int) -> List[Named]:
    """Up to ``max_structures - 1`` g2 molecules made of the model's elements (those covering most of
    them first), then a random periodic cell of all of them. Raises :class:`DataError` if none can be made."""
    rng = np.random.default_rng([seed, 1])
    found: List[Named] = []
    for name in molecules(atomic_numbers)[:max(0, min(BUILTIN_MOLECULES, max_structures - 1))]:
        from ase.build import molecule

        atoms = molecule(name)
        atoms.positions += rng.normal(scale=RATTLE, size=atoms.positions.shape)
        found.append((f"{name} (built-in)", atoms))
    cell = random_cell(atomic_numbers, rng)
    found.append((f"random cell {cell.get_chemical_formula()} (built-in)", cell))
    return found[:max_structures]


def molecules(atomic_numbers: Sequence[int]) -> List[str]:
    """Names of g2 molecules of at least 3 atoms made only of ``atomic_numbers``, ordered so that each
    adds the most elements not yet covered, then closed shells (an even number of electrons) before
    radicals, then by how close it is to 8 atoms (cheap, not trivial)."""
    from ase.collections import g2

    known = set(int(z) for z in atomic_numbers)
    candidates = {}
    for name in g2.names:
        atoms = g2[name]
        numbers = set(int(z) for z in atoms.numbers)
        if numbers <= known and len(atoms) >= 3:
            candidates[name] = (numbers, len(atoms), int(atoms.numbers.sum()))
    ordered: List[str] = []
    covered: set = set()
    while candidates:
        name = min(candidates, key=lambda n: (-len(candidates[n][0] - covered), -len(candidates[n][0]),
                                               candidates[n][2] % 2, abs(candidates[n][1] - 8), n))
        covered |= candidates.pop(name)[0]
        ordered.append(name)
    return ordered


def random_cell(atomic_numbers: Sequence[int], rng: np.random.Generator, max_tries: int = 200) -> Atoms:
    """A small skewed periodic cell of 4-8 atoms cycling through ``atomic_numbers``, placed at random
    but no closer than 0.9 x the sum of covalent radii (images included), at about the density of a
    solid. Cells this small have several images of each atom within r_max."""
    from ase.geometry import get_distances

    if not len(atomic_numbers):
        raise DataError("the model lists no elements; no built-in structure can be made")
    n_atoms = min(8, max(4, 2 * len(atomic_numbers)))
    numbers = np.array([atomic_numbers[k % len(atomic_numbers)] for k in range(n_atoms)])
    radii = covalent_radii[numbers]
    volume = max(float(np.sum(4 / 3 * np.pi * radii ** 3) / 0.3), 5.0 * n_atoms)
    for attempt in range(20):  # loosen the cell until the atoms fit
        length = (volume * 1.1 ** attempt) ** (1 / 3)
        cell = length * (np.eye(3) + 0.1 * rng.uniform(-1, 1, size=(3, 3)))
        positions: List[np.ndarray] = []
        for k in range(n_atoms):
            for _ in range(max_tries):
                trial = rng.uniform(size=3) @ cell
                if not positions:
                    break
                _, d = get_distances(trial[None], np.array(positions), cell=cell, pbc=True)
                if np.all(d[0] >= 0.9 * (radii[k] + radii[:len(positions)])):
                    break
            else:
                break
            positions.append(trial)
        if len(positions) == n_atoms:
            return Atoms(numbers, positions=np.array(positions), cell=cell, pbc=True)
    symbols = ", ".join(chemical_symbols[int(z)] for z in atomic_numbers)
    raise DataError(f"no built-in periodic cell could be made of {symbols}; give structures to audit")
