"""e3pot in OpenMM through openmm-ml (e3pot/openmm.py): MLPotential("e3pot", model=...) gives the energy and
forces of E3PotCalculator on the same atoms (molecule, periodic cell, ML atoms of an ML/MM system, a committee),
names the elements that the model does not know, refuses the options it would ignore, reports a model that a
saved or copied System cannot load again instead of crashing, and the examples of docs/openmm.md run as pasted.

Skipped without openmm and openmmml (the extra e3pot[openmm]; the test extra installs them)."""
import os
import pickle
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmml")
from openmm import app, unit  # noqa: E402
from openmmml import MLPotential  # noqa: E402
from openmmml.mlpotential import MLPotentialImpl  # noqa: E402

from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.data import covalent_radii  # noqa: E402

from e3pot.calculator import E3PotCalculator  # noqa: E402
from e3pot.model.io import load_model, save_model  # noqa: E402
from e3pot.openmm import (EV_TO_KJ_PER_MOL, E3PotPotentialImpl, ModelReloadWarning, OpenMMEvaluator,  # noqa: E402
                          calculator_options)
from tests.conftest import SPECIES, make_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KJ_PER_MOL_NM = unit.kilojoule_per_mole / unit.nanometer
E_TOL = 1e-9  # eV: float64 throughout, the same evaluation on both sides
F_TOL = 1e-8  # eV/Å
# ethanol for the force field of the ML/MM test (the MM side needs parameters for every atom; those of
# ethanol's own bonds, angles and torsions are removed by createMixedSystem, so only nonbonded ones are given)
ETHANOL_XML = """<ForceField>
 <AtomTypes>
  <Type name="eth-CT" class="eth-CT" element="C" mass="12.011"/>
  <Type name="eth-CO" class="eth-CO" element="C" mass="12.011"/>
  <Type name="eth-OH" class="eth-OH" element="O" mass="15.999"/>
  <Type name="eth-HC" class="eth-HC" element="H" mass="1.008"/>
  <Type name="eth-HO" class="eth-HO" element="H" mass="1.008"/>
 </AtomTypes>
 <Residues>
  <Residue name="ETH">
   <Atom name="C1" type="eth-CT"/><Atom name="C2" type="eth-CO"/><Atom name="O" type="eth-OH"/>
   <Atom name="H1" type="eth-HC"/><Atom name="H2" type="eth-HC"/><Atom name="H3" type="eth-HC"/>
   <Atom name="H4" type="eth-HC"/><Atom name="H5" type="eth-HC"/><Atom name="HO" type="eth-HO"/>
   <Bond atomName1="C1" atomName2="C2"/><Bond atomName1="C2" atomName2="O"/><Bond atomName1="O" atomName2="HO"/>
   <Bond atomName1="C1" atomName2="H1"/><Bond atomName1="C1" atomName2="H2"/><Bond atomName1="C1" atomName2="H3"/>
   <Bond atomName1="C2" atomName2="H4"/><Bond atomName1="C2" atomName2="H5"/>
  </Residue>
 </Residues>
 <NonbondedForce coulomb14scale="0.8333333333333334" lj14scale="0.5">
  <Atom type="eth-CT" charge="-0.18" sigma="0.35" epsilon="0.276144"/>
  <Atom type="eth-CO" charge="0.025" sigma="0.35" epsilon="0.276144"/>
  <Atom type="eth-OH" charge="-0.683" sigma="0.312" epsilon="0.71128"/>
  <Atom type="eth-HC" charge="0.06" sigma="0.25" epsilon="0.12552"/>
  <Atom type="eth-HO" charge="0.418" sigma="0.1" epsilon="0.0"/>
 </NonbondedForce>
</ForceField>
"""
# the examples of docs/openmm.md run with fewer steps; everything else as written
DOC_SHORT = {"simulation.step(1000)": "simulation.step(10)"}
# A System whose e3pot force cannot load its model again, read back by OpenMM, in a process of its own: OpenMM
# unpickles the force's function in C++ and crashed (signal 11) when that raised. Run in a folder with models/a.pt,
# models/b.pt and an empty folder elsewhere/; prints one line per case.
RELOAD_SCRIPT = """
import copy, os, shutil, warnings
import openmm
from ase.build import molecule
from openmm import app
from openmmml import MLPotential
from e3pot.openmm import ModelReloadWarning

atoms = molecule("CH3CH2OH")
topology = app.Topology()
residue = topology.addResidue("MOL", topology.addChain())
for z in atoms.numbers:
    topology.addAtom("X", app.Element.getByAtomicNumber(int(z)), residue)

def energy(system):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * 0.1)
    try:
        return context.getState(getEnergy=True).getPotentialEnergy()._value
    except openmm.OpenMMException as exc:
        return f"error: {exc}"

committee = MLPotential("e3pot", model=["models/a.pt", "models/b.pt"]).createSystem(topology)
xml = openmm.XmlSerializer.serialize(committee)
os.chdir("elsewhere")
print("committee read elsewhere:", energy(openmm.XmlSerializer.deserialize(xml)) == energy(committee), flush=True)
os.chdir("..")
shutil.copy("models/a.pt", "models/gone.pt")
single = MLPotential("e3pot", model="models/gone.pt").createSystem(topology)
xml = openmm.XmlSerializer.serialize(single)
os.remove("models/gone.pt")
print("deserialize:", energy(openmm.XmlSerializer.deserialize(xml)), flush=True)
warnings.simplefilter("error", ModelReloadWarning)  # the report must not raise either
print("deepcopy:", energy(copy.deepcopy(single)), flush=True)
"""


