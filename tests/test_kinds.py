"""Each model kind takes its own settings and refuses the others; defaults are written once, in the kinds'
classes; the hyperparameters saved with a run are the settings of the model really built."""
import glob
import inspect
import os
import re

import pytest
import torch
import yaml

from e3pot.model import kinds
from e3pot.train.cli import _cutoff, check_resume, main, run
from e3pot.train.module import E3PotModule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
TRAIN_FILE = os.path.join(ROOT, "data", "example.extxyz")


def config(name):
    return os.path.join(ROOT, "configs", f"{name}.yaml")


def not_taken():
    """(kind, setting, a value) for every setting that a kind does not take."""
    cases = []
    for kind in kinds.KINDS:
        for name in kinds.SETTINGS:
            if name not in kinds.defaults(kind):
                value = kinds.defaults(kinds.kinds_taking(name)[0])[name]
                cases.append((kind, name, value))
    return cases


# -- the rule ----------------------------------------------------------------------------------------

def test_every_kind_refuses_some_setting():
    assert {kind for kind, _, _ in not_taken()} == set(kinds.KINDS)
    assert ("egnn", "l_max", 2) in not_taken() and ("cartesian", "parity", True) in not_taken()


@pytest.mark.parametrize("kind, name, value", not_taken(), ids=[f"{k}-{n}" for k, n, _ in not_taken()])
def test_module_refuses_a_setting_its_kind_does_not_take(kind, name, value):
    with pytest.raises(ValueError) as exc:
        E3PotModule(kind=kind, **{name: value})
    message = str(exc.value)
    assert f"model kind {kind!r} takes no model.{name} (given: model.{name}={value!r})" in message
    for taken in kinds.defaults(kind):  # the message names what the kind does take
        assert f"model.{taken}" in message


def test_egnn_refuses_l_max():
    with pytest.raises(ValueError, match=r"model kind 'egnn' takes no model\.l_max \(given: model\.l_max=3\); "
                                         r"the kind 'egnn' takes model\.r_max, .*model\.update_positions"):
        E3PotModule(kind="egnn", l_max=3)


def test_several_settings_refused_together():
    with pytest.raises(ValueError, match=r"'cartesian' takes no model\.l_max, model\.parity "
                                         r"\(given: model\.l_max=1, model\.parity=False\)"):
        E3PotModule(kind="cartesian", l_max=1, parity=False)


def test_none_means_not_given():
    module = E3PotModule(kind="egnn", l_max=None, parity=None, radial_layers=None, num_layers=None)
    assert module.hparams.num_layers == kinds.defaults("egnn")["num_layers"]
    assert "l_max" not in module.hparams


def test_unknown_argument_refused_by_the_module():
    for kind in kinds.KINDS:
        with pytest.raises(TypeError, match="num_featurs"):
            E3PotModule(kind=kind, num_featurs=8)


def test_build_model_refuses_what_its_kind_does_not_take():
    with pytest.raises(ValueError, match=r"model kind 'egnn' takes no l_max \(given: l_max=2\); the kind 'egnn' "
                                         r"takes atomic_numbers, r_max, .*energy_scale"):
        kinds.build_model(dict(kind="egnn", atomic_numbers=[1, 6], l_max=2))
    with pytest.raises(ValueError, match=r"'e3' takes no colour"):
        kinds.build_model(dict(atomic_numbers=[1, 6], colour="blue"))


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown model kind 'schnet'; use one of e3, cartesian, egnn"):
        kinds.resolve("schnet", {})


# -- the rules per setting still hold, for the settings of each kind ------------------------------------

@pytest.mark.parametrize("kind, options, message", [
    ("egnn", {"num_layers": 0}, "model.num_layers must be at least 1, got 0"),
    ("cartesian", {"radial_layers": -1}, "model.radial_layers must be 0 or positive, got -1"),
    ("e3", {"l_max": -1}, "model.l_max must be at least 0, got -1"),
    ("egnn", {"r_max": 0.0}, "model.r_max must be positive"),
    ("egnn", {"ema_decay": 1.0}, "model.ema_decay must be in [0, 1)"),
])
def test_rules_per_setting(kind, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        E3PotModule(kind=kind, **options)


# -- defaults written once -------------------------------------------------------------------------------

def test_module_signature_repeats_no_default():
    parameters = inspect.signature(E3PotModule.__init__).parameters
    assert set(kinds.SETTINGS) <= set(parameters)
    for name in kinds.SETTINGS:
        assert parameters[name].default is None, name


@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_resolved_defaults_are_the_model_classes(kind):
    signature = inspect.signature(kinds.model_class(kind).__init__).parameters
    expected = {name: p.default for name, p in signature.items()
                if name not in ("self", "atomic_numbers", *kinds.FITTED)}
    module = E3PotModule(kind=kind)
    assert {name: module.hparams[name] for name in kinds.SETTINGS if name in module.hparams} == expected
    assert _cutoff(kind, None) == expected["r_max"] and _cutoff(kind, 3.0) == 3.0


def test_help_names_the_kinds_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"Taken by e3 only; default {kinds.defaults('e3')['l_max']} when not given" in out
    assert f"Taken by egnn only; default {kinds.defaults('egnn')['update_positions']} when not given" in out


# -- what is saved ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_hyperparameters_hold_the_settings_of_the_kind(kind):
    module = E3PotModule(kind=kind, num_features=16)
    settings = {name for name in module.hparams if name in kinds.SETTINGS}
    assert settings == set(kinds.defaults(kind))
    assert module.hparams.num_features == 16
    assert dict(module.hparams_initial) == dict(module.hparams)  # what a logger writes, too


def test_egnn_hyperparameters_have_no_l_max():
    hp = E3PotModule(kind="egnn").hparams
    assert "l_max" not in hp and "parity" not in hp and "radial_layers" not in hp
    assert hp.update_positions is True


class _Data:
    def __init__(self, **hparams):
        self.hparams = hparams


def _checkpoint(path, hyper_parameters):
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {}, "hyper_parameters": hyper_parameters,
                "datamodule_hyper_parameters": {"train_file": "x.extxyz"}}, path)
    return str(path)


