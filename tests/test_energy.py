"""Energy bookkeeping: float64 shifts and sums in a float32 model, and the re-fit of the constant part."""
import copy

import numpy as np
import torch
from ase.build import molecule

import e3pot
from e3pot.data.dataset import GraphDataset
from e3pot.data.io import frame_from_atoms
from e3pot.data.neighbors import SpeciesMap
from e3pot.model.forces import evaluate
from e3pot.train.stats import shift_correction
from tests.conftest import graph_of, make_model

# per-species shifts of a PBE-like molecule: C9H8O4 (aspirin's formula) sums to about -17,600 eV
LARGE_SHIFTS = [-13.6, -1030.0, -2042.0, -100.0]


def aspirin_like():
    atoms = molecule("CH3COOH")  # C10H14O4 in all: two acetic acids and a benzene, 6 Å apart
    atoms = atoms + molecule("CH3COOH").copy()
    atoms.positions[len(atoms) // 2:] += [6.0, 0.0, 0.0]
    extra = molecule("C6H6")
    extra.positions += [0.0, 6.0, 0.0]
    return atoms + extra


def model_with_large_shift(dtype):
    model = make_model(dtype=torch.float64)
    with torch.no_grad():
        model.energy_shift.copy_(torch.tensor(LARGE_SHIFTS, dtype=torch.float64))
    return model.to(dtype)


def test_shift_stays_float64_in_a_float32_model(tmp_path):
    model = model_with_large_shift(torch.float32)
    assert model.dtype == torch.float32
    assert model.energy_shift.dtype == torch.float64
    assert model.energy_shift.tolist() == LARGE_SHIFTS
    path = e3pot.save_model(model, str(tmp_path / "m.pt"))
    loaded = e3pot.load_model(path)
    assert loaded.dtype == torch.float32 and loaded.energy_shift.dtype == torch.float64
    assert loaded.energy_shift.tolist() == LARGE_SHIFTS
    assert e3pot.load_model(path, dtype="float64").energy_shift.tolist() == LARGE_SHIFTS


def test_float32_model_resolves_1e5_eV_at_minus_17600_eV():
    """Float32 has a step of 2 meV at 17,600 eV; the float64 sum must resolve 10 µeV differences."""
    atoms = aspirin_like()
    m32, m64 = model_with_large_shift(torch.float32), model_with_large_shift(torch.float64)
    energies = {}
    for name, model in (("32", m32), ("64", m64)):
        out = []
        for dx in (0.0, 2e-4):
            moved = atoms.copy()
            moved.positions[0, 0] += dx
            out.append(float(evaluate(model, graph_of(moved, model)).energy[0].detach()))
        energies[name] = out
    total = energies["64"][0]
    assert -19000 < total < -17000, total
    diff64 = energies["64"][1] - energies["64"][0]
    diff32 = energies["32"][1] - energies["32"][0]
    assert 5e-5 < abs(diff64) < 5e-2, diff64  # a small but real energy difference
    assert abs(diff32 - diff64) < 1e-5, (diff32, diff64)
    # and the float32 total agrees with float64 far below float32's own step at this magnitude (and below
    # the ~4e-5 eV of shifts added in float32 before the sum)
    assert abs(energies["32"][0] - total) < 5e-6


def test_calculator_and_predict_energies_are_float64(tmp_path):
    """A float32 model, through the calculator, predict and a float32 export, gives the total energy of
    a float64 copy of itself to 5e-6 eV at -17,600 eV: float32 steps by 2 meV there, and a shift added
    in float32 before the float64 sum is already off by ~4e-5 eV (the float32 network alone: ~5e-8)."""
    model = model_with_large_shift(torch.float32)
    atoms = aspirin_like()
    reference = copy.deepcopy(model).to(torch.float64)  # .to() converts in place: the model itself stays float32
    ref = float(evaluate(reference, graph_of(atoms, reference)).energy[0].detach())
    assert model.dtype == torch.float32 and reference.dtype == torch.float64

    from e3pot.model.export import ExportedModel, export_model

    calculator = e3pot.E3PotCalculator(model)
    exported = ExportedModel(export_model(model, str(tmp_path / "m.ts")))
    assert calculator.dtype == torch.float32 and exported.dtype == torch.float32
    atoms.calc = calculator
    energies = {"calculator": atoms.get_potential_energy(), "predict": e3pot.predict(model, [atoms])[0]["energy"]}
    atoms.calc = e3pot.E3PotCalculator(exported)
    energies["export"] = atoms.get_potential_energy()
    assert atoms.calc.dtype == torch.float32
    for path, energy in energies.items():
        # float32 did run (its rounding shows), and the float64 shifts and sum keep the total exact
        assert 1e-9 < abs(energy - ref) < 5e-6, (path, energy, ref)


def test_shift_correction_removes_an_offset():
    model = make_model()
    frames = []
    for k, name in enumerate(["CH3CH2OH", "CH3CHO", "CH3OH", "CH3CH2OH"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        atoms.info["energy"] = 0.0
        frames.append(frame_from_atoms(atoms, source=f"frame {k}"))
    species = SpeciesMap(model.atomic_numbers)
    dataset = GraphDataset(frames, species, model.r_max, progress=False)
    # labels = the model's own energies minus a constant 0.04 eV per carbon and 0.01 eV per hydrogen
    with torch.no_grad():
        for graph, labels in dataset.items:
            counts = np.bincount(graph.species.numpy(), minlength=4)
            labels.energy[0] = float(model(graph).sum()) - 0.04 * counts[1] - 0.01 * counts[0]
    indices = list(range(len(dataset)))
    delta = shift_correction(model, dataset, indices)
    np.testing.assert_allclose(delta, [-0.01, -0.04, 0.0, 0.0], atol=1e-9)  # H, C, O; no Si in the data
    before = model.energy_shift.clone()
    model.energy_shift += torch.as_tensor(delta)
    residual = shift_correction(model, dataset, indices)
    np.testing.assert_allclose(residual, 0.0, atol=1e-9)
    with torch.no_grad():
        errors = [float(model(g).sum()) - float(lab.energy[0]) for g, lab in dataset.items]
    np.testing.assert_allclose(errors, 0.0, atol=1e-9)
    assert not torch.allclose(model.energy_shift, before)
