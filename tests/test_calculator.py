"""The ASE calculator: derivatives against finite differences, NVE energy conservation, relaxations."""
import time

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.filters import FrechetCellFilter
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from e3pot.calculator import E3PotCalculator
from tests.conftest import make_model
from tests.trained_model import model_file_64, single_torch_thread, trained_model  # noqa: F401  (fixtures)

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def si2():
    """A rattled, sheared two-atom Si cell (smaller than 2 r_max: images interact)."""
    atoms = bulk("Si", "diamond", a=5.43)
    rng = np.random.default_rng(3)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def calc64(model_file_64):
    calc = E3PotCalculator(model_file_64)  # loaded by path
    assert calc.dtype == torch.float64
    return calc


# -- derivatives ---------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["ethanol", "periodic", "si2"])
def test_forces_match_finite_differences(calc64, which, ethanol, periodic):
    atoms = {"ethanol": ethanol, "periodic": periodic, "si2": si2()}[which]
    atoms.calc = calc64
    forces = atoms.get_forces()
    numerical = calc64.calculate_numerical_forces(atoms, d=1e-5)
    assert forces.shape == (len(atoms), 3)
    assert np.abs(forces).max() > 1e-2  # a non-trivial force field
    np.testing.assert_allclose(forces, numerical, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("which", ["periodic", "si2"])
def test_stress_matches_finite_differences(calc64, which, periodic):
    """ASE Voigt order (xx yy zz yz xz xy) and sign, against ASE's own strain derivative."""
    atoms = {"periodic": periodic, "si2": si2()}[which]
    atoms.calc = calc64
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    numerical = calc64.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(stress[3:]).max() > 1e-3  # shear components are non-trivial ...
    # ... and distinct, so that a permutation of the Voigt components would be caught:
    assert min(abs(a - b) for i, a in enumerate(stress) for b in stress[i + 1:]) > 1e-5
    np.testing.assert_allclose(stress, numerical, atol=1e-7, rtol=1e-6)
    # the 3x3 form is the symmetric matrix of the same numbers
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T)
    np.testing.assert_allclose(full[[1, 0, 0], [2, 2, 1]], stress[3:])


def test_stress_sign_is_ase_convention(calc64):
    """ASE sign: stress = (1/V) dE/d(strain), so dE/dV = tr(stress) / 3 = -pressure."""
    atoms = si2()
    atoms.set_cell(atoms.cell * 0.95, scale_atoms=True)
    atoms.calc = calc64
    pressure_term = atoms.get_stress()[:3].sum() / 3  # = -pressure
    energies, volumes = [], []
    for scale in (1 - 1e-4, 1 + 1e-4):
        strained = atoms.copy()
        strained.set_cell(atoms.cell * scale, scale_atoms=True)
        energies.append(calc64.get_potential_energy(strained))
        volumes.append(strained.get_volume())
    de_dv = (energies[1] - energies[0]) / (volumes[1] - volumes[0])
    assert abs(pressure_term) > 1e-3
    np.testing.assert_allclose(de_dv, pressure_term, rtol=1e-4)


@pytest.mark.parametrize("which", ["ethanol", "periodic"])
def test_per_atom_energies_and_free_energy(calc64, which, ethanol, periodic):
    atoms = {"ethanol": ethanol, "periodic": periodic}[which]
    atoms.calc = calc64
    energy = atoms.get_potential_energy()
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert np.ptp(energies) > 1.0  # different elements, different energies
    np.testing.assert_allclose(energies.sum(), energy, rtol=1e-13)
    assert atoms.get_potential_energy(force_consistent=True) == energy
    assert calc64.results["free_energy"] == energy


def test_molecule_has_no_stress(calc64, ethanol):
    ethanol.calc = calc64
    ethanol.get_forces()
    assert "stress" not in calc64.results
    with pytest.raises(PropertyNotImplementedError):
        ethanol.get_stress()


