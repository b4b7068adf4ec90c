"""Committees, shallow ensembles, the uncertainty they give, watching MD with it, and picking what to label."""
import json
import os

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.io import read, write
from ase.md.verlet import VelocityVerlet

import e3pot
from e3pot.calculator import E3PotCalculator, UncertainStructure
from e3pot.cli.main import main as e3pot_main
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model import forces as F
from e3pot.model.ensemble import Calibration, Committee, head_spread
from e3pot.model.runtime import load_any
from e3pot.select import farthest_point_picks, select_frames
from e3pot.testing.models import random_model
from tests.trained_model import train_tiny, trained_model, training_frames  # noqa: F401


def _graph(model, *structures):
    species = SpeciesMap(model.atomic_numbers)
    return collate([atoms_to_graph(a, species, model.r_max, source=f"s{k}") for k, a in enumerate(structures)])


def _silicon():
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=1)
    return si


def _ethanol(seed=0):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def _stretched(atoms, factor=1.4):
    out = atoms.copy()
    centre = out.positions.mean(0)
    out.positions = centre + factor * (out.positions - centre)
    return out


# -- committees ------------------------------------------------------------------------------------

def test_committee_of_copies_has_zero_spread_and_the_model_s_results():
    model = random_model("e3")
    for atoms in (_ethanol(), _silicon()):
        one = E3PotCalculator(model)
        three = E3PotCalculator([model, model, model])
        atoms.calc = one
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        s = atoms.get_stress() if atoms.pbc.any() else None
        atoms.calc = three
        assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-14, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), f, rtol=0, atol=1e-12)
        if s is not None:
            np.testing.assert_allclose(atoms.get_stress(), s, rtol=0, atol=1e-14)
            # the members' stresses agree to rounding (a virial summed over edges in another order), not bitwise
            np.testing.assert_allclose(three.results["stress_std"], 0.0, rtol=0, atol=1e-15)
        # members run one after the other agree to rounding (threaded sums), not always bitwise
        assert abs(three.results["energy_std"]) <= 1e-12
        np.testing.assert_allclose(three.results["forces_std"], np.zeros(len(atoms)), rtol=0, atol=1e-12)
        assert "energy_std" not in one.results


def test_stacked_committee_equals_members_one_by_one():
    members = [random_model("e3", seed=s) for s in range(3)]
    graph = _graph(members[0], _ethanol(), _silicon())
    stacked, sequential = Committee(members, stacked=True), Committee(members, stacked=False)
    a, b = stacked.spread(graph, True), sequential.spread(graph, True)
    assert stacked._stack is not None and sequential._stack is None
    for name, x, y in zip(a._fields, a, b):
        if isinstance(x, torch.Tensor):
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    # the members' own predictions: mean and population std of the forces
    each = torch.stack([F.evaluate(m, graph, True).forces.detach() for m in members])
    np.testing.assert_allclose(a.forces.numpy(), each.mean(0).numpy(), atol=1e-12)
    expected = each.var(0, unbiased=False).sum(-1).sqrt()
    np.testing.assert_allclose(a.forces_std.numpy(), expected.numpy(), atol=1e-12)
    assert float(a.forces_std.min()) > 0


def test_committee_calibration_scales_the_spread():
    members = [random_model("e3", seed=s) for s in range(2)]
    graph = _graph(members[0], _ethanol())
    raw = Committee(members).spread(graph)
    scaled = Committee(members, calibration=Calibration(energy=2.0, forces=3.0)).spread(graph)
    assert float(scaled.energy_std[0]) == pytest.approx(2 * float(raw.energy_std[0]))
    np.testing.assert_allclose(scaled.forces_std.numpy(), 3 * raw.forces_std.numpy())
    np.testing.assert_array_equal(scaled.forces.numpy(), raw.forces.numpy())


def test_committee_refuses_members_that_disagree():
    a = random_model("e3")
    b = random_model("e3", atomic_numbers=(1, 6, 8))
    with pytest.raises(ValueError, match="same elements"):
        Committee([a, b])
    with pytest.raises(ValueError, match="at least two"):
        Committee([a])
    assert load_any([a]) is not None and not isinstance(load_any([a]), Committee)


def test_committee_mixes_model_files_and_exports(tmp_path):
    members = [random_model("e3", seed=s) for s in range(2)]
    path = e3pot.save_model(members[0], str(tmp_path / "a.pt"))
    from e3pot.model.export import export_model

    exported = export_model(members[1], str(tmp_path / "b.pt"))
    atoms = _ethanol()
    atoms.calc = E3PotCalculator([path, exported])
    atoms.get_potential_energy()
    reference = Committee(members, stacked=False).spread(_graph(members[0], atoms))
    np.testing.assert_allclose(atoms.calc.results["forces_std"], reference.forces_std.numpy(), atol=1e-10)


