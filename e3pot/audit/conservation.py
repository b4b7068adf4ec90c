"""Energy conservation in a short NVE run through the ASE calculator: VelocityVerlet from a
Maxwell-Boltzmann start, total energy per atom at every step."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from ase import Atoms, units

from e3pot.audit import tolerances as tol
from e3pot.audit.report import Check
from e3pot.calculator import E3PotCalculator
from e3pot.data.io import DataError
from e3pot.model.runtime import NonFiniteError

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def nve_energies(model, atoms: Atoms, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Total energy per atom (eV) before the first step and after each of ``steps`` steps."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = E3PotCalculator(model)
    thermalize_momenta(atoms, tol.NVE_TEMPERATURE_K, rng=rng)
    Stationary(atoms)  # a drifting centre of mass would carry kinetic energy that is no part of the test
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, timestep=tol.NVE_DT_FS * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=1)
    dyn.run(steps)
    return np.array(energies)


def conservation_checks(subject, name: str, atoms: Atoms, steps: int, rng: np.random.Generator) -> Iterator[Check]:
    """Drift (slope of a linear fit x the run's length) and fluctuation (std about the fit) of the total
    energy per atom, in meV/atom. Atoms that collide or a model that returns NaN fail both."""
    dtype = subject.precise
    where = f"{steps} steps of {tol.NVE_DT_FS:g} fs from {tol.NVE_TEMPERATURE_K:g} K"
    try:
        energies = 1000.0 * nve_energies(subject.model(dtype), atoms, steps, rng)  # meV/atom
    except (DataError, NonFiniteError) as exc:
        for quantity in ("drift", "fluctuation"):
            yield Check(f"NVE: {quantity}", name, dtype, float("nan"), tol.NVE[quantity], "meV/atom",
                        f"{where}: the run failed: {exc}")
        return
    t = np.arange(len(energies), dtype=np.float64)
    slope, intercept = np.polyfit(t, energies, 1)
    drift = abs(slope) * (len(energies) - 1)
    fluctuation = float(np.std(energies - (slope * t + intercept)))
    yield Check("NVE: drift", name, dtype, float(drift), tol.NVE["drift"], "meV/atom", where)
    yield Check("NVE: fluctuation", name, dtype, fluctuation, tol.NVE["fluctuation"], "meV/atom", where)