def test_model_given_by_path_object_or_dtype(model_file_64, ethanol):
    by_path = E3PotCalculator(model_file_64).get_potential_energy(ethanol)
    by_object = E3PotCalculator(make_model()).get_potential_energy(ethanol)
    assert by_path == by_object
    calc32 = E3PotCalculator(model_file_64, dtype="float32")
    assert calc32.dtype == torch.float32
    e32 = calc32.get_potential_energy(ethanol)
    assert e32 != by_path
    np.testing.assert_allclose(e32, by_path, rtol=1e-6)
    f64 = E3PotCalculator(model_file_64).get_forces(ethanol)
    f32 = calc32.get_forces(ethanol)
    assert f32.dtype == np.float64  # results are plain float64 arrays in either precision
    np.testing.assert_allclose(f32, f64, atol=1e-4 * np.abs(f64).max())


def test_dtype_option_leaves_the_callers_model_alone(ethanol):
    model = make_model()
    calc64 = E3PotCalculator(model)
    calc32 = E3PotCalculator(model, dtype="float32")
    assert model.dtype == torch.float64 and calc64.model.dtype == torch.float64
    assert calc32.dtype == calc32.model.dtype == torch.float32
    e64 = calc64.get_potential_energy(ethanol)  # still runs in float64 after calc32 was made
    assert e64 == E3PotCalculator(make_model()).get_potential_energy(ethanol)
    np.testing.assert_allclose(calc32.get_potential_energy(ethanol), e64, rtol=1e-6)


def test_neighbour_list_follows_the_atoms(calc64):
    """Two waters: out of range, the energy is the sum of isolated waters; moved into range, it is not."""
    water = molecule("H2O")
    isolated = E3PotCalculator(make_model()).get_potential_energy(water)
    pair = water + water
    pair.positions[3:] += [0.0, 0.0, 10.0]
    pair.calc = calc64
    np.testing.assert_allclose(pair.get_potential_energy(), 2 * isolated, rtol=1e-14)
    pair.positions[3:] -= [0.0, 0.0, 7.2]  # now 2.8 Å apart, inside the 3.5 Å cutoff
    near = pair.get_potential_energy()
    assert abs(near - 2 * isolated) > 1e-3
    assert near == E3PotCalculator(make_model()).get_potential_energy(pair.copy())


# -- dynamics and relaxations with a trained model ------------------------------------------------

NVE_STEPS = 2000
NVE_DT_FS = 0.5
# Measured with the tiny trained model (see tests/trained_model.py), 2000 steps of 0.5 fs:
# max |E_tot(t) - E_tot(0)| = 1.3e-3 eV and a fitted drift of -3.7e-4 eV/ps (similar runs while
# choosing the model: 1.2-1.5e-3 eV, 0.5-4e-4 eV/ps). The bounds leave a ~7x / ~5x margin.
MAX_DEVIATION_EV = 1e-2
MAX_DRIFT_EV_PER_PS = 2e-3