# -- shallow ensembles -------------------------------------------------------------------------------

def test_heads_spread_matches_each_head_on_its_own():
    model = random_model("e3", heads=3)
    graph = _graph(model, _ethanol(), _silicon())
    s = head_spread(model, graph, compute_stress=True, calibration=Calibration())
    ref = F.evaluate(model, graph, compute_stress=True)
    np.testing.assert_allclose(s.energy.numpy(), ref.energy.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(s.forces.numpy(), ref.forces.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(s.stress[1].numpy(), ref.stress[1].detach().numpy(), atol=1e-12)
    per_head = []
    for k in range(3):  # head k alone: its own forces by a plain backward pass
        positions = graph.positions.detach().requires_grad_(True)
        energy = model.head_energies(graph._replace(positions=positions))[:, k].sum()
        per_head.append(-torch.autograd.grad(energy, positions)[0])
    per_head = torch.stack(per_head)
    np.testing.assert_allclose(s.forces_std.numpy(), per_head.var(0, unbiased=False).sum(-1).sqrt().numpy(), atol=1e-12)


def test_uncertainty_is_invariant_under_rotation_and_permutation():
    model = random_model("e3", heads=4)
    atoms = _ethanol()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))  # a rotoreflection
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + 1.7
    perm = np.random.default_rng(1).permutation(len(atoms))
    shuffled = atoms[perm]
    base = head_spread(model, _graph(model, atoms))
    for other, order in ((moved, np.arange(len(atoms))), (shuffled, perm)):
        s = head_spread(model, _graph(model, other))
        assert float(s.energy_std[0]) == pytest.approx(float(base.energy_std[0]), rel=1e-9)
        np.testing.assert_allclose(s.forces_std.numpy(), base.forces_std.numpy()[order], rtol=1e-8, atol=1e-12)


def test_one_headed_model_file_is_unchanged_and_heads_round_trip(tmp_path):
    plain = random_model("e3")
    assert plain.config["heads"] == 1 and plain.readout.irreps_out.dim == 1  # the layout of every earlier model file
    model = random_model("e3", heads=3)
    model.metadata = {"uncertainty": Calibration(0.5, 2.0).metadata()}
    path = e3pot.save_model(model, str(tmp_path / "h.pt"), metadata=model.metadata)
    loaded = e3pot.load_model(path)
    assert loaded.num_heads == 3 and Calibration.of(loaded) == Calibration(0.5, 2.0)
    graph = _graph(model, _ethanol())
    a, b = head_spread(model, graph), head_spread(loaded, graph)
    np.testing.assert_allclose(a.forces_std.numpy(), b.forces_std.numpy(), rtol=1e-12)
    raw = head_spread(model, graph, calibration=Calibration())
    np.testing.assert_allclose(a.forces_std.numpy(), 2.0 * raw.forces_std.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="heads must be a positive integer"):
        random_model("e3", heads=0)


def test_threshold_needs_an_uncertainty():
    with pytest.raises(ValueError, match="no uncertainty|has none"):
        E3PotCalculator(random_model("e3"), uncertainty_threshold=0.1)
    with pytest.raises(ValueError, match="need an uncertainty_threshold"):
        E3PotCalculator([random_model("e3"), random_model("e3", seed=1)], stop_when_uncertain=True)
    with pytest.raises(ValueError, match="positive"):
        E3PotCalculator(random_model("e3", heads=2), uncertainty_threshold=0.0)


def test_md_stops_at_an_uncertain_structure_and_keeps_old_flagged_frames(tmp_path):
    members = [random_model("e3", seed=s) for s in range(3)]
    atoms = _ethanol()
    probe = E3PotCalculator(members)
    atoms.calc = probe
    atoms.get_potential_energy()
    start = float(probe.results["forces_std"].max())
    flagged_file = str(tmp_path / "flagged.extxyz")
    write(flagged_file, molecule("H2O"))  # a file the user had: appended to, never replaced
    calc = E3PotCalculator(members, uncertainty_threshold=1.05 * start, flagged_file=flagged_file,
                           stop_when_uncertain=True)
    atoms.calc = calc
    atoms.set_momenta(np.random.default_rng(0).normal(0, 0.5, (len(atoms), 3)))  # hot: it moves away fast
    with pytest.raises(UncertainStructure, match="passed the threshold") as caught:
        VelocityVerlet(atoms, 0.5 * units.fs).run(500)
    saved = read(flagged_file, ":")
    assert len(saved) == 2 and saved[0].get_chemical_formula() == "H2O"
    assert saved[1].info["e3pot_max_forces_std"] > calc.uncertainty_threshold
    assert caught.value.max_forces_std == pytest.approx(saved[1].info["e3pot_max_forces_std"])
    np.testing.assert_allclose(saved[1].positions, caught.value.atoms.positions, atol=1e-6)  # extxyz: 8 decimals
    assert saved[1].arrays["e3pot_forces_std"].shape == (len(atoms),)
    assert len(calc.flagged) == 1


