"""Model files and what is not one: `e3pot export` follows the output rule; a TorchScript export, a foreign
PyTorch file or a training checkpoint is named for what it is; `e3pot export-checkpoint` writes a model
file from a checkpoint's averaged weights."""
import glob
import os
import re
import shutil

import pytest
import torch
from ase.io import read

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.cli.audit import main as audit_main
from e3pot.cli.export import main as export_main
from e3pot.cli.export_checkpoint import MODEL_KEY
from e3pot.cli.export_checkpoint import main as export_checkpoint_main
from e3pot.cli.main import USAGE
from e3pot.cli.main import main as e3pot_main
from e3pot.cli.predict import main as predict_main
from e3pot.model.export import is_torchscript
from e3pot.model.io import read_model_file, save_model
from tests.trained_model import EXAMPLE_DATA, model_file_64, single_torch_thread, trained_model  # noqa: F401


def one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"e3pot {command}: error: "), err
    assert "Traceback" not in err and "weights_only" not in err
    return lines[0]


def read_bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@pytest.fixture
def model(model_file_64, tmp_path):
    path = str(tmp_path / "model.pt")
    shutil.copy(model_file_64, path)
    return path


# -- export follows the output rule ---------------------------------------------------------------

def test_export_never_writes_over_its_input(model, capsys):
    before = read_bytes(model)
    for extra in ([], ["--overwrite"]):
        assert export_main([model, "-o", model, *extra]) == 2
        assert f"-o {model} is also an input ({model})" in one_line_error(capsys.readouterr().err, "export")
    assert read_bytes(model) == before and e3pot.load_model(model) is not None


def test_export_replaces_an_existing_file_only_with_overwrite(model, tmp_path, capsys):
    out = tmp_path / "out.ts"
    out.write_text("an older file")
    assert export_main([model, "-o", str(out)]) == 2
    assert f"-o {out} exists; pass --overwrite to replace it" in one_line_error(capsys.readouterr().err, "export")
    assert out.read_text() == "an older file"
    assert export_main([model, "-o", str(out), "--overwrite"]) == 0
    assert is_torchscript(str(out))
    assert sorted(os.listdir(tmp_path)) == ["model.pt", "out.ts"]


def test_export_to_a_folder(model, tmp_path, capsys):
    assert export_main([model, "-o", str(tmp_path)]) == 2
    assert f"-o {tmp_path} is a folder; give a file name" in one_line_error(capsys.readouterr().err, "export")


# -- files that are not model files say what they are ------------------------------------------------

def test_export_of_an_export(model, tmp_path, capsys):
    exported = str(tmp_path / "model.ts")
    assert export_main([model, "-o", exported]) == 0
    assert export_main([exported, "-o", str(tmp_path / "again.ts")]) == 2
    line = one_line_error(capsys.readouterr().err, "export")
    assert f"{exported} is a TorchScript export made by e3pot export, not a model file; export from (or use) the " \
           "model file (model.pt) it was made from" in line
    assert not os.path.exists(tmp_path / "again.ts")


class Foreign(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)


@pytest.mark.parametrize("content, message", [
    (lambda: Foreign(), "is a PyTorch file but not an e3pot model file: it holds pickled Python objects "
                        "(test_model_files.Foreign), which e3pot never loads"),
    (lambda: {"weights": torch.zeros(3)}, "is a PyTorch file but not an e3pot model file (it has no 'format': "
                                          "'e3pot-model' entry)"),
    (None, "is not an e3pot model file: it is not a PyTorch file"),
    ("script", "is a TorchScript archive, not an e3pot model file"),
], ids=["pickled-module", "plain-dict", "text", "torchscript"])
def test_foreign_files(content, message, tmp_path, capsys):
    path = str(tmp_path / "foreign.pt")
    if content is None:
        with open(path, "w") as fh:
            fh.write("not a model\n")
    elif content == "script":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    else:
        torch.save(content(), path)
    with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
        read_model_file(path)
    assert export_main([path, "-o", str(tmp_path / "out.ts")]) == 2
    assert message in one_line_error(capsys.readouterr().err, "export")