def test_resume_from_a_checkpoint_that_recorded_every_kinds_settings(tmp_path):
    """Checkpoints written before the settings were resolved per kind hold every setting (an EGNN's with
    l_max 2): they resume, comparing the settings the kind takes."""
    old = {"kind": "egnn", "r_max": 5.0, "l_max": 2, "num_features": 32, "num_layers": 4, "num_basis": 8,
           "cutoff_p": 6, "radial_hidden": 64, "radial_layers": 2, "parity": True, "update_positions": True,
           "e0s": "fit", "dtype": "float32"}
    data = _Data(train_file="x.extxyz")
    check_resume(_checkpoint(tmp_path / "old.ckpt", old), E3PotModule(kind="egnn"), data)
    with pytest.raises(ValueError, match=r"model.num_layers: 4 in the checkpoint, 2 now"):
        check_resume(_checkpoint(tmp_path / "old.ckpt", old), E3PotModule(kind="egnn", num_layers=2), data)
    new = dict(E3PotModule(kind="egnn").hparams)
    check_resume(_checkpoint(tmp_path / "new.ckpt", new), E3PotModule(kind="egnn"), data)
    with pytest.raises(ValueError, match=r"model.kind: 'egnn' in the checkpoint, 'e3' now"):
        check_resume(_checkpoint(tmp_path / "new.ckpt", new), E3PotModule(kind="e3"), data)


# -- the command line and the configs ----------------------------------------------------------------------

def test_cli_refuses_l_max_for_egnn(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run(["--config", config("egnn"), "--data.train_file", TRAIN_FILE, "--model.l_max", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "error: model kind 'egnn' takes no model.l_max (given: model.l_max=3)" in err
    assert "model.update_positions" in err
    assert not os.path.exists(tmp_path / "runs")  # refused before training


def test_cli_refuses_parity_for_cartesian(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run(["--config", config("cartesian"), "--data.train_file", TRAIN_FILE, "--model.parity", "false"])
    assert code == 2
    assert "model kind 'cartesian' takes no model.parity (given: model.parity=False)" in capsys.readouterr().err


def test_cli_refuses_a_config_of_another_kind_switched(tmp_path, monkeypatch, capsys):
    """configs/example.yaml sets l_max and parity, which a cartesian model does not take; null leaves them out."""
    monkeypatch.chdir(tmp_path)
    code = run(["--config", config("example"), "--data.train_file", TRAIN_FILE, "--model.kind", "cartesian"])
    assert code == 2
    assert "takes no model.l_max, model.parity (given: model.l_max=2, model.parity=False)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_cli_refuses_an_unknown_argument(kind, capsys):
    with pytest.raises(SystemExit) as exc:
        run(["--config", config("example"), "--data.train_file", TRAIN_FILE, "--model.kind", kind,
             "--model.num_featurs", "8"])
    assert exc.value.code == 2
    assert "num_featurs" in capsys.readouterr().err


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_config_parses_and_builds(path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", path, "--data.train_file", TRAIN_FILE, "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    with open(path) as fh:
        written = yaml.safe_load(fh)["model"]
    module = E3PotModule(**printed["model"])
    kind = printed["model"]["kind"]
    assert kind == written.get("kind", "e3")
    assert {name for name in module.hparams if name in kinds.SETTINGS} == set(kinds.defaults(kind))
    for name, value in written.items():
        assert module.hparams[name] == value
    model = kinds.build_model({"kind": kind, "atomic_numbers": [1, 6, 8],
                               **{name: module.hparams[name] for name in kinds.defaults(kind)}})
    assert type(model) is kinds.model_class(kind)


@pytest.mark.parametrize("kind, options, cutoff", [("egnn", [], kinds.defaults("egnn")["r_max"]),
                                                   ("cartesian", ["--model.r_max", "3.5"], 3.5)])
def test_graph_cutoff_is_the_models(kind, options, cutoff, tmp_path, monkeypatch):
    """data.r_max follows model.r_max, the kind's default when it is not given."""
    from e3pot.train.cli import E3PotCLI
    from e3pot.train.datamodule import E3PotDataModule

    monkeypatch.chdir(tmp_path)
    cli = E3PotCLI(E3PotModule, E3PotDataModule, run=False, save_config_callback=None,
                   args=["--data.train_file", TRAIN_FILE, "--model.kind", kind, "--trainer.logger", "false", *options])
    assert cli.model.hparams.r_max == cli.datamodule.r_max == cutoff