# -- selection ---------------------------------------------------------------------------------------

def _pool():
    rng = np.random.default_rng(0)
    pool = []
    for k in range(12):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.03 * (1 + k / 3), atoms.positions.shape)
        pool.append(atoms)
    return pool


def test_select_returns_distinct_frames_and_skips_copies():
    members = [random_model("e3", seed=s) for s in range(3)]
    pool = _pool()
    alone = select_frames(members, pool, 1)[0]
    worst = alone.info["e3pot_select_pool_index"]
    pool_with_copies = pool + [pool[worst].copy() for _ in range(8)]  # the most uncertain frame, 9 times
    picks = select_frames(members, pool_with_copies, 5)
    indices = [p.info["e3pot_select_pool_index"] for p in picks]
    assert len(set(indices)) == 5
    positions = [p.positions.tobytes() for p in picks]
    assert len(set(positions)) == 5  # no two picks are the same structure
    assert indices[0] == worst and picks[0].info["e3pot_select_rank"] == 1
    assert all("rank" in p.info["e3pot_select_reason"] for p in picks)
    assert picks[0].calc is None


def test_farthest_point_rule_prefers_a_distinct_frame_over_a_near_copy():
    # four frames: A (most uncertain), A' (a near copy of A), B (far away), C; two picks: A, then B not A'
    features = np.array([[0.0, 0.0], [1e-3, 0.0], [5.0, 0.0], [2.0, 2.0]])
    score = np.array([1.0, 0.99, 0.5, 0.4])
    picks = farthest_point_picks(score, features, 2, candidates=4)
    assert [p.index for p in picks] == [0, 2]
    assert picks[1].rank == 3 and picks[1].distance == pytest.approx(5.0)
    # without a shortlist larger than n there is no diversity rule: the two most uncertain
    assert [p.index for p in farthest_point_picks(score, features, 2, candidates=2)] == [0, 1]
    # the upper trust level leaves out the two most uncertain
    assert [p.index for p in farthest_point_picks(score, features, 2, candidates=4, max_score=0.6)] == [2, 3]
    with pytest.raises(ValueError, match="2 above the trust level 0.6"):
        farthest_point_picks(score, features, 3, max_score=0.6)


def test_select_refuses_too_many_and_models_without_uncertainty():
    members = [random_model("e3", seed=s) for s in range(2)]
    pool = _pool()
    with pytest.raises(ValueError, match="pool holds only 12"):
        select_frames(members, pool, 13)
    with pytest.raises(ValueError, match="distinct"):
        select_frames(members, [pool[0]] + [pool[0].copy() for _ in range(5)], 2)
    with pytest.raises(ValueError, match="has none"):
        select_frames(random_model("e3"), pool, 2)


def test_select_cli_writes_picks_and_refuses_clearly(tmp_path, capsys):
    members = [e3pot.save_model(random_model("e3", seed=s), str(tmp_path / f"m{s}.pt")) for s in range(2)]
    pool_file = str(tmp_path / "pool.extxyz")
    write(pool_file, _pool())
    out = str(tmp_path / "picks.extxyz")
    assert e3pot_main(["select", pool_file, "--model", ",".join(members), "-n", "3", "-o", out, "--no-progress"]) == 0
    picks = read(out, ":")
    assert len(picks) == 3 and all("pool.extxyz, frame" in p.info["e3pot_select_source"] for p in picks)
    assert e3pot_main(["select", pool_file, "--model", ",".join(members), "-n", "13", "-o", str(tmp_path / "x.extxyz"),
                       "--no-progress"]) == 2
    assert "pool holds only 12" in capsys.readouterr().err
    assert e3pot_main(["select", pool_file, "--model", members[0], "-n", "2", "-o", str(tmp_path / "y.extxyz"),
                       "--no-progress"]) == 2
    assert "has none" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.extxyz") and not os.path.exists(tmp_path / "y.extxyz")