def topology_of(atoms: Atoms, residue: str = "MOL", bonds: bool = False) -> app.Topology:
    """One residue with the atoms of ``atoms``; with ``bonds``, bonds between atoms closer than 1.2 times the
    sum of their covalent radii (for a force field's residue template); periodic box vectors when periodic."""
    topology = app.Topology()
    res = topology.addResidue(residue, topology.addChain())
    added = [topology.addAtom(f"{s}{k + 1}", app.Element.getByAtomicNumber(int(z)), res)
             for k, (s, z) in enumerate(zip(atoms.get_chemical_symbols(), atoms.numbers))]
    if bonds:
        d = atoms.get_all_distances()
        for a in range(len(atoms)):
            for b in range(a):
                if d[a, b] < 1.2 * (covalent_radii[atoms.numbers[a]] + covalent_radii[atoms.numbers[b]]):
                    topology.addBond(added[a], added[b])
    if atoms.pbc.any():
        topology.setPeriodicBoxVectors(atoms.cell.array * 0.1 * unit.nanometer)
    return topology


def context_of(system, positions_angstrom, box_angstrom=None, platform="Reference"):
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005), openmm.Platform.getPlatformByName(platform))
    if box_angstrom is not None:
        context.setPeriodicBoxVectors(*(np.asarray(box_angstrom) * 0.1))
    context.setPositions(np.asarray(positions_angstrom) * 0.1)
    return context


def energy_forces(context, groups=-1):
    """(energy in eV, forces in eV/Å) of ``context``'s state, converted with the module's constant."""
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    forces = state.getForces(asNumpy=True).value_in_unit(KJ_PER_MOL_NM) / (10 * EV_TO_KJ_PER_MOL)
    return energy, forces


def calculator_results(atoms: Atoms, model):
    """What E3PotCalculator gives for ``atoms``."""
    atoms = atoms.copy()
    atoms.calc = E3PotCalculator(model)
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The tiny float64 test model (species H, C, O, Si), saved where docs/openmm.md expects a model."""
    return save_model(make_model(), str(tmp_path_factory.mktemp("openmm") / "models" / "example.pt"))


@pytest.fixture(scope="module")
def loaded(model_path):
    """The model file, loaded once for the calculator's reference results (a load takes most of a second)."""
    return load_model(model_path)


@pytest.fixture(scope="module")
def potential(model_path):
    return MLPotential("e3pot", model=model_path)


