"""Training options and results that went wrong without a word: a shallow ensemble's calibration lost by
export-checkpoint or fitted on too few frames, replay frames read in the wrong units, options accepted where
they do nothing, and command-line type errors buried under the usage."""
import contextlib
import io
import os
import shutil
import warnings

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

import e3pot
from e3pot.cli.main import main as e3pot_main
from e3pot.testing.models import random_model
from e3pot.train.cli import main as train_main, run as train_run
from e3pot.train.datamodule import E3PotDataModule
from e3pot.train.module import E3PotModule
from tests.test_bad_input import TINY
from tests.trained_model import torch_threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
EXAMPLE = os.path.join(ROOT, "data", "example.extxyz")


@contextlib.contextmanager
def in_folder(path):
    cwd = os.getcwd()
    os.chdir(path)
    try:
        with torch_threads(1):
            yield
    finally:
        os.chdir(cwd)


def scaled(frames, factor):
    """The frames with energies and forces multiplied by ``factor`` (eV read as meV: 1000)."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy() * factor,
                                          forces=atoms.get_forces() * factor)
        out.append(copy)
    return out


# -- a shallow ensemble: its calibration, by training and by export-checkpoint ------------------------------

@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A tiny shallow ensemble trained on 24 frames with 4 validation frames: what it printed and warned."""
    folder = tmp_path_factory.mktemp("ensemble")
    write(folder / "data.extxyz", read(EXAMPLE, ":24"))
    out = io.StringIO()
    with in_folder(folder), contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = train_main(["--config", CONFIG, *TINY, "--data.train_file", "data.extxyz", "--data.n_val", "4",
                           "--data.batch_size", "4", "--model.heads", "3", "--trainer.max_epochs", "2",
                           "--output", "model.pt"])
    return folder, os.path.join(folder, path), out.getvalue(), [str(w.message) for w in caught]


def test_export_checkpoint_gives_a_shallow_ensemble_the_calibration_of_training(ensemble, tmp_path, capsys):
    folder, trained, _, _ = ensemble
    model = e3pot.load_model(trained)
    best = os.path.join(folder, model.metadata["checkpoint"])
    assert os.path.basename(best).startswith("best-")
    out = str(tmp_path / "exported.pt")
    with in_folder(folder):
        assert e3pot_main(["export-checkpoint", best, "-o", out]) == 0
    stored, exported = model.metadata["uncertainty"], e3pot.load_model(out).metadata["uncertainty"]
    # the same weights (the best checkpoint's EMA) on the same frames, by the same function: the same factors
    assert exported["energy_scale"] == pytest.approx(stored["energy_scale"], rel=1e-9)
    assert exported["forces_scale"] == pytest.approx(stored["forces_scale"], rel=1e-9)
    assert stored["energy_scale"] != pytest.approx(1.0) and stored["forces_scale"] != pytest.approx(1.0)
    assert exported["fitted_on"] == stored["fitted_on"] == "4 validation frames"
    printed = capsys.readouterr()
    assert "calibrated on 4 validation frames" in printed.out and "fewer than 10" in printed.err


