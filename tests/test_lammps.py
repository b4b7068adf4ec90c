"""pair_style e3pot in LAMMPS, on 1, 2 and 4 MPI ranks, against the ASE calculator.

The plugin is built once per session (``e3pot.lammps.build``: about a minute the first time, nothing
when it is up to date). Every run goes through ``mpirun`` from the mpich wheel, one thread per rank.
Positions are taken back from LAMMPS's dump (full precision) so that both sides see the same atoms.
"""
import os
import re
import subprocess

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from conftest import make_model
from e3pot.calculator import E3PotCalculator
from e3pot.lammps import build, lmp_command, mpirun_command, run_env
from e3pot.lammps.deck import data_file_text
from e3pot.model.export import export_model
from e3pot.model.io import save_model

pytestmark = pytest.mark.slow

EV_PER_A3_IN_BAR = 1.6021765e6  # LAMMPS's nktv2p for units metal (its own rounding of e)
DUMP = "id type x y z fx fy fz c_pe"


@pytest.fixture(scope="session")
def plugin():
    return build(install=False, quiet=True)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lammps_models")
    out = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        model = make_model(dtype=dtype)
        out[name] = str(folder / f"{name}.pt")
        export_model(model, out[name])
    save_model(make_model(), str(folder / "model_file.pt"))
    out["model_file"] = str(folder / "model_file.pt")
    return out


def water_box(n=2, spacing=3.1, seed=0):
    rng = np.random.default_rng(seed)
    water = molecule("H2O")
    positions, symbols = [], []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                positions += list(water.positions + np.array([i, j, k]) * spacing + rng.normal(scale=0.1, size=3))
                symbols += water.get_chemical_symbols()
    atoms = Atoms(symbols, positions, cell=np.diag([n * spacing] * 3), pbc=True)
    atoms.wrap()
    return atoms


def methanol_cluster():
    """Non-periodic, three elements, typed O C H (neither alphabetical nor by atomic number)."""
    atoms = molecule("CH3OH") + molecule("CH3OH")
    atoms.positions[6:] += [3.2, 0.4, 0.3]
    atoms.positions += np.random.default_rng(3).normal(scale=0.05, size=atoms.positions.shape)
    atoms.center(vacuum=8.0)
    return atoms


def run_lammps(folder, atoms, elements, model, plugin, ranks=1, body=None, extra="", coeff=None, preamble=""):
    os.makedirs(folder, exist_ok=True)
    periodic = " ".join("p" if p else "s" for p in atoms.pbc)
    (folder / "structure.data").write_text(data_file_text(atoms, elements))
    body = body or f"""
compute pe all pe/atom
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
dump d all custom 1 dump.txt {DUMP}
dump_modify d sort id format float %.17g
run 0
"""
    (folder / "in.lammps").write_text(f"""units metal
{preamble}
atom_style atomic
boundary {periodic}
read_data structure.data
plugin load {plugin}
pair_style e3pot
pair_coeff * * {model} {' '.join(coeff or elements)}
{extra}
{body}""")
    cmd = [mpirun_command(), "-np", str(ranks), lmp_command(), "-in", "in.lammps", "-log", "log.lammps"]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=run_env(threads=1), timeout=300)
    return result


def thermo(log_text):
    lines = log_text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.split()[:1] == ["Step"])
    names = lines[start].split()
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("Loop time"):
            break
        rows.append([float(v) for v in line.split()])
    return names, np.array(rows)


def read_dump(path, atoms):
    """Positions, forces and per-atom energies by atom id, and the atoms at those positions."""
    lines = path.read_text().splitlines()
    bounds = np.array([[float(v) for v in lines[k].split()[:2]] for k in (5, 6, 7)])
    data = np.loadtxt(lines[9:], ndmin=2)
    data = data[np.argsort(data[:, 0])]
    at = atoms.copy()
    at.positions = data[:, 2:5]
    if atoms.pbc.all():
        at.cell = np.diag(bounds[:, 1] - bounds[:, 0])
    return at, data[:, 5:8], data[:, 8]