@pytest.fixture(scope="module")
def second_path(model_path):
    """A second tiny model (other weights) next to the first: a committee of two with it."""
    return save_model(make_model(seed=1), os.path.join(os.path.dirname(model_path), "second.pt"))


@pytest.fixture(scope="module")
def committee(model_path, second_path):
    return MLPotential("e3pot", model=[model_path, second_path])


@pytest.fixture(scope="module")
def solvated(tmp_path_factory):
    """Ethanol (residue 0, 9 atoms) in TIP3P water, periodic box of 1.8 nm: a PDB with CONECT records and
    the force field files; returns (folder, PDBFile, ForceField)."""
    folder = tmp_path_factory.mktemp("solvated")
    (folder / "ethanol.xml").write_text(ETHANOL_XML)
    forcefield = app.ForceField("amber14/tip3p.xml", str(folder / "ethanol.xml"))
    ethanol = molecule("CH3CH2OH")
    modeller = app.Modeller(topology_of(ethanol, "ETH", bonds=True), ethanol.positions * 0.1 * unit.nanometer)
    modeller.addSolvent(forcefield, model="tip3p", boxSize=openmm.Vec3(1.8, 1.8, 1.8) * unit.nanometer)
    with open(folder / "ethanol-in-water.pdb", "w") as f:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, f)
    return folder, app.PDBFile(str(folder / "ethanol-in-water.pdb")), forcefield


def mm_system_of(pdb, forcefield):
    return forcefield.createSystem(pdb.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.8 * unit.nanometer,
                                   constraints=app.HBonds)


def test_the_potential_is_registered_and_implements_openmmml_interface(potential):
    impl = potential._impl
    assert isinstance(impl, E3PotPotentialImpl) and impl.atomic_numbers == SPECIES
    # openmm-ml calls the potential by its methods (no subclass, see e3pot/openmm.py): all of them are there
    missing = [name for name in dir(MLPotentialImpl) if not name.startswith("_") and not hasattr(impl, name)]
    assert not missing
    assert impl.getMLLongRange() is False
    if hasattr(potential, "getSupportedEmbeddings"):  # openmm-ml 1.8 and later
        assert "mechanical" in potential.getSupportedEmbeddings()


def test_unit_conversion_is_openmms():
    ev = (1 * unit.elementary_charge * unit.volt * unit.AVOGADRO_CONSTANT_NA).value_in_unit(unit.kilojoule_per_mole)
    assert EV_TO_KJ_PER_MOL == pytest.approx(ev, rel=1e-14)


def test_molecule_matches_the_calculator(potential, loaded, ethanol):
    system = potential.createSystem(topology_of(ethanol))
    names = [system.getForce(k).getName() for k in range(system.getNumForces())]
    assert names == ["e3pot", "CMMotionRemover"]
    assert not system.getForce(0).usesPeriodicBoundaryConditions()
    energy, forces = energy_forces(context_of(system, ethanol.positions))
    ref_energy, ref_forces = calculator_results(ethanol, loaded)
    assert abs(energy - ref_energy) < E_TOL
    assert np.abs(forces - ref_forces).max() < F_TOL
    assert np.abs(ref_forces).max() > 0.1  # a test that can fail: the forces are not all zero


def test_periodic_cell_matches_the_calculator(potential, loaded, periodic):
    """A skewed cell smaller than 2 r_max (several images of each atom), atoms outside it, and a second box
    set on the Context (as a barostat would): the model sees OpenMM's box at each call, with pbc."""
    atoms = periodic.copy()
    atoms.positions[:2] += atoms.cell[0] - 2 * atoms.cell[2]  # outside the cell: OpenMM may wrap them or not
    system = potential.createSystem(topology_of(atoms))
    assert system.getForce(0).usesPeriodicBoundaryConditions()
    context = context_of(system, atoms.positions)
    for scale in (1.0, 1.04):
        scaled = atoms.copy()
        scaled.set_cell(atoms.cell * scale, scale_atoms=True)
        context.setPeriodicBoxVectors(*(scaled.cell.array * 0.1))
        context.setPositions(scaled.positions * 0.1)
        energy, forces = energy_forces(context)
        ref_energy, ref_forces = calculator_results(scaled, loaded)
        open_energy, _ = calculator_results(Atoms(scaled.numbers, scaled.positions), loaded)
        assert abs(energy - ref_energy) < E_TOL
        assert np.abs(forces - ref_forces).max() < F_TOL
        assert abs(ref_energy - open_energy) > 1e-3  # the periodic images matter


