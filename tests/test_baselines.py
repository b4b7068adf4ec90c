"""The baseline model kinds: what each has built in, the rotation augmentation, and that every kind
trains from its config and works with save/load, export, the calculator and the audit."""
import glob
import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import write

import e3pot
from e3pot.audit import audit
from e3pot.data.augment import random_orthogonal, rotate
from e3pot.data.dataset import collate_batch
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.data.graph import Labels, collate
from e3pot.model.export import ExportedModel, export_model
from e3pot.model.forces import evaluate
from e3pot.model import kinds
from e3pot.model.kinds import KINDS, build_model
from tests.conftest import SPECIES, graph_of, make_model
from tests.trained_model import ROOT, single_torch_thread, training_frames  # noqa: F401  (fixture)


def tiny(kind, seed=0, **kwargs):
    """A random float64 model of ``kind`` with perturbed weights (not the zero function)."""
    torch.manual_seed(seed)
    config = dict(kind=kind, atomic_numbers=SPECIES, r_max=3.5, num_features=6, num_layers=3, num_basis=6,
                  radial_hidden=16, avg_num_neighbors=4.0, energy_shift=[-13.0, -1030.0, -2040.0, -100.0],
                  energy_scale=1.3)
    config.update(kwargs)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


def predict(model, atoms, stress=False):
    out = evaluate(model, graph_of(atoms, model), compute_stress=stress)
    return out.energy.item(), out.forces.detach().numpy(), None if out.stress is None else out.stress[0].detach().numpy()


def molecule_like(seed=3):
    rng = np.random.default_rng(seed)
    return Atoms("CCOHHHH", positions=rng.uniform(0, 3.0, size=(7, 3)))


# -- what is built in ------------------------------------------------------------------------------

def star(angle_deg, r=1.5):
    """C with two H at distance r, the H-H distance (>= 2.6 Å for angles >= 120°) beyond the cutoff:
    the graph and all its edge lengths are the same at every angle."""
    a = np.radians(angle_deg)
    return Atoms("CHH", positions=[[0, 0, 0], [r, 0, 0], [r * np.cos(a), r * np.sin(a), 0]])


@pytest.mark.parametrize("kind, options, sees_angles", [
    ("e3", {"l_max": 0}, False),
    ("e3", {"l_max": 1}, True),
    ("egnn", {}, True),
    ("egnn", {"update_positions": False}, False),
], ids=["invariant-l0", "e3-l1", "egnn", "egnn-fixed-positions"])
def test_which_kinds_see_angles(kind, options, sees_angles):
    model = tiny(kind, r_max=2.0, **options)
    energies = np.array([predict(model, star(angle))[0] for angle in (120, 135, 150, 165, 180)])
    spread = energies.max() - energies.min()
    if sees_angles:
        assert spread > 1e-6, energies
    else:  # distances only: the energy cannot depend on the angle
        assert spread < 1e-12, energies


# Symmetry of each kind (cartesian: translations and permutations only): tests/test_battery.py.


# -- augmentation ------------------------------------------------------------------------------------

def test_augmentation_transforms_labels_like_the_physics(periodic):
    """Labels that an equivariant model predicts for a structure, rotated by the augmentation, are what the
    model predicts for the rotated structure: positions, image shifts, cell, forces and stress agree."""
    model = make_model()
    graph = collate([atoms_to_graph(periodic, SpeciesMap(model.atomic_numbers), model.r_max)])
    pred = evaluate(model, graph, compute_stress=True)
    labels = Labels(pred.energy, pred.forces, pred.stress, torch.tensor([len(periodic)]))
    torch.manual_seed(5)
    q = random_orthogonal()
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    g2, l2 = rotate(graph, labels, q)
    pred2 = evaluate(model, g2, compute_stress=True)
    assert torch.allclose(pred2.energy, labels.energy, atol=1e-10)
    assert torch.allclose(pred2.forces, l2.forces, atol=1e-10)
    assert torch.allclose(pred2.stress, l2.stress, atol=1e-10)
    assert not torch.allclose(l2.forces, labels.forces, atol=1e-3)  # it did turn