def assert_matches_calculator(folder, atoms, model, result, rtol=1e-8):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    names, rows = thermo((folder / "log.lammps").read_text())
    at, forces, atomic = read_dump(folder / "dump.txt", atoms)
    at.calc = E3PotCalculator(model)
    energy = at.get_potential_energy()
    reference = at.get_forces()
    scale = np.abs(reference).max()
    assert abs(rows[0, names.index("PotEng")] - energy) <= rtol * abs(energy)
    assert np.abs(forces - reference).max() <= rtol * scale
    np.testing.assert_allclose(atomic, at.calc.results["energies"], rtol=0, atol=rtol * abs(energy))
    if atoms.pbc.all():
        stress = at.get_stress(voigt=False)  # eV/Å^3, ASE's sign: LAMMPS's pressure is its negative
        pressure = np.array([rows[0, names.index(n)] for n in ("Pxx", "Pyy", "Pzz", "Pxy", "Pxz", "Pyz")])
        expected = -EV_PER_A3_IN_BAR * np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[0, 1],
                                                  stress[0, 2], stress[1, 2]])
        assert np.abs(pressure - expected).max() <= rtol * np.abs(expected).max()
    return energy


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_periodic_water_box_matches_the_calculator(plugin, models, tmp_path, ranks):
    atoms = water_box()
    result = run_lammps(tmp_path, atoms, ["O", "H"], models["float64"], plugin, ranks=ranks)
    assert_matches_calculator(tmp_path, atoms, models["float64"], result)
    log = (tmp_path / "log.lammps").read_text()
    assert f"with {ranks} MPI tasks" in log
    nodes, n_local, ghost_nodes, folded = map(float, re.search(
        r"evaluated per call, on average, (\d+) nodes for (\d+) local atoms \((\d+) ghosts as nodes, (\d+) folded",
        log).groups())
    assert folded > 0  # images of a process's own atoms are folded onto them
    if ranks == 1:  # every ghost is an image of an own atom: the graph is the periodic one
        assert ghost_nodes == 0 and nodes == n_local == len(atoms)
    else:  # the other processes' atoms are ghost nodes, and results are still exact (above)
        assert ghost_nodes > 0


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_molecule_with_types_in_another_order_matches_the_calculator(plugin, models, tmp_path, ranks):
    atoms = methanol_cluster()
    result = run_lammps(tmp_path, atoms, ["O", "C", "H"], models["float64"], plugin, ranks=ranks)
    assert_matches_calculator(tmp_path, atoms, models["float64"], result)


def test_type_order_does_not_change_the_result(plugin, models, tmp_path):
    atoms = methanol_cluster()
    energies = []
    for order in (["O", "C", "H"], ["H", "C", "O"]):
        result = run_lammps(tmp_path / "".join(order), atoms, order, models["float64"], plugin)
        assert result.returncode == 0, result.stdout[-2000:]
        names, rows = thermo((tmp_path / "".join(order) / "log.lammps").read_text())
        energies.append(rows[0, names.index("PotEng")])
    assert energies[0] == pytest.approx(energies[1], rel=1e-12)


@pytest.mark.parametrize("ranks", [1, 2])
def test_aoti_package_matches_the_calculator(plugin, aoti_package, tmp_path, ranks):
    model_file, _, package = aoti_package
    atoms = water_box()
    result = run_lammps(tmp_path, atoms, ["O", "H"], package, plugin, ranks=ranks)
    assert "(AOTInductor, float64" in (tmp_path / "log.lammps").read_text()
    assert_matches_calculator(tmp_path, atoms, model_file, result)


def test_float32_model(plugin, models, tmp_path):
    atoms = water_box()
    result = run_lammps(tmp_path, atoms, ["O", "H"], models["float32"], plugin, ranks=2)
    assert_matches_calculator(tmp_path, atoms, models["float32"], result, rtol=1e-5)