# -- training checkpoints -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(trained_model):
    """(model file, best checkpoint, last checkpoint) of the tiny training run of the session."""
    folder = os.path.dirname(trained_model)
    best = e3pot.load_model(trained_model).metadata["checkpoint"]
    best = best if os.path.isabs(best) else os.path.join(folder, best)
    (last,) = glob.glob(os.path.join(folder, "runs", "*", "version_*", "checkpoints", "last.ckpt"))
    assert os.path.exists(best) and os.path.basename(best).startswith("best-")
    return trained_model, best, last


def without_model_description(src: str, dst: str, **data) -> str:
    """A copy of a checkpoint as written without the model description (and with other data settings)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt.pop(MODEL_KEY, None)
    ckpt["datamodule_hyper_parameters"] = dict(ckpt["datamodule_hyper_parameters"], **data)
    torch.save(ckpt, dst)
    return dst


def assert_same_model(path: str, reference: str) -> None:
    got, ref = e3pot.load_model(path), e3pot.load_model(reference)
    assert got.dtype == ref.dtype and got.atomic_numbers == ref.atomic_numbers
    assert {k: v for k, v in got.config.items() if k != "energy_shift"} == \
        {k: v for k, v in ref.config.items() if k != "energy_shift"}
    a, b = got.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    for name in a:  # a validation re-fits the energy shift once more: the same to rounding
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-9 if name == "energy_shift" else 0, msg=name)
    frames = read(EXAMPLE_DATA, ":3")
    for p, q in zip(e3pot.predict(got, frames), e3pot.predict(ref, frames)):
        assert p["energy"] == pytest.approx(q["energy"], rel=1e-12, abs=1e-9)


def test_checkpoint_is_named_by_every_command(run, tmp_path, capsys):
    _, best, last = run
    advice = "is a training checkpoint, not a model file; write a model file from it with: e3pot export-checkpoint"
    for ckpt in (best, last):
        with pytest.raises(ValueError, match=re.escape(f"{ckpt} {advice}")):
            read_model_file(ckpt)
        with pytest.raises(ValueError, match=re.escape(advice)):
            E3PotCalculator(ckpt)
    structures = str(tmp_path / "in.extxyz")
    shutil.copy(EXAMPLE_DATA, structures)
    for command, argv in (("export", [last, "-o", str(tmp_path / "x.ts")]),
                          ("predict", [last, structures, "-o", str(tmp_path / "x.extxyz"), "--no-progress"])):
        assert {"export": export_main, "predict": predict_main}[command](argv) == 2
        line = one_line_error(capsys.readouterr().err, command)
        assert advice in line and line.endswith("-o model.pt"), line
    assert audit_main([last]) == 2
    assert advice in capsys.readouterr().err


def test_export_checkpoint_gives_the_trained_model(run, tmp_path, capsys):
    model_file, best, last = run
    out = str(tmp_path / "from_best.pt")
    assert e3pot_main(["export-checkpoint", best, "-o", out]) == 0
    assert f"wrote {out} from the averaged weights of {best}" in capsys.readouterr().out
    assert_same_model(out, model_file)
    assert e3pot.load_model(out).metadata["checkpoint"] == os.path.abspath(best)
    # a checkpoint that carries the model's description gives the same model without reading the data
    described = torch.load(best, map_location="cpu", weights_only=True)
    reference = e3pot.load_model(model_file)
    described[MODEL_KEY] = {"config": dict(reference.config), "dtype": "float64"}
    described["datamodule_hyper_parameters"]["train_file"] = str(tmp_path / "gone.extxyz")
    path = str(tmp_path / "described.ckpt")
    torch.save(described, path)
    assert export_checkpoint_main([path, "-o", str(tmp_path / "described.pt")]) == 0
    assert_same_model(str(tmp_path / "described.pt"), model_file)
    # the last checkpoint is a model too, and loads everywhere a model file does
    assert export_checkpoint_main([last, "-o", str(tmp_path / "last.pt")]) == 0
    assert E3PotCalculator(str(tmp_path / "last.pt")).model.atomic_numbers == reference.atomic_numbers
    assert export_main([str(tmp_path / "last.pt"), "-o", str(tmp_path / "last.ts")]) == 0
    assert "export-checkpoint" in USAGE


def test_export_checkpoint_finds_or_asks_for_the_training_data(run, tmp_path, capsys):
    model_file, best, _ = run
    train_file = e3pot.load_model(model_file).metadata["train_file"]
    moved = without_model_description(best, str(tmp_path / "moved.ckpt"), train_file="elsewhere/train.extxyz")
    out = str(tmp_path / "model.pt")
    assert export_checkpoint_main([moved, "-o", out]) == 2
    line = one_line_error(capsys.readouterr().err, "export-checkpoint")
    assert f"{moved}: the checkpoint does not hold the model's species and neighbour statistics, and its training " \
           "data elsewhere/train.extxyz is not found" in line and line.endswith("give it with --train-file FILE")
    assert not os.path.exists(out)
    # found relative to a folder above the checkpoint (the working folder of training)
    os.makedirs(tmp_path / "elsewhere")
    nested = tmp_path / "runs" / "x" / "version_0" / "checkpoints"
    os.makedirs(nested)
    shutil.copy(moved, nested / "last.ckpt")
    shutil.copy(train_file, tmp_path / "elsewhere" / "train.extxyz")
    assert export_checkpoint_main([str(nested / "last.ckpt"), "-o", out]) == 0
    assert_same_model(out, model_file)
    # other data than the run's is refused
    other = str(tmp_path / "other.extxyz")
    shutil.copy(EXAMPLE_DATA, other)
    assert export_checkpoint_main([moved, "-o", str(tmp_path / "other.pt"), "--train-file", other]) == 2
    assert "is not the data this checkpoint was trained on" in one_line_error(capsys.readouterr().err,
                                                                              "export-checkpoint")
    assert export_checkpoint_main([moved, "-o", str(tmp_path / "given.pt"), "--train-file", train_file]) == 0


def test_export_checkpoint_follows_the_output_rule(run, tmp_path, capsys):
    model_file, _, last = run
    ckpt = str(tmp_path / "last.ckpt")
    shutil.copy(last, ckpt)
    before = read_bytes(ckpt)
    assert export_checkpoint_main([ckpt, "-o", ckpt, "--overwrite"]) == 2
    assert f"-o {ckpt} is also an input" in one_line_error(capsys.readouterr().err, "export-checkpoint")
    out = tmp_path / "model.pt"
    out.write_text("keep")
    assert export_checkpoint_main([ckpt, "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in one_line_error(capsys.readouterr().err, "export-checkpoint")
    assert out.read_text() == "keep" and read_bytes(ckpt) == before
    assert export_checkpoint_main([ckpt, "-o", str(out), "--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "model.pt"]
    # what is not a checkpoint
    assert export_checkpoint_main([model_file, "-o", str(tmp_path / "x.pt")]) == 2
    assert "is already an e3pot model file" in one_line_error(capsys.readouterr().err, "export-checkpoint")


def test_checkpoint_with_python_objects_is_not_unpickled(tmp_path, capsys):
    path = str(tmp_path / "other.ckpt")
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.0", "hyper_parameters": Foreign()}, path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is a training checkpoint, not a model file")):
        read_model_file(path)
    assert export_checkpoint_main([path, "-o", str(tmp_path / "m.pt")]) == 2
    assert "does not load as plain data" in one_line_error(capsys.readouterr().err, "export-checkpoint")


# -- save_model ---------------------------------------------------------------------------------------

def test_save_model_uses_a_temporary_name_of_its_own(model, tmp_path, monkeypatch):
    net = e3pot.load_model(model)
    target = str(tmp_path / "saved.pt")
    canaries = {name: f"canary {name}" for name in ("saved.pt.tmp", ".saved.pt.partial", "saved.pt.partial")}
    for name, text in canaries.items():
        (tmp_path / name).write_text(text)
    save_model(net, target)
    save_model(net, target)  # replaces its own file (training checks --overwrite itself)
    assert e3pot.load_model(target).atomic_numbers == net.atomic_numbers
    for name, text in canaries.items():
        assert (tmp_path / name).read_text() == text
    before = read_bytes(target)

    def failing(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError):
        save_model(net, target)
    assert read_bytes(target) == before
    assert sorted(os.listdir(tmp_path)) == sorted(["model.pt", "saved.pt", *canaries])