def test_augmented_batches_differ_but_keep_distances(ethanol):
    model = make_model()
    graph = atoms_to_graph(ethanol, SpeciesMap(model.atomic_numbers), model.r_max)
    labels = Labels(torch.zeros(1, dtype=torch.float64), torch.zeros(len(ethanol), 3, dtype=torch.float64),
                    torch.full((1, 3, 3), float("nan"), dtype=torch.float64), torch.tensor([len(ethanol)]))
    torch.manual_seed(0)
    flips = set()
    for _ in range(8):
        g, _, _ = collate_batch([(graph, labels, 0)], augment=True)
        assert not torch.allclose(g.positions, graph.positions, atol=1e-3)
        assert torch.allclose(torch.cdist(g.positions, g.positions), torch.cdist(graph.positions, graph.positions),
                              atol=1e-12)
        centred = g.positions - g.positions.mean(0)
        ref = graph.positions - graph.positions.mean(0)
        q = torch.linalg.lstsq(ref, centred).solution.T
        flips.add(round(float(torch.det(q))))
    assert flips == {-1, 1}  # rotations and reflections both drawn
    g, _, _ = collate_batch([(graph, labels, 0)])
    assert torch.equal(g.positions, graph.positions)  # off by default


# -- every kind trains from its config and runs everywhere --------------------------------------------

TINY = ["--trainer.max_epochs", "2", "--model.dtype", "float64", "--model.num_features", "4",
        "--model.num_layers", "2", "--model.radial_hidden", "8", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("config, kind", [("invariant", "e3"), ("egnn", "egnn"), ("cartesian", "cartesian")])
def test_baseline_config_trains_and_runs_everywhere(config, kind, tmp_path, monkeypatch):
    from e3pot.train.cli import main as train_main

    train_file = str(tmp_path / "train.extxyz")
    write(train_file, training_frames()[::3])
    monkeypatch.chdir(tmp_path)
    path = train_main(["--config", os.path.join(ROOT, "configs", f"{config}.yaml"), "--data.train_file", train_file,
                       "--output", "model.pt", *TINY])
    model = e3pot.load_model(path)
    assert model.config["kind"] == kind and type(model) is KINDS[kind]
    if config == "invariant":
        assert model.config["l_max"] == 0
    # the checkpoint records the settings of the model built: those of its kind, defaults filled in
    (ckpt,) = glob.glob(os.path.join(tmp_path, "runs", config, "version_0", "checkpoints", "last.ckpt"))
    hp = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert {name for name in hp if name in kinds.SETTINGS} == set(kinds.defaults(kind))
    assert {name: hp[name] for name in kinds.defaults(kind)} == {
        name: value for name, value in model.config.items() if name in kinds.SETTINGS}

    atoms = training_frames()[0]
    atoms.calc = e3pot.E3PotCalculator(path)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert np.isfinite(energy) and np.isfinite(forces).all()
    (pred,) = e3pot.predict(path, [atoms.copy()])
    assert abs(pred["energy"] - energy) < 1e-9 and np.abs(pred["forces"] - forces).max() < 1e-9
    exported = ExportedModel(export_model(model, str(tmp_path / "model.ts")))
    out = exported(graph_of(atoms, model))
    assert abs(out[0].item() - energy) < 1e-9 and np.abs(out[1].numpy() - forces).max() < 1e-9

    report = audit(path, max_structures=1, dtypes=("float64",), nve_steps=0, seed=0)
    failed = {c.name.split(":")[0] for c in report.failed}
    if kind == "cartesian":  # nothing built in: the audit measures how far from symmetric it is
        assert failed == {"rotation", "rotoreflection"}, report.table()
    else:
        assert report.passed, report.table()


@pytest.mark.parametrize("kind, options", [("cartesian", {}), ("e3", {"l_max": 0})], ids=["cartesian", "invariant"])
def test_chunked_evaluation_of_the_baselines(periodic, kind, options):
    """The Cartesian and invariant models keep the layout of chunked evaluation (the Cartesian kind with
    its own edge embedding, the invariant one with constant harmonics): same numbers as the direct path;
    an EGNN is never chunked, whatever the budget."""
    from e3pot.model.chunked import chunkable, chunked_evaluate, plan
    from e3pot.model.forces import Conservative

    model = tiny(kind, **options)
    graph = graph_of(periodic, model)
    direct = Conservative(model)(graph, True)
    chunked = chunked_evaluate(model, graph, True, 13)
    for a, b in zip(direct, chunked):
        assert torch.allclose(a, b, atol=1e-10)
    egnn = tiny("egnn")
    assert chunkable(model) and not chunkable(egnn)
    assert plan(egnn, graph_of(periodic, egnn), True, memory_budget=1e-6) is None