def run_nve(calc, dt_fs, steps):
    """Total energies (steps + 1) and temperatures of ethanol thermalised at 300 K (seeded)."""
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    thermalize_momenta(atoms, 300.0, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    e_tot, temps = [], []

    def record():
        e_tot.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        temps.append(atoms.get_temperature())

    dyn.attach(record, interval=1)  # also called once before the first step
    start = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - start
    assert len(e_tot) == steps + 1
    return np.array(e_tot), np.array(temps), atoms, steps / elapsed


@pytest.mark.slow
@pytest.mark.parametrize("skin", [0.0, 1.0], ids=["fresh-list", "verlet-skin"])
def test_nve_energy_conservation(trained_model, skin):
    calc = E3PotCalculator(trained_model, skin=skin)
    e_tot, temps, atoms, steps_per_s = run_nve(calc, NVE_DT_FS, NVE_STEPS)
    builds = calc.neighbor_list_builds
    t_ps = np.arange(len(e_tot)) * NVE_DT_FS * 1e-3
    deviation = np.abs(e_tot - e_tot[0]).max()
    drift = np.polyfit(t_ps, e_tot, 1)[0]
    # The same 0.5 ps at half the time step: Verlet's energy error must shrink ~4x (dt^2). Forces
    # that are not exactly -dE/dR leave an error that does not shrink (2% off: ratio ~1).
    half = len(e_tot) // 2
    e_half_dt, _, _, _ = run_nve(calc, NVE_DT_FS / 2, NVE_STEPS)
    ratio = np.std(e_tot[:half + 1]) / np.std(e_half_dt)
    distances = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
    print(f"\nNVE ethanol, {NVE_STEPS} steps of {NVE_DT_FS} fs: max |E_tot(t) - E_tot(0)| = {deviation:.3e} eV, "
          f"drift = {drift:.3e} eV/ps, <T> = {temps.mean():.0f} K, {steps_per_s:.0f} MD steps/s; "
          f"std(E_tot) ratio dt/(dt/2) over 0.5 ps = {ratio:.2f}; skin {skin} Å: {builds} neighbour-list builds")
    if skin > 0:  # the list was reused (a molecule at 300 K: atoms move ~0.01 Å per step)
        assert builds < NVE_STEPS // 10
    # the run is real dynamics of a bound molecule, not a frozen or exploded one
    assert 100 < temps.mean() < 600
    assert distances.min() > 0.7 and distances.max() < 5.0
    assert deviation < MAX_DEVIATION_EV
    assert abs(drift) < MAX_DRIFT_EV_PER_PS
    assert ratio > 2.5


def test_bfgs_relaxes_distorted_ethanol(trained_model):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.15, rng=np.random.default_rng(0))
    atoms.calc = E3PotCalculator(trained_model)
    e0 = atoms.get_potential_energy()
    f0 = np.linalg.norm(atoms.get_forces(), axis=1).max()
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=300)
    assert f0 > 1.0
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.01
    assert atoms.get_potential_energy() < e0 - 0.5
    bonds = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
    assert bonds.min() > 0.85 and bonds.max() < 4.5  # still an ethanol-sized molecule


def test_cell_relaxation_with_frechet_filter():
    """Positions and cell relax together through the stress.

    A random model need not have a minimum near a given crystal (many collapse or expand); for
    ``make_model(seed=4)`` this SiC cell has one. If the architecture or ``make_model`` changes
    and the cell collapses or the two starts end in different minima, pick another seed or
    structure. Two different distorted starts must reach the same minimum, where ASE's numerical
    stress is also zero.
    """
    calc = E3PotCalculator(make_model(seed=4))
    final = []
    for seed in (0, 1):
        atoms = bulk("SiC", "zincblende", a=4.36)
        rng = np.random.default_rng(seed)
        atoms.rattle(0.05, rng=rng)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.calc = calc
        v0, e0, s0 = atoms.get_volume(), atoms.get_potential_energy(), np.abs(atoms.get_stress()).max()
        opt = BFGS(FrechetCellFilter(atoms), logfile=None)

        def sane_volume(atoms=atoms, v0=v0):  # fail fast instead of collapsing for minutes
            assert 0.6 < atoms.get_volume() / v0 < 1.6, "cell collapsed or exploded"

        opt.attach(sane_volume)
        assert opt.run(fmax=0.002, steps=150), f"not converged in {opt.nsteps} steps"
        assert s0 > 2e-3
        assert np.abs(atoms.get_forces()).max() < 0.002
        stress = atoms.get_stress()
        assert np.abs(stress).max() < min(5e-4, 0.2 * s0)  # eV/Å^3 (0.08 GPa)
        np.testing.assert_allclose(calc.calculate_numerical_stress(atoms, d=1e-5), stress, atol=1e-7)
        assert atoms.get_potential_energy() < e0
        final.append((atoms.get_potential_energy(), atoms.get_volume()))
    (e_a, v_a), (e_b, v_b) = final
    assert abs(e_a - e_b) < 1e-3
    assert abs(v_a - v_b) < 0.02 * v_a