def test_per_atom_virial_sums_to_the_global_one(plugin, models, tmp_path):
    atoms = water_box()
    body = """
compute st all stress/atom NULL virial
compute total all reduce sum c_st[1] c_st[2] c_st[3] c_st[4] c_st[5] c_st[6]
variable v equal vol
thermo_style custom step pxx pyy pzz pxy pxz pyz c_total[1] c_total[2] c_total[3] c_total[4] c_total[5] c_total[6] v_v
thermo_modify format float %.17g
run 0
"""
    result = run_lammps(tmp_path, atoms, ["O", "H"], models["float64"], plugin, ranks=2, body=body)
    assert result.returncode == 0, result.stdout[-2000:]
    names, rows = thermo((tmp_path / "log.lammps").read_text())
    pressure = rows[0, 1:7]
    per_atom = -rows[0, 7:13] / rows[0, 13]  # compute stress/atom is -(virial) in pressure x volume
    assert np.abs(pressure).max() > 1.0
    np.testing.assert_allclose(per_atom, pressure, rtol=1e-9, atol=1e-9 * np.abs(pressure).max())


def test_nve_conserves_energy(plugin, models, tmp_path):
    atoms = methanol_cluster()
    body = """
velocity all create 300 4928459 mom yes dist gaussian
timestep 0.0005
fix md all nve
thermo_style custom step pe ke etotal
thermo_modify format float %.17g
thermo 10
run 300
"""
    result = run_lammps(tmp_path, atoms, ["O", "C", "H"], models["float64"], plugin, ranks=2, body=body)
    assert result.returncode == 0, result.stdout[-2000:]
    names, rows = thermo((tmp_path / "log.lammps").read_text())
    etotal, ke = rows[:, names.index("TotEng")], rows[:, names.index("KinEng")]
    assert ke.std() > 0.01  # atoms moved and exchanged energy
    drift = np.abs(etotal - etotal[0]).max()
    assert drift < 0.02 * ke.std(), (drift, ke.std())


def test_too_small_a_ghost_cutoff_is_refused(plugin, models, tmp_path):
    result = run_lammps(tmp_path, water_box(), ["O", "H"], models["float64"], plugin, extra="comm_modify cutoff 4.0")
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "comm_modify cutoff 4 Å is too small for this model" in text
    assert "2 layers of r_max 3.5 Å" in text


@pytest.mark.parametrize("elements, message", [
    (["O", "N"], "atom type 2 is N, an element the model"),
    (["O", "Hx"], "atom type 2 is 'Hx', which is not an element symbol"),
])
def test_an_element_the_model_does_not_know_is_named(plugin, models, tmp_path, elements, message):
    result = run_lammps(tmp_path, water_box(), ["O", "H"], models["float64"], plugin, coeff=elements)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert message in text
    if elements[1] == "N":
        assert "it knows H C O Si" in text


def test_a_model_file_is_not_an_export(plugin, models, tmp_path):
    result = run_lammps(tmp_path, water_box(), ["O", "H"], models["model_file"], plugin)
    assert result.returncode != 0
    assert "model_file.pt is not a TorchScript archive" in result.stdout + result.stderr
    assert "pair_style e3pot reads exports: 'e3pot export MODEL -o FILE.pt'" in result.stdout + result.stderr


def test_newton_off_is_refused(plugin, models, tmp_path):
    result = run_lammps(tmp_path, water_box(), ["O", "H"], models["float64"], plugin, preamble="newton off")
    assert result.returncode != 0
    assert "needs newton_pair on" in result.stdout + result.stderr


def test_deck_runs_as_written(plugin, models, tmp_path):
    from e3pot.cli.main import main

    water_box().write(tmp_path / "box.extxyz")
    out = tmp_path / "deck"
    assert main(["lammps", "deck", str(tmp_path / "box.extxyz"), "--model", models["model_file"], "-o", str(out),
                 "--steps", "20"]) == 0
    text = (out / "in.lammps").read_text()
    assert "pair_coeff      * * " in text and text.rstrip().endswith("run             20")
    result = subprocess.run([lmp_command(), "-in", "in.lammps"], cwd=out, capture_output=True, text=True,
                            env=run_env(threads=1), timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (out / "trajectory.lammpstrj").exists()
    # a second deck into the same folder needs --overwrite
    assert main(["lammps", "deck", str(tmp_path / "box.extxyz"), "--model", models["model_file"],
                 "-o", str(out)]) == 2