@pytest.mark.parametrize("subset", ["openmm", "e3pot"])
def test_mixed_system_runs_and_its_ml_term_matches_the_calculator(potential, loaded, solvated, subset, monkeypatch):
    """subset: who picks the ML atoms out of the State, OpenMM (8.6 and later: PythonForce.setParticles) or
    the evaluator (OpenMM 8.5, without it; here by hiding it)."""
    if subset == "e3pot":
        monkeypatch.delattr(openmm.PythonForce, "setParticles", raising=False)
    _, pdb, forcefield = solvated
    ml_atoms = [atom.index for atom in next(pdb.topology.residues()).atoms()]
    assert len(ml_atoms) == 9 and pdb.topology.getNumAtoms() > 100
    system = potential.createMixedSystem(pdb.topology, mm_system_of(pdb, forcefield), ml_atoms, forceGroup=1)
    ml_forces = [f for f in system.getForces() if f.getName() == "e3pot"]
    assert len(ml_forces) == 1
    assert ml_forces[0].getForceGroup() == 1 and ml_forces[0].usesPeriodicBoundaryConditions()
    if hasattr(ml_forces[0], "setParticles"):
        assert list(ml_forces[0].getParticles()) == ml_atoms
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.5 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    simulation = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(pdb.positions)
    start = simulation.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    simulation.step(10)
    state = simulation.context.getState(getPositions=True, getEnergy=True)
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.isfinite(positions).all() and np.isfinite(state.getPotentialEnergy()._value)
    assert np.abs(positions[ml_atoms] - start[ml_atoms]).max() > 1e-4  # the ML atoms moved
    box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
    energy, forces = energy_forces(simulation.context, groups={1})
    ref_energy, ref_forces = calculator_results(Atoms(numbers=[a.element.atomic_number for a in pdb.topology.atoms()
                                                               if a.index in ml_atoms],
                                                      positions=positions[ml_atoms], cell=box, pbc=True), loaded)
    assert abs(energy - ref_energy) < E_TOL
    assert np.abs(forces[ml_atoms] - ref_forces).max() < F_TOL
    others = np.setdiff1d(np.arange(len(positions)), ml_atoms)
    assert not forces[others].any()  # the model's forces go to the ML atoms only


def test_interpolated_mixed_system_and_a_serialized_system(model_path, solvated, ethanol, tmp_path, monkeypatch):
    """openmm-ml copies the force for interpolate=True and XmlSerializer pickles its function: both reload the
    model from its (absolute) path and give the same energy."""
    _, pdb, forcefield = solvated
    ml_atoms = list(range(9))
    potential = MLPotential("e3pot", model=os.path.relpath(model_path))
    mixed = potential.createMixedSystem(pdb.topology, mm_system_of(pdb, forcefield), ml_atoms)
    interpolated = potential.createMixedSystem(pdb.topology, mm_system_of(pdb, forcefield), ml_atoms, interpolate=True)
    positions = pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.angstrom))
    energy, _ = energy_forces(context_of(mixed, positions, box))
    assert energy_forces(context_of(interpolated, positions, box))[0] == pytest.approx(energy, abs=1e-9)

    system = potential.createSystem(topology_of(ethanol))
    xml = openmm.XmlSerializer.serialize(system)
    assert len(xml) < 20000  # the model's path, not its weights
    monkeypatch.chdir(tmp_path)
    copy = openmm.XmlSerializer.deserialize(xml)
    assert (energy_forces(context_of(copy, ethanol.positions))[0]
            == pytest.approx(energy_forces(context_of(system, ethanol.positions))[0], abs=E_TOL))


