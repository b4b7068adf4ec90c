"""Committees and shallow ensembles at their edges: shallow ensembles inside committees, members that list
their elements in another order, comma-separated member paths, members that predict the same, exports of
shallow ensembles, and options that would have no effect."""
import contextlib
import io
import os
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.cli.main import main as e3pot_main
from e3pot.cli.predict import model_paths
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model import forces as F
from e3pot.model.ensemble import (Calibration, Committee, IdenticalMembersWarning, combine, fit_calibration,
                                  head_spread)
from e3pot.model.runtime import load_any, run_model
from e3pot.select import score_pool, select_frames, structure_features
from e3pot.testing.models import random_model
from tests.trained_model import single_torch_thread  # noqa: F401

REVERSED = (14, 8, 6, 1)  # the test species (H, C, O, Si) in another order


def _graph(model, *structures):
    species = SpeciesMap(model.atomic_numbers)
    return collate([atoms_to_graph(a, species, model.r_max, source=f"s{k}") for k, a in enumerate(structures)])


def _ethanol(seed=0):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=seed)
    return atoms


def _silicon():
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=1)
    return si


def _pool(n=8):
    rng = np.random.default_rng(0)
    pool = []
    for k in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(0, 0.03 * (1 + k / 3), atoms.positions.shape)
        pool.append(atoms)
    return pool


def _shallow(seed=0, calibration=None, heads=3):
    model = random_model("e3", seed=seed, heads=heads)
    if calibration is not None:
        model.metadata = {"uncertainty": calibration.metadata()}
    return model


def _per_head(model, graph):
    """Energies (heads, n_graphs), forces (heads, n_atoms, 3) and stress (heads, n_graphs, 3, 3) of each head
    on its own, by plain backward passes."""
    from e3pot.model.forces import stress_from_strain_derivative, strain_geometry
    from e3pot.nn.scatter import scatter_sum

    energies, forces, stress = [], [], []
    for k in range(model.num_heads):
        positions = graph.positions.detach().requires_grad_(True)
        strain = torch.zeros_like(graph.cell).requires_grad_(True)
        strained, shift = strain_geometry(graph, positions, strain)
        atomic = model.head_energies(graph._replace(positions=strained, edge_shift=shift))[:, k]
        energy = scatter_sum(atomic, graph.batch, graph.cell.shape[0])
        g_pos, g_strain = torch.autograd.grad(energy.sum(), [positions, strain])
        energies.append(energy.detach())
        forces.append(-g_pos)
        stress.append(stress_from_strain_derivative(g_strain, graph.cell, graph.pbc))
    return torch.stack(energies), torch.stack(forces), torch.stack(stress)