# -- predict -----------------------------------------------------------------------------------------

def test_predict_uncertainty_writes_spreads_plot_and_metrics(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    members = [e3pot.save_model(random_model("e3", seed=s), str(tmp_path / f"m{s}.pt")) for s in range(3)]
    frames = [_ethanol(seed=k) for k in range(4)]
    for atoms in frames:  # reference labels from another model
        atoms.calc = E3PotCalculator(random_model("e3", seed=7))
        atoms.get_forces()
    data = str(tmp_path / "in.extxyz")
    write(data, frames)
    out, table, plot, metrics = (str(tmp_path / n) for n in ("out.extxyz", "out.csv", "cal.png", "m.json"))
    rc = e3pot_main(["predict", ",".join(members), data, "-o", out, "--csv", table, "--uncertainty", "--plot", plot,
                     "--metrics-json", metrics, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Spearman" in printed and "calibration plot" in printed
    written = read(out, ":")
    committee = Committee([random_model("e3", seed=s) for s in range(3)])
    reference = committee.spread(_graph(committee.members[0], frames[2]))
    np.testing.assert_allclose(written[2].arrays["e3pot_forces_std"], reference.forces_std.numpy(), rtol=1e-6)
    assert written[2].info["e3pot_energy_std"] == pytest.approx(float(reference.energy_std[0]), rel=1e-6)
    header = open(table).readline().strip().split(",")
    assert header[-2:] == ["energy_std_eV", "max_forces_std_eV_A"]
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    scores = json.load(open(metrics))["uncertainty"]
    assert scores["forces"]["n"] == 4 * 9 * 3 and -1 <= scores["forces"]["spearman"] <= 1
    assert 0 <= scores["energy_per_atom"]["miscalibration_area"] <= 0.5
    rc = e3pot_main(["predict", members[0], data, "-o", str(tmp_path / "one.extxyz"), "--uncertainty", "--no-progress"])
    assert rc == 2 and "no uncertainty" in capsys.readouterr().err


# -- training ------------------------------------------------------------------------------------------

def test_bootstrap_draws_differ_by_seed_and_repeat_by_seed():
    from e3pot.train.datamodule import E3PotDataModule

    def draw(seed):
        return E3PotDataModule("x.extxyz", bootstrap=seed).bootstrap_draw(50)

    a, b = draw(1), draw(2)
    assert len(a) == 50 and np.all(np.diff(a) >= 0) and len(np.unique(a)) < 50  # with replacement
    assert not np.array_equal(a, b) and np.array_equal(a, draw(1))
    with pytest.raises(ValueError, match="bootstrap"):
        E3PotDataModule("x.extxyz", bootstrap=-1)


@pytest.fixture(scope="module")
def shallow_ensemble(tmp_path_factory):
    return train_tiny(tmp_path_factory, "heads", ["--model.heads", "4"])


@pytest.mark.slow
def test_shallow_ensemble_trains_calibrates_and_passes_the_audit(shallow_ensemble, capsys):
    model = e3pot.load_model(shallow_ensemble)
    assert model.num_heads == 4
    weights = model.readout.weight.detach().reshape(-1, 4)
    assert float((weights - weights.mean(1, keepdim=True)).abs().max()) > 1e-3  # the heads differ
    stored = model.metadata["uncertainty"]
    assert stored["energy_scale"] > 0 and stored["forces_scale"] > 0 and "validation" in stored["fitted_on"]
    rc = e3pot_main(["audit", shallow_ensemble, "--nve-steps", "0", "--threads", "1", "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    checks = [c for c in report["checks"] if c["name"].split(":")[0] in
              ("rotation", "rotoreflection", "translation", "permutation", "finite differences")]
    assert checks and all(c["passed"] for c in checks), [c for c in checks if not c["passed"]]
    assert rc == 0


@pytest.mark.slow
def test_committee_spread_grows_on_a_stretched_molecule(trained_model, tmp_path_factory):
    members = [trained_model] + [train_tiny(tmp_path_factory, f"member{s}", ["--seed_everything", str(s),
                                                                              "--data.bootstrap", "true"])
                                 for s in (1, 2)]
    frame = training_frames()[0]  # an ethanol training frame
    calc = E3PotCalculator(members)
    frame.calc = calc
    frame.get_potential_energy()
    near = float(calc.results["forces_std"].max())
    stretched = _stretched(frame, 1.4)  # every bond x1.4
    stretched.calc = calc
    stretched.get_potential_energy()
    far = float(calc.results["forces_std"].max())
    assert far > 2 * near > 0