def test_a_force_that_cannot_load_its_model_again_is_an_error_not_a_crash(model_path, second_path, tmp_path):
    """XmlSerializer.deserialize and copy.deepcopy of a System whose model file is gone, and a committee given by
    relative paths read from another folder: a message naming the file (a warning when the System is read, an
    OpenMMException when the force is evaluated), or the committee's energy, and never a segmentation fault."""
    folder = os.path.realpath(tmp_path)  # as os.getcwd() gives it in the subprocess
    os.makedirs(os.path.join(folder, "models"))
    os.makedirs(os.path.join(folder, "elsewhere"))
    for source, name in ((model_path, "a.pt"), (second_path, "b.pt")):
        with open(source, "rb") as src, open(os.path.join(folder, "models", name), "wb") as dst:
            dst.write(src.read())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT], cwd=folder, env=env, capture_output=True,
                         text=True, timeout=300)
    shown = f"exit status {run.returncode} (-11: segmentation fault)\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, shown
    assert "committee read elsewhere: True" in run.stdout, shown
    gone = os.path.join(folder, "models", "gone.pt")
    message = (f"e3pot: the OpenMM force of a System read back (XmlSerializer.deserialize or copy.deepcopy) cannot "
               f"load its model: model file {gone} does not exist; the force raises this error whenever it is "
               "evaluated")
    for case in ("deserialize", "deepcopy"):
        assert f"{case}: error: {message}" in run.stdout, shown  # when the force is evaluated
    assert run.stderr.count(message) == 2, shown  # when the System is read


