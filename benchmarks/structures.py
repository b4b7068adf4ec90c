"""Structures for the speed benchmark: aspirin (21 atoms) and a periodic liquid-water box.

By default they are read from a folder holding ``aspirin.xyz`` and ``water_box.xyz`` (the same
files the peer benchmarks use, so that timings compare like with like). Without that folder,
``make_water_box`` builds a box and ethanol stands in for aspirin.
"""
from __future__ import annotations

import os

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.io import read


def make_water_box(n_per_side: int = 4, density: float = 1.0, seed: int = 0) -> Atoms:
    """n^3 randomly oriented water molecules on a cubic grid at ``density`` g/cm^3, periodic."""
    from scipy.spatial.transform import Rotation

    n = n_per_side ** 3
    mass = n * 18.015 / 6.02214076e23  # g
    length = (mass / density) ** (1 / 3) * 1e8  # Å
    water = molecule("H2O")
    water.positions -= water.get_center_of_mass()
    rotations = Rotation.random(n, random_state=seed).as_matrix()
    grid = (np.indices((n_per_side,) * 3).reshape(3, -1).T + 0.5) * (length / n_per_side)
    positions = np.concatenate([water.positions @ R.T + x for R, x in zip(rotations, grid)])
    return Atoms("OH2" * n, positions=positions, cell=[length] * 3, pbc=True)


def load(data_dir: str | None):
    """(aspirin-sized molecule, water box, description)."""
    if data_dir and os.path.exists(os.path.join(data_dir, "aspirin.xyz")):
        return (read(os.path.join(data_dir, "aspirin.xyz")),
                read(os.path.join(data_dir, "water_box.xyz"), format="extxyz"),
                f"aspirin.xyz and water_box.xyz from {data_dir}")
    return molecule("CH3CH2OH"), make_water_box(4), "ethanol and a generated 64-molecule water box"


def perturbed(atoms: Atoms, n: int, seed: int = 0, sigma: float = 0.05):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += sigma * rng.standard_normal(a.positions.shape)
        out.append(a)
    return out