def test_export_checkpoint_finds_or_refuses_the_validation_frames(ensemble, tmp_path, capsys):
    folder, trained, _, _ = ensemble
    best = os.path.join(folder, e3pot.load_model(trained).metadata["checkpoint"])
    moved = tmp_path / "moved.extxyz"
    shutil.copy(folder / "data.extxyz", moved)
    out = str(tmp_path / "m.pt")
    with in_folder(tmp_path):  # data.extxyz is not here, nor above the checkpoint under this name
        shutil.move(str(folder / "data.extxyz"), str(folder / "away.extxyz"))
        try:
            assert e3pot_main(["export-checkpoint", best, "-o", out]) == 2
            err = capsys.readouterr().err
            assert "data.extxyz is not found" in err and "--train-file" in err and "--no-calibration" in err
            assert not os.path.exists(out)
            assert e3pot_main(["export-checkpoint", best, "-o", out, "--train-file", str(moved)]) == 0
            calibrated = e3pot.load_model(out).metadata["uncertainty"]
            assert calibrated["energy_scale"] == pytest.approx(
                e3pot.load_model(trained).metadata["uncertainty"]["energy_scale"], rel=1e-9)
            # other frames than those the checkpoint was validated on are refused, not calibrated on
            other = tmp_path / "other.extxyz"
            write(other, read(EXAMPLE, "24:48"))
            assert e3pot_main(["export-checkpoint", best, "-o", out, "--overwrite", "--train-file", str(other)]) == 2
            assert "does not give the validation frames this checkpoint was validated on" in capsys.readouterr().err
            assert e3pot_main(["export-checkpoint", best, "-o", out, "--overwrite", "--no-calibration"]) == 0
            raw = e3pot.load_model(out).metadata["uncertainty"]
            assert raw["energy_scale"] == raw["forces_scale"] == 1.0 and "no-calibration" in raw["fitted_on"]
        finally:
            shutil.move(str(folder / "away.extxyz"), str(folder / "data.extxyz"))


def test_calibration_on_few_frames_is_flagged(ensemble):
    _, trained, printed, warned = ensemble
    assert "Uncertainty of the 3 heads, calibrated on 4 validation frames" in printed
    line = "fitted on 4 validation frames, fewer than 10"
    assert line in printed and any(line in w for w in warned)
    assert any(line in w for w in e3pot.load_model(trained).metadata["uncertainty"]["warnings"])


def test_calibration_leaves_a_factor_without_labels_raw(tmp_path):
    """Validation frames without energies (energy_weight 0): the energy factor cannot be fitted; it is not NaN."""
    frames = read(EXAMPLE, ":24")
    write(tmp_path / "train.extxyz", frames[:20])
    no_energy = [a.copy() for a in frames[20:]]
    for a, b in zip(no_energy, frames[20:]):
        a.calc = SinglePointCalculator(a, forces=b.get_forces())
    write(tmp_path / "val.extxyz", no_energy)
    with in_folder(tmp_path), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = train_main(["--config", CONFIG, *TINY, "--data.train_file", "train.extxyz", "--data.val_file",
                           "val.extxyz", "--model.energy_weight", "0", "--model.heads", "2",
                           "--trainer.max_steps", "2", "--output", "m.pt"])
    stored = e3pot.load_model(str(tmp_path / path)).metadata["uncertainty"]
    assert stored["energy_scale"] == 1.0 and np.isfinite(stored["forces_scale"]) and stored["forces_scale"] != 1.0
    assert any("no validation frame has an energy label" in str(w.message) for w in caught)


# -- replayed frames: read with their own units, checked as training data are ---------------------------------

@pytest.fixture
def replay_files(tmp_path):
    frames = read(EXAMPLE, ":24")
    write(tmp_path / "new.extxyz", frames[:12])
    write(tmp_path / "replay.extxyz", frames[12:])
    write(tmp_path / "replay_mev.extxyz", scaled(frames[12:], 1000.0))
    return tmp_path