def test_a_force_read_without_its_model_names_why_and_loads_once_it_is_back(model_path, ethanol, tmp_path):
    """What OpenMM does when it reads a force back (pickle.loads of its function), in this process: a model file
    that is not a model is named, with why, and the force keeps its state, so that a copy made once the file is
    back works again."""
    path = str(tmp_path / "model.pt")
    with open(model_path, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    pickled = pickle.dumps(OpenMMEvaluator(path, ethanol.numbers, False, {}))  # what the PythonForce holds
    os.rename(path, path + ".moved")
    with open(path, "w") as f:
        f.write("not a model")
    why = rf"cannot load its model: model {re.escape(path)}: ValueError: .*not an e3pot model file"
    with pytest.warns(ModelReloadWarning, match=why):
        unreadable = pickle.loads(pickled)
    with pytest.raises(RuntimeError, match="cannot load its model"):
        unreadable(None)
    os.replace(path + ".moved", path)
    again = pickle.loads(pickle.dumps(unreadable))
    assert isinstance(again, OpenMMEvaluator) and again.error is None
    energy, _ = again.energy_forces(ethanol.positions)
    assert energy == pytest.approx(calculator_results(ethanol, path)[0], abs=E_TOL)
    # a loaded model is pickled as bytes, read where its errors are caught too
    state = OpenMMEvaluator(load_model(path), ethanol.numbers, False, {}).__getstate__()
    assert "model" not in state
    state["model_pickle"] = state["model_pickle"][:1000]
    with pytest.warns(ModelReloadWarning, match=r"cannot load its model: its loaded model: (UnpicklingError|EOFError)"):
        OpenMMEvaluator.__new__(OpenMMEvaluator).__setstate__(state)  # what pickle.loads does with the state


def test_a_committee(committee, model_path, second_path, ethanol):
    """The mean of the members (E3PotCalculator's), with its paths made absolute, also in another dtype for one
    System (which loads its own copy of the members)."""
    assert committee._impl.model == [os.path.abspath(model_path), os.path.abspath(second_path)]
    for options, (e_tol, f_tol) in (({}, (E_TOL, F_TOL)), ({"dtype": "float32"}, (2e-3, 2e-4))):
        context = context_of(committee.createSystem(topology_of(ethanol), **options), ethanol.positions)
        energy, forces = energy_forces(context)
        ref_energy, ref_forces = calculator_results(ethanol, [model_path, second_path])
        assert abs(energy - ref_energy) < e_tol and np.abs(forces - ref_forces).max() < f_tol


def test_the_uncertainty_options_of_the_calculator_are_refused(committee, model_path, second_path, ethanol):
    """uncertainty_threshold, stop_when_uncertain and flagged_file watch an ASE MD run; the OpenMM force gives the
    mean of a committee only, so they are refused rather than accepted and ignored."""
    listed = calculator_options()
    assert "uncertainty_threshold" not in listed and "flagged_file" not in listed and "skin" in listed
    refused = (r"options? of the ASE calculator e3pot\.E3PotCalculator \(uncertainty monitoring during MD\), which "
               r"the OpenMM potential e3pot does not support")
    with pytest.raises(TypeError, match=r"MLPotential\('e3pot'\): uncertainty_threshold is an " + refused):
        MLPotential("e3pot", model=[model_path, second_path], uncertainty_threshold=0.1)
    with pytest.raises(TypeError, match="uncertainty_threshold, stop_when_uncertain, flagged_file are " + refused):
        committee.createSystem(topology_of(ethanol), uncertainty_threshold=0.1, stop_when_uncertain=True,
                               flagged_file="flagged.xyz")


def test_options_of_the_wrong_type_are_named_when_the_system_is_built(potential, model_path, ethanol):
    topology = topology_of(ethanol)
    with pytest.raises(TypeError, match=r"^MLPotential\('e3pot'\): dtype must be 'float32' or 'float64', got 64 "
                                        r"\(int\)$"):
        MLPotential("e3pot", model=model_path, dtype=64)
    with pytest.raises(TypeError, match=r"^createSystem/createMixedSystem: device must be a string, 'cpu', 'cuda' or "
                                        r"'cuda:N', got 3 \(int\)$"):
        potential.createSystem(topology, device=3)
    with pytest.raises(ValueError, match="unknown dtype 'float16'; use one of float32, float64"):
        potential.createSystem(topology, dtype="float16")
    with pytest.raises(TypeError, match=r"model must be the path of a model file .* got 3 \(int\)"):
        MLPotential("e3pot", model=3)
    with pytest.raises(TypeError, match="skin must be a number in Å"):
        potential.createSystem(topology, skin="0.5")


def test_the_calculator_options_reach_the_force(potential, loaded, ethanol, monkeypatch):
    """skin (the neighbour list is reused), threads (in the function that OpenMM calls), memory_budget, kernels
    and radial are those of the force's model, not accepted and dropped."""
    import torch

    from e3pot.model.tables import radial_of

    seen = []
    call = OpenMMEvaluator.__call__

    def spy(self, state):
        seen.append((self, torch.get_num_threads()))
        return call(self, state)

    monkeypatch.setattr(OpenMMEvaluator, "__call__", spy)
    threads = torch.get_num_threads()
    try:
        system = potential.createSystem(topology_of(ethanol), skin=0.5, threads=1, memory_budget=1.5, kernels="torch",
                                        radial="table")
        context = context_of(system, ethanol.positions)
        for shift in (0.0, 0.01):
            context.setPositions((ethanol.positions + shift) * 0.1)
            energy, _ = energy_forces(context)
    finally:
        torch.set_num_threads(threads)
    (evaluator, threads_in_call), = set(seen)
    calc = evaluator.calculator
    assert threads_in_call == 1 and calc.neighbor_list_builds == 1 and calc.memory_budget == 1.5
    assert calc.kernels == "torch" and radial_of(calc.model) == "table"
    shifted = ethanol.copy()
    shifted.positions += 0.01
    assert energy == pytest.approx(calculator_results(shifted, loaded)[0], abs=1e-6)  # a table, not the network


def test_unknown_element_is_named(potential):
    nitrile = molecule("CH3CN")  # C, C, N, H, H, H
    with pytest.raises(ValueError, match=r"does not know element N \(atom 2 of the Topology.*trained on H, C, O, Si"):
        potential.createSystem(topology_of(nitrile))
    salt = Atoms("NaClH", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2, 0]])
    with pytest.raises(ValueError, match=r"does not know elements Na, Cl \(atoms 0, 1 of"):
        potential.createSystem(topology_of(salt))
    # the same atoms outside the ML atoms are the force field's business
    system = openmm.System()
    for atom in topology_of(nitrile).atoms():
        system.addParticle(atom.element.mass)
    potential._impl.addForces(topology_of(nitrile), system, [0, 1, 3], 0)
    assert system.getNumForces() == 1


