"""Fine-tuning (model.init_from): the starting model carried over exactly, new elements, energy reference,
frozen groups, replay, and the refusals."""
import os

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.testing.models import random_model
from e3pot.train.cli import main as train_main, run as train_run
from e3pot.train.datamodule import ReplayBatchSampler
from e3pot.train.finetune import groups
from tests.trained_model import torch_threads

SIZES = dict(r_max=3.5, l_max=1, num_features=6, num_layers=2, num_basis=6, radial_hidden=16, radial_layers=1)
ARGS = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.dtype", "float64", "--data.batch_size", "4", "--trainer.accelerator", "cpu"]


def _labelled(formulas, n, teacher, seed=0):
    """``n`` rattled copies of each molecule, labelled by the ``teacher`` model."""
    rng = np.random.default_rng(seed)
    frames = []
    for formula in formulas:
        for _ in range(n):
            atoms = molecule(formula)
            atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
            atoms.calc = E3PotCalculator(teacher)
            atoms.get_forces()
            frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A starting model file (H, C, O) and data of another 'level of theory' (another random model, with N)."""
    folder = tmp_path_factory.mktemp("finetune")
    model = random_model("e3", atomic_numbers=(1, 6, 8), seed=3, **SIZES)
    path = e3pot.save_model(model, str(folder / "start.pt"))
    teacher = random_model("e3", atomic_numbers=(1, 6, 7, 8), seed=5, **SIZES)
    write(str(folder / "hco.extxyz"), _labelled(["CH3CH2OH", "CH3CHO"], 6, teacher))
    write(str(folder / "hcno.extxyz"), _labelled(["CH3CH2OH", "H3CNH2"], 6, teacher, seed=1))
    return folder, path


def _fine_tune(folder, start_path, data, name, *extra):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with torch_threads(1):
            return os.path.join(folder, train_main(["--model.init_from", start_path, "--data.train_file", data,
                                                    "--output", f"{name}.pt", "--overwrite",
                                                    "--trainer.logger.init_args.name", name, *ARGS, *extra]))
    finally:
        os.chdir(cwd)


def _predict(path, atoms):
    atoms = atoms.copy()
    atoms.calc = E3PotCalculator(path)
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.slow
def test_init_from_reproduces_the_model_exactly_and_a_new_element_leaves_it_unchanged(start):
    folder, path = start
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=2)
    e0, f0 = _predict(path, ethanol)
    for data, name in (("hco.extxyz", "same"), ("hcno.extxyz", "new_element")):
        out = _fine_tune(folder, path, str(folder / data), name, "--trainer.max_steps", "0", "--model.keep_shift",
                         "true")
        model = e3pot.load_model(out)
        assert model.atomic_numbers[:3] == [1, 6, 8]
        e, f = _predict(out, ethanol)
        assert e == pytest.approx(e0, abs=1e-9, rel=0)
        np.testing.assert_allclose(f, f0, rtol=0, atol=1e-10)
    assert e3pot.load_model(out).atomic_numbers == [1, 6, 8, 7]


@pytest.mark.slow
def test_new_element_trains_and_shifts_are_refitted(start):
    folder, path = start
    before = e3pot.load_model(_fine_tune(folder, path, str(folder / "hcno.extxyz"), "n0", "--trainer.max_steps", "0"))
    after = e3pot.load_model(_fine_tune(folder, path, str(folder / "hcno.extxyz"), "n8", "--trainer.max_steps", "8",
                                        "--model.ema_decay", "0"))
    row = lambda m: m.embedding.weight.detach().reshape(4, -1)[3]  # noqa: E731  the embedding row of N
    assert float((row(after) - row(before)).abs().max()) > 1e-6
    start_model = e3pot.load_model(path)
    # the default re-fits the shifts to the new data: they move away from the starting model's
    assert float((before.energy_shift[:3] - start_model.energy_shift).abs().max()) > 1e-6
    assert np.isfinite(before.energy_shift.numpy()).all()


@pytest.mark.slow
def test_frozen_groups_stay_bit_identical(start):
    folder, path = start
    out = _fine_tune(folder, path, str(folder / "hco.extxyz"), "frozen", "--trainer.max_steps", "6",
                     "--model.freeze", "[embedding, layer0]", "--model.ema_decay", "0")
    tuned, start_model = e3pot.load_model(out), e3pot.load_model(path)
    frozen = groups(start_model)["embedding"] + groups(start_model)["layer0"]
    old, new = dict(start_model.named_parameters()), dict(tuned.named_parameters())
    for name in frozen:
        assert torch.equal(old[name], new[name]), name
    changed = [name for name in new if name not in frozen and not torch.equal(old[name], new[name])]
    assert any(name.startswith("layers.1.") for name in changed) and any(name.startswith("readout") for name in changed)


@pytest.mark.slow
def test_replay_reports_both_sets(start, capsys):
    folder, path = start
    out = _fine_tune(folder, path, str(folder / "hcno.extxyz"), "replay", "--trainer.max_steps", "4",
                     "--data.replay_file", str(folder / "hco.extxyz"), "--data.replay_fraction", "0.5")
    printed = capsys.readouterr().out
    assert "replayed forces MAE" in printed and os.path.exists(out)


def test_replay_batches_mix_new_and_replayed_frames():
    sampler = ReplayBatchSampler(n_new=10, n_replay=5, batch_size=4, fraction=0.25, shuffle=True, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # 3 new frames per batch: ceil(10 / 3)
    new = [k for b in batches for k in b if k < 10]
    assert sorted(new) == list(range(10))  # every new frame once per epoch
    assert all(sum(k >= 10 for k in b) == 1 for b in batches)
    assert all(10 <= k < 15 for b in batches for k in b if k >= 10)
    assert list(sampler) != batches  # another order in the next epoch


def test_refusals_name_what_is_wrong(start, tmp_path, capsys):
    folder, path = start
    data = str(folder / "hco.extxyz")
    cases = [
        (["--model.num_features", "12"], "model.num_features=12 (the file has 6)"),
        (["--model.kind", "egnn"], "contradicts model.init_from"),
    ]
    for extra, message in cases:
        rc = train_run(["--model.init_from", path, "--data.train_file", data, "--output", str(tmp_path / "x.pt"),
                        *ARGS, *extra])
        assert rc == 2 and message in capsys.readouterr().err
    rc = train_run(["--model.init_from", str(tmp_path / "missing.pt"), "--data.train_file", data, *ARGS])
    assert rc == 2 and "no such model file" in capsys.readouterr().err
    from e3pot.model.export import export_model

    exported = export_model(e3pot.load_model(path), str(tmp_path / "exported.pt"))
    rc = train_run(["--model.init_from", exported, "--data.train_file", data, *ARGS])
    assert rc == 2 and "not an export" in capsys.readouterr().err
    rc = train_run(["--model.freeze", "[embedding]", "--data.train_file", data, *ARGS])
    assert rc == 2 and "model.init_from" in capsys.readouterr().err
    rc = train_run(["--model.init_from", path, "--model.freeze", "[decoder]", "--data.train_file", data,
                    "--output", str(tmp_path / "y.pt"), *ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown group(s) decoder" in err and "readout" in err
    assert not os.path.exists(tmp_path / "x.pt") and not os.path.exists(tmp_path / "y.pt")
    before = open(path, "rb").read()
    rc = train_run(["--model.init_from", path, "--data.train_file", data, "--output", path, "--overwrite", *ARGS])
    assert rc == 2 and "is also an input" in capsys.readouterr().err
    assert open(path, "rb").read() == before  # the starting model is never overwritten