def _replay(folder, **options):
    data = E3PotDataModule(str(folder / "new.extxyz"), r_max=4.0, n_val=2, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data.setup("fit")
    forces = np.concatenate([labels.forces.numpy() for _, labels in data.replay_set.items])
    return forces, [str(w.message) for w in caught]


def test_replay_labels_in_other_units_are_flagged_and_converted(replay_files):
    folder = replay_files
    reference, warned = _replay(folder, replay_file=str(folder / "replay.extxyz"))
    assert not any("do not look like eV" in w for w in warned)
    forces, warned = _replay(folder, replay_file=str(folder / "replay_mev.extxyz"))
    flagged = [w for w in warned if "replay_mev.extxyz: the replay labels do not look like eV and Å" in w]
    assert flagged and "data.replay_energy_unit" in flagged[0]
    forces, warned = _replay(folder, replay_file=str(folder / "replay_mev.extxyz"), replay_energy_unit="meV")
    assert not any("do not look like eV" in w for w in warned)
    np.testing.assert_allclose(forces, reference, rtol=1e-12)


def test_replay_units_are_not_guessed_from_the_training_data(replay_files):
    folder = replay_files
    with pytest.raises(ValueError, match=r"data.replay_file .*replay.extxyz: the training data are read with "
                                         r"data.energy_unit='kcal/mol'.*give data.replay_energy_unit"):
        E3PotDataModule(str(folder / "new.extxyz"), energy_unit="kcal/mol", replay_file=str(folder / "replay.extxyz"))
    # said for the replay file too: read in its own unit
    E3PotDataModule(str(folder / "new.extxyz"), energy_unit="kcal/mol", replay_file=str(folder / "replay.extxyz"),
                    replay_energy_unit="eV")
    with pytest.raises(ValueError, match=r"data.replay_energy_unit needs data.replay_file"):
        E3PotDataModule(str(folder / "new.extxyz"), replay_energy_unit="meV")


def test_fine_tuning_data_in_other_units_are_flagged(tmp_path):
    """Fine-tuning checks the units of its new data as training from scratch does."""
    start = e3pot.save_model(random_model("e3", atomic_numbers=(1, 6, 8), seed=3, r_max=4.0, l_max=0,
                                          num_features=4, num_layers=1, radial_hidden=4),
                             str(tmp_path / "start.pt"))
    write(tmp_path / "mev.extxyz", scaled(read(EXAMPLE, ":16"), 1000.0))
    with in_folder(tmp_path), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_main(["--model.init_from", start, "--data.train_file", "mev.extxyz", "--data.n_val", "4",
                    "--trainer.max_steps", "0", "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false", "--trainer.logger", "false", "--output", "m.pt"])
    assert any("mev.extxyz: the training labels do not look like eV and Å" in str(w.message) for w in caught)


# -- options that do nothing where they are given -------------------------------------------------------------

def test_nll_weight_with_one_head_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"model.nll_weight 0.5 has no effect with one read-out head"):
        E3PotModule(nll_weight=0.5)
    with pytest.raises(ValueError, match=r"model.nll_weight"):
        E3PotModule(kind="egnn", nll_weight=1.0)  # given, even at its default value
    assert E3PotModule(heads=2, nll_weight=0.5).hparams.nll_weight == 0.5
    assert E3PotModule(heads=2).hparams.nll_weight == 1.0  # the default, recorded as it always was
    assert E3PotModule().hparams.nll_weight == 1.0
    with in_folder(tmp_path):
        rc = train_run(["--config", CONFIG, *TINY, "--data.train_file", EXAMPLE, "--model.nll_weight", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.nll_weight 2.0 has no effect with one read-out head" in err
    assert not os.path.exists(tmp_path / "runs")


def test_shift_options_that_contradict_or_do_nothing_are_refused(tmp_path):
    start = e3pot.save_model(random_model("e3", atomic_numbers=(1, 6, 8), seed=3), str(tmp_path / "start.pt"))
    with pytest.raises(ValueError, match=r"model.keep_shift keeps the starting model's energy shifts and model.e0s "
                                         r"sets them"):
        E3PotModule(init_from=start, keep_shift=True, e0s={"H": -13.6, "C": -1030.0, "O": -2040.0})
    with pytest.raises(ValueError, match=r"model.refit_shift true contradicts model.keep_shift"):
        E3PotModule(init_from=start, keep_shift=True, refit_shift=True)
    with pytest.raises(ValueError, match=r"model.refit_frames 100 has no effect with model.refit_shift false"):
        E3PotModule(refit_shift=False, refit_frames=100)
    module = E3PotModule(init_from=start, keep_shift=True)
    assert module.hparams.refit_shift is True and module.hparams.refit_frames == 250  # as recorded before
    E3PotModule(init_from=start, refit_shift=False, refit_frames=100)  # sizes the shift fit of fine-tuning


def test_split_options_that_another_overrides_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.n_val 5 has no effect with data.val_file"):
        E3PotDataModule("a.extxyz", val_file="b.extxyz", n_val=5)
    with pytest.raises(ValueError, match=r"data.val_fraction 0.2 has no effect with data.val_file"):
        E3PotDataModule("a.extxyz", val_file="b.extxyz", val_fraction=0.2)
    with pytest.raises(ValueError, match=r"data.val_fraction 0.2 has no effect with data.n_val 5"):
        E3PotDataModule("a.extxyz", n_val=5, val_fraction=0.2)
    E3PotDataModule("a.extxyz", val_file="b.extxyz", val_fraction=0.1)  # the default, as configs write it


def test_stress_weight_without_stress_labels_is_refused(tmp_path, capsys):
    write(tmp_path / "data.extxyz", read(EXAMPLE, ":16"))  # molecules: no stress
    with in_folder(tmp_path):
        rc = train_run(["--config", CONFIG, *TINY, "--data.train_file", "data.extxyz", "--model.stress_weight", "1",
                        "--trainer.max_steps", "1", "--output", "m.pt"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.stress_weight is 1.0, but no training frame has a stress label" in err
    assert not os.path.exists(tmp_path / "m.pt")


# -- command-line type errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, line", [
    (["--trainer.max_epochs", "ten"], "trainer.max_epochs: expected an integer or null, got 'ten'"),
    (["--model.num_layers", "2.5"], "model.num_layers: expected an integer or null, got '2.5'"),
    (["--model.kind", "e4"], "model.kind: expected one of e3, cartesian, egnn, got 'e4'"),
    (["--model.lr", "fast"], "model.lr: expected a number, got 'fast'"),
    (["--trainer.logger.init_args.version", "[1]"],
     "trainer.logger.init_args.version: expected an integer, a string or null, got '[1]'"),
    (["--model.num_featurs", "8"], "unrecognized arguments: --model.num_featurs 8 (did you mean --model.num_features?)"),
], ids=["int", "int-not-float", "literal", "float", "nested", "unknown"])
def test_a_wrongly_typed_option_is_one_line(args, line, capsys):
    with pytest.raises(SystemExit) as exc:
        train_run(["--config", CONFIG, "--data.train_file", EXAMPLE, *args], prog="train.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train.py: error: {line}", "(see train.py --help for the options and what each takes)"]


# -- errors that named neither the option nor the value, and a resume that changed the data silently ------------

@pytest.mark.parametrize("option, value, message", [
    ("lr_factor", 1.5, "model.lr_factor must be in (0, 1)"), ("lr_patience", -1, "model.lr_patience must be 0 or"),
    ("lr_min", -1e-6, "model.lr_min must be 0 or positive"), ("weight_decay", -0.1, "model.weight_decay must be 0"),
])
def test_optimiser_settings_are_checked_before_training(option, value, message):
    """Torch's own errors ("Factor should be < 1.0.") come only when training starts, and name no option; a
    negative patience was taken as it is."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        E3PotModule(**{option: value})


def test_negative_split_seed_is_named():
    with pytest.raises(ValueError, match=r"data.split_seed must be at least 0, got -1"):
        E3PotDataModule("a.extxyz", split_seed=-1)


def test_resume_with_another_bootstrap_draw_is_refused(tmp_path, monkeypatch):
    """data.bootstrap true draws with the run's seed: a run resumed with another --seed_everything would go on
    training on another draw of the frames."""
    import torch

    from e3pot.train.cli import check_resume

    monkeypatch.setenv("PL_GLOBAL_SEED", "1")
    data, module = E3PotDataModule("a.extxyz", bootstrap=True), E3PotModule()
    path = str(tmp_path / "last.ckpt")
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}, "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": dict(data.hparams)}, path)
    check_resume(path, module, E3PotDataModule("a.extxyz", bootstrap=True))
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    with pytest.raises(ValueError, match=r"data.bootstrap_seed: 1 in the checkpoint, 2 now"):
        check_resume(path, module, E3PotDataModule("a.extxyz", bootstrap=True))
    # the draw is the one of the seed the data module was made with
    np.testing.assert_array_equal(data.bootstrap_draw(50), E3PotDataModule("a.extxyz", bootstrap=1).bootstrap_draw(50))