def _run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = e3pot_main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Model files (plain a, b; reversed species r; shallow ensemble h with a calibration), exports of h (by the
    command line: its notes) and of r, and an input file."""
    work = tmp_path_factory.mktemp("defects")
    paths = {
        "a": e3pot.save_model(random_model("e3"), str(work / "a.pt")),
        "b": e3pot.save_model(random_model("e3", seed=1), str(work / "b.pt")),
        "r": e3pot.save_model(random_model("e3", seed=2, atomic_numbers=REVERSED), str(work / "r.pt")),
    }
    shallow = _shallow(calibration=Calibration(0.5, 2.0))
    paths["h"] = e3pot.save_model(shallow, str(work / "h.pt"), metadata=shallow.metadata)
    paths["inputs"] = str(work / "in.extxyz")
    write(paths["inputs"], [_ethanol(seed=k) for k in range(3)])
    paths["h_ts"] = str(work / "h.ts")
    rc, out, err = _run_cli(["export", paths["h"], "-o", paths["h_ts"]])
    assert rc == 0, err
    paths["h_export_stderr"] = err
    rc, out, err = _run_cli(["export", paths["a"], "-o", str(work / "a.ts")])
    assert rc == 0, err
    paths["a_export_stderr"] = err
    from e3pot.model.export import export_model

    paths["r_ts"] = export_model(random_model("e3", seed=2, atomic_numbers=REVERSED), str(work / "r.ts"))
    paths["work"] = str(work)
    return paths


# -- 1. shallow ensembles inside committees ---------------------------------------------------------------

def test_a_committee_of_copies_of_a_shallow_ensemble_has_its_spread():
    model = _shallow(calibration=Calibration(0.5, 2.0))
    graph = _graph(model, _ethanol(), _silicon())
    alone = head_spread(model, graph, compute_stress=True)
    three = Committee([model, model, model]).spread(graph, compute_stress=True)
    assert float(alone.energy_std.min()) > 0.01
    for name in ("energy_std", "forces_std", "energy", "forces"):
        np.testing.assert_allclose(getattr(three, name).numpy(), getattr(alone, name).numpy(), rtol=1e-12,
                                   atol=1e-14, err_msg=name)
    np.testing.assert_allclose(three.stress_std[1].numpy(), alone.stress_std[1].numpy(), rtol=1e-12, atol=1e-14)
    # the calculator, as a user meets it
    atoms = _ethanol()
    atoms.calc = E3PotCalculator([model, model, model])
    atoms.get_potential_energy()
    alone = head_spread(model, _graph(model, atoms))
    assert atoms.calc.results["energy_std"] == pytest.approx(float(alone.energy_std[0]), rel=1e-12)


def test_a_committee_of_shallow_ensembles_is_the_mixture_of_all_their_heads():
    members = [_shallow(seed=0), _shallow(seed=1)]
    graph = _graph(members[0], _ethanol(), _silicon())
    s = Committee(members).spread(graph, compute_stress=True)
    energies, forces, stress = (torch.cat(parts) for parts in zip(*(_per_head(m, graph) for m in members)))
    np.testing.assert_allclose(s.energy_std.numpy(), energies.std(0, unbiased=False).numpy(), rtol=1e-10)
    np.testing.assert_allclose(s.forces_std.numpy(), forces.var(0, unbiased=False).sum(-1).sqrt().numpy(),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(s.stress_std[1].numpy(), stress[:, 1].std(0, unbiased=False).numpy(), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(s.energy.numpy(), energies.mean(0).numpy(), rtol=1e-13)


def test_each_member_s_calibration_scales_its_own_heads_only():
    shallow, plain = _shallow(seed=0, calibration=Calibration(0.5, 2.0)), random_model("e3", seed=1)
    graph = _graph(plain, _ethanol())
    committee = Committee([shallow, plain], calibration=Calibration(3.0, 0.25))
    s = committee.spread(graph)
    heads = head_spread(shallow, graph)  # with its own calibration
    other = F.evaluate(plain, graph)
    e = torch.stack([heads.energy, other.energy.detach()])
    f = torch.stack([heads.forces, other.forces.detach()])
    energy_var = heads.energy_std ** 2 / 2 + e.var(0, unbiased=False)
    forces_var = heads.forces_std ** 2 / 2 + f.var(0, unbiased=False).sum(-1)
    np.testing.assert_allclose(s.energy_std.numpy(), 3.0 * energy_var.sqrt().numpy(), rtol=1e-12)
    np.testing.assert_allclose(s.forces_std.numpy(), 0.25 * forces_var.sqrt().numpy(), rtol=1e-12)
    # fit_calibration fits the committee's factors on top of the members' own
    raw, committee.calibration = committee.calibration, Calibration()
    plain_spread = committee.spread(graph)
    committee.calibration = raw
    np.testing.assert_allclose(s.energy_std.numpy(), 3.0 * plain_spread.energy_std.numpy(), rtol=1e-14)


def test_a_committee_of_plain_models_keeps_its_numbers():
    members = [random_model("e3", seed=s) for s in range(3)]
    graph = _graph(members[0], _ethanol(), _silicon())
    outs = [run_model(m, graph, True) for m in members]
    expected = combine(*(torch.stack([o[k].detach() for o in outs]) for k in (0, 1, 2, 3)), Calibration(1.5, 0.5))
    got = Committee(members, stacked=False, calibration=Calibration(1.5, 0.5)).spread(graph, True)
    for name, x, y in zip(expected._fields, expected, got):
        if isinstance(x, torch.Tensor):
            np.testing.assert_array_equal(y.numpy(), x.numpy(), err_msg=name)  # bit for bit


def test_a_committee_refuses_a_shallow_ensemble_that_runs_its_mean_only(files):
    with pytest.raises(ValueError, match=r"h.ts is a shallow ensemble \(3 read-out heads\) exported.*heads' spread "
                                         r"would be lost.*model file"):
        Committee([files["h_ts"], files["a"]])


# -- 2. members that list their elements in another order -------------------------------------------------

def test_a_committee_takes_members_with_the_elements_in_another_order():
    a, r = random_model("e3", seed=0), random_model("e3", seed=2, atomic_numbers=REVERSED)
    structures = (_ethanol(), _silicon())
    one = F.evaluate(a, _graph(a, *structures), compute_stress=True)
    two = F.evaluate(r, _graph(r, *structures), compute_stress=True)
    for committee in (Committee([a, r]), Committee([r, a]), Committee([a, r, a], stacked=False)):
        graph = _graph(committee, *structures)
        s = committee.spread(graph, compute_stress=True)
        weight = 2 / 3 if len(committee) == 3 else 1 / 2
        energy = weight * one.energy.detach() + (1 - weight) * two.energy.detach()
        np.testing.assert_allclose(s.energy.numpy(), energy.numpy(), rtol=0, atol=1e-10)
        forces = weight * one.forces.detach() + (1 - weight) * two.forces.detach()
        np.testing.assert_allclose(s.forces.numpy(), forces.numpy(), rtol=0, atol=1e-10)
        stress = weight * one.stress[1].detach() + (1 - weight) * two.stress[1].detach()
        np.testing.assert_allclose(s.stress[1].numpy(), stress.numpy(), rtol=0, atol=1e-10)
    s = Committee([a, r]).spread(_graph(a, *structures))
    np.testing.assert_allclose(s.energy_std.numpy(), (one.energy - two.energy).abs().detach().numpy() / 2, atol=1e-10)
    atoms = _ethanol()
    atoms.calc = E3PotCalculator([r, a])
    assert atoms.get_potential_energy() == pytest.approx(float(s.energy[0]), abs=1e-10)


def test_a_shallow_ensemble_in_another_order_joins_a_committee():
    shallow = _shallow(seed=0)
    reordered = random_model("e3", seed=3, heads=3, atomic_numbers=REVERSED)
    graph = _graph(shallow, _ethanol())
    s = Committee([shallow, reordered]).spread(graph)
    e = torch.cat([_per_head(shallow, graph)[0], _per_head(reordered, _graph(reordered, _ethanol()))[0]])
    np.testing.assert_allclose(s.energy_std.numpy(), e.std(0, unbiased=False).numpy(), rtol=1e-10)


def test_members_that_know_other_elements_are_still_refused_by_name():
    with pytest.raises(ValueError, match=r"same elements: member 0 knows H, C, O, Si .* member 1 knows H, C, O "):
        Committee([random_model("e3"), random_model("e3", atomic_numbers=(1, 6, 8))])
    with pytest.raises(ValueError, match="one cutoff: .*3.5 Å.*4.0 Å"):
        Committee([random_model("e3"), random_model("e3", r_max=4.0)])
    with pytest.raises(ValueError, match="2 names for 3 members"):
        Committee([random_model("e3")] * 3, names=["x", "y"])


def test_select_reads_features_in_the_feature_member_s_order(files):
    a = random_model("e3")
    committee = Committee([files["r_ts"], a])  # the first member is an export: the features are a's
    pool = _pool(3)
    scored = score_pool(committee, pool, batch_size=3)
    expected = structure_features(a, _graph(a, *pool))
    np.testing.assert_allclose(scored.features, expected.numpy(), rtol=1e-12)


# -- 3. commas in member paths ---------------------------------------------------------------------------

def test_comma_separated_members_are_checked_part_by_part(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e3pot.save_model(random_model("e3"), "a.pt")
    e3pot.save_model(random_model("e3", seed=1), "b.pt")
    assert model_paths("a.pt,b.pt") == ["a.pt", "b.pt"]
    with pytest.raises(FileNotFoundError, match=r"no such model file: nope.pt; commas separate committee members"):
        model_paths("a.pt,nope.pt")
    with pytest.raises(ValueError, match="an empty committee member"):
        model_paths("a.pt,")
    e3pot.save_model(random_model("e3"), "x.pt,y.pt")  # a file whose name has a comma: one model
    assert model_paths("x.pt,y.pt") == ["x.pt,y.pt"]
    e3pot.save_model(random_model("e3"), "a.pt,b.pt")  # and the two files the commas name: ambiguous
    with pytest.raises(ValueError, match="ambiguous"):
        model_paths("a.pt,b.pt")


def test_predict_names_the_missing_member_and_python_says_how_to_give_a_committee(tmp_path, files):
    rc, out, err = _run_cli(["predict", f"{files['a']},{tmp_path / 'nope.pt'}", files["inputs"], "-o",
                             str(tmp_path / "o.extxyz"), "--no-progress"])
    assert rc == 2 and "nope.pt; commas separate committee members" in err
    with pytest.raises(FileNotFoundError, match="a committee is a list of models"):
        load_any(f"{files['a']},{files['b']}")


# -- 4. members that predict the same --------------------------------------------------------------------

def test_select_refuses_to_rank_by_a_spread_that_is_zero_everywhere():
    model = random_model("e3")
    with pytest.warns(IdenticalMembersWarning, match="member 1 is member 0 again"):
        with pytest.raises(ValueError, match="exactly 0 for every structure of the pool: the 2 committee members give "
                                             "identical predictions"):
            select_frames([model, model], _pool(), 2)
    same_heads = random_model("e3", heads=3)
    with torch.no_grad():
        weight = same_heads.readout.weight.view(-1, 3)
        weight[:] = weight[:, :1]
    with pytest.raises(ValueError, match="the 3 heads of this shallow ensemble give identical predictions"):
        select_frames(same_heads, _pool(), 2)


def test_select_warns_about_a_member_given_twice_and_picks():
    a, b = random_model("e3"), random_model("e3", seed=1)
    with pytest.warns(IdenticalMembersWarning, match="member 2 is member 0 again"):
        picks = select_frames([a, b, a], _pool(), 2)
    assert len(picks) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdenticalMembersWarning)
        select_frames([a, b], _pool(), 2)


def test_select_refuses_force_scores_that_are_all_zero():
    a, b = random_model("e3"), random_model("e3", seed=1)
    atoms = [Atoms("H", positions=[[0, 0, 0]]), Atoms("O", positions=[[0, 0, 0]]), Atoms("C", positions=[[0, 0, 0]])]
    with pytest.raises(ValueError, match="force spread of exactly 0.*score='energy'"):
        select_frames([a, b], atoms, 1)
    assert len(select_frames([a, b], atoms, 1, score="energy")) == 1


def test_select_command_prints_the_warnings(tmp_path, files):
    pool = str(tmp_path / "pool.extxyz")
    write(pool, _pool())
    rc, out, err = _run_cli(["select", pool, "--model", f"{files['a']},{files['a']}", "-n", "2", "-o",
                             str(tmp_path / "x.extxyz"), "--no-progress"])
    assert rc == 2 and "e3pot select: warning: " in err and "identical predictions" in err
    assert not os.path.exists(tmp_path / "x.extxyz")
    rc, out, err = _run_cli(["select", pool, "--model", f"{files['a']},{files['b']},{files['a']}", "-n", "2", "-o",
                             str(tmp_path / "y.extxyz"), "--no-progress"])
    assert rc == 0 and f"e3pot select: warning: {files['a']} is {files['a']} again" in err
    assert len(read(str(tmp_path / "y.extxyz"), ":")) == 2


def test_predict_warns_when_every_spread_is_zero(tmp_path, files):
    rc, out, err = _run_cli(["predict", f"{files['a']},{files['a']}", files["inputs"], "-o",
                             str(tmp_path / "o.extxyz"), "--uncertainty", "--no-progress"])
    assert rc == 0 and "e3pot predict: warning: the spread is exactly 0 for every structure" in err
    rc, out, err = _run_cli(["predict", f"{files['a']},{files['b']}", files["inputs"], "-o",
                             str(tmp_path / "p.extxyz"), "--uncertainty", "--no-progress"])
    assert rc == 0 and "warning" not in err


# -- 5. exports ------------------------------------------------------------------------------------------

def test_export_of_a_shallow_ensemble_says_it_keeps_the_mean_only(files):
    assert "keeps the heads' mean energy, forces and stress only, not their spread" in files["h_export_stderr"]
    assert "3 read-out heads" in files["h_export_stderr"]
    assert files["a_export_stderr"] == ""


def test_export_refuses_a_torchscript_archive_named_as_a_package(files, tmp_path):
    for name in ("m.pt2", "m.PT2"):
        rc, out, err = _run_cli(["export", files["a"], "--format", "torchscript", "-o", str(tmp_path / name)])
        assert rc == 2 and "a .pt2 name is an AOTInductor package's" in err
        assert not os.path.exists(tmp_path / name)


# -- 6. options that would have no effect ----------------------------------------------------------------

def test_predict_refuses_uncertainty_with_compile_before_compiling(tmp_path, files):
    rc, out, err = _run_cli(["predict", files["h"], files["inputs"], "-o", str(tmp_path / "o.extxyz"), "--uncertainty",
                             "--compile", "--no-progress"])
    assert rc == 2 and "--uncertainty with --compile" in err


def test_an_exported_shallow_ensemble_says_why_it_has_no_uncertainty(tmp_path, files):
    rc, out, err = _run_cli(["predict", files["h_ts"], files["inputs"], "-o", str(tmp_path / "o.extxyz"),
                             "--uncertainty", "--no-progress"])
    assert rc == 2 and "an export of an e3 model with 3 read-out heads, which keeps the heads' mean only" in err
    with pytest.raises(ValueError, match="an exported e3 model with one read-out head has none"):
        select_frames(files["r_ts"], _pool(), 1)
    with pytest.raises(ValueError, match="the model is an export of an e3 model with 3 read-out heads"):
        e3pot.predict(files["h_ts"], _ethanol(), uncertainty=True)


def test_predict_runs_a_committee_with_tabulated_radial_networks(tmp_path, files):
    out = str(tmp_path / "o.extxyz")
    rc, _, err = _run_cli(["predict", f"{files['a']},{files['b']}", files["inputs"], "-o", out, "--radial", "table",
                           "--no-progress"])
    assert rc == 0, err
    exact = Committee([files["a"], files["b"]]).spread(_graph(random_model("e3"), read(files["inputs"], 0)))
    assert read(out, 0).info["e3pot_energy"] == pytest.approx(float(exact.energy[0]), abs=1e-6)


def test_select_checks_its_numbers_before_scoring(monkeypatch):
    import e3pot.select as select

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the arguments were checked")

    monkeypatch.setattr(select, "score_pool", no_scoring)
    members = [random_model("e3"), random_model("e3", seed=1)]
    with pytest.raises(ValueError, match="max_score .* must be positive"):
        select_frames(members, _pool(), 1, max_score=-1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        select_frames(members, _pool(), 1, batch_size=0)


def test_fit_calibration_refuses_a_model_without_uncertainty():
    model = random_model("e3")
    graph = _graph(model, _ethanol())
    labels = F.evaluate(model, graph)
    with pytest.raises(ValueError, match="a calibration needs an uncertainty, but an e3 model with one read-out head"):
        fit_calibration(model, [(graph, labels)])