def test_atoms_without_an_element_are_named(potential, ethanol):
    topology = topology_of(ethanol)
    topology.addAtom("EP", None, next(topology.residues()))
    with pytest.raises(ValueError, match=r"atom 9 of the Topology .* no element"):
        potential.createSystem(topology)


def test_options(potential, loaded, model_path, ethanol):
    with pytest.raises(ValueError, match="needs a model"):
        MLPotential("e3pot")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        MLPotential("e3pot", model="no-such-model.pt")
    with pytest.raises(TypeError, match="unknown option devic for the e3pot potential.*device, dtype"):
        MLPotential("e3pot", model=model_path, devic="cpu")
    with pytest.raises(ValueError, match="skin must be 0 or more in Å"):
        MLPotential("e3pot", model=model_path, skin=-1.0)  # checked when the potential is made
    with pytest.raises(TypeError, match="unknown option precision"):
        potential.createSystem(topology_of(ethanol), precision="double")
    # a neighbour list with a skin (reused between steps) and float32, per System
    moved = ethanol.copy()
    moved.positions += np.random.default_rng(3).normal(scale=0.05, size=moved.positions.shape)  # within the skin
    references = [calculator_results(atoms, loaded) for atoms in (ethanol, moved)]
    for options, (e_tol, f_tol) in (({"skin": 0.5}, (E_TOL, F_TOL)), ({"dtype": "float32"}, (2e-3, 2e-4))):
        context = context_of(potential.createSystem(topology_of(ethanol), **options), ethanol.positions)
        for atoms, (ref_energy, ref_forces) in zip((ethanol, moved), references):
            context.setPositions(atoms.positions * 0.1)
            energy, forces = energy_forces(context)
            assert abs(energy - ref_energy) < e_tol and np.abs(forces - ref_forces).max() < f_tol
    # a failure of the model inside OpenMM names the atoms
    context = context_of(potential.createSystem(topology_of(ethanol)), np.zeros((9, 3)))
    with pytest.raises(openmm.OpenMMException, match="atoms 0 and 1.* apart"):
        context.getState(getEnergy=True)


def test_the_module_imports_without_openmm(monkeypatch):
    for name in ("openmm", "openmm.app", "openmm.unit", "openmmml", "openmmml.mlpotential"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of these now raises ImportError
    namespace = runpy.run_path(os.path.join(ROOT, "e3pot", "openmm.py"))
    assert "E3PotPotentialImplFactory" in namespace and "device" in namespace["calculator_options"]()


def test_the_documented_examples_run_as_pasted(model_path, solvated, monkeypatch, capsys):
    """The Python blocks of docs/openmm.md, run in order as pasted (steps shortened) in a folder with the
    files that they read: models/example.pt (here the tiny test model), ethanol.pdb, ethanol-in-water.pdb and
    ethanol.xml. The documented examples are thus the code that this test runs (docs/openmm.md is left out of
    tests/test_readme.py, which would train the example model for them)."""
    folder, _, _ = solvated
    os.makedirs(folder / "models", exist_ok=True)
    with open(model_path, "rb") as src, open(folder / "models" / "example.pt", "wb") as dst:
        dst.write(src.read())
    ethanol = molecule("CH3CH2OH")
    with open(folder / "ethanol.pdb", "w") as f:
        app.PDBFile.writeFile(topology_of(ethanol, "ETH"), ethanol.positions * 0.1 * unit.nanometer, f)
    text = open(os.path.join(ROOT, "docs", "openmm.md"), encoding="utf-8").read()
    codes = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(codes) >= 2 and all(long in text for long in DOC_SHORT)  # a longer run would be a slow test
    monkeypatch.chdir(folder)
    for code in codes:
        for long, short in DOC_SHORT.items():
            code = code.replace(long, short)
        exec(compile(code, "docs/openmm.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "ML energy" in out and "nan" not in out.lower()
