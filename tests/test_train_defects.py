"""Training as users run it: the README's DDP command with its default callbacks, short runs, the
--output rule, --resume of the wrong file, label options a store cannot honour, implausible units."""
import csv
import glob
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read, write

import e3pot
from e3pot.data.io import DataError
from e3pot.train import stats
from e3pot.train.cli import run as train_run
from tests.test_bad_input import TINY, train_in
from tests.test_readme import shell_commands

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
EXAMPLE = os.path.join(ROOT, "data", "example.extxyz")


def readme_command(marker: str) -> str:
    """The README's shell command that contains ``marker`` (continuation lines joined)."""
    return next(c for c in shell_commands("README.md") if marker in c)


def run_with_limit(command, cwd, limit):
    """Run ``command`` (argv) in its own session; a hang past ``limit`` s kills every rank and fails."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} hung (killed after {limit} s); last output:\n{err[-2000:]}")
    return proc.returncode, out, err


@pytest.mark.slow
def test_readme_ddp_command_finishes_with_default_callbacks(tmp_path):
    """The README's DDP command as pasted: two processes, progress bar, logger, checkpoints and early
    stopping all on. Every collective must be reached by both ranks in the same order, or it hangs."""
    command = readme_command("--trainer.strategy ddp --trainer.devices 2")
    assert "--trainer.max_epochs 2" in command and "enable_progress_bar" not in command
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    shutil.copytree(os.path.join(ROOT, "data"), tmp_path / "data")
    argv = command.split()
    assert argv[:2] == ["python", "train.py"]
    code, out, err = run_with_limit([sys.executable, os.path.join(ROOT, "train.py"), *argv[2:]], tmp_path, 420)
    assert code == 0, err[-3000:]
    assert out.count("Saved model:") == 1
    model = e3pot.load_model(str(tmp_path / "models" / "ddp.pt"))
    assert np.isfinite(model.metadata["validation"]["val/forces_mae_meV_A"])
    (metrics,) = glob.glob(str(tmp_path / "runs" / "example" / "version_*" / "metrics.csv"))
    with open(metrics) as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({int(r["epoch"]) for r in rows if r.get("train/loss")}) == [0, 1]
    assert {0, 1} <= {int(r["epoch"]) for r in rows if r.get("val/loss")}  # (and the final validation)
    assert all(r.get("lr") for r in rows if r.get("train/loss"))  # the learning rate, logged by the module
    # the metrics are reduced by the module: Lightning's advice to use sync_dist is not printed,
    # and neither is its advertisement
    assert "sync_dist" not in err
    assert "Tip:" not in out + err


def test_all_reduce_is_one_collective_of_fixed_size():
    """A rank that saw no frame (or no stress) still joins the same collective with the same shape."""
    import torch

    from e3pot.train.loss import ErrorMetrics

    calls = []

    class FakeDist:
        @staticmethod
        def all_reduce(tensor):
            calls.append(tensor.shape)
            tensor.mul_(2)  # as if a second rank had the same sums

    empty, full = ErrorMetrics(), ErrorMetrics()
    full.sums = {k: torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64) for k in ("e", "e_atom", "f")}
    full.add_losses({"loss": torch.tensor(0.5), "energy": torch.tensor(0.25)}, 4)
    import torch.distributed as dist

    original = dist.all_reduce
    dist.all_reduce = FakeDist.all_reduce
    try:
        empty.all_reduce()
        full.all_reduce()
    finally:
        dist.all_reduce = original
    assert calls[0] == calls[1] == (20,)
    assert full.losses() == {"loss": 0.5, "energy": 0.25}
    assert full.compute()["forces_mae_meV_A"] == pytest.approx(1000.0 * 2 / 8)
    assert empty.losses() == {} and empty.compute() == {}


def in_folder(tmp_path, args):
    return train_in(tmp_path, args)


@pytest.fixture
def small_data(tmp_path):
    write(tmp_path / "data.extxyz", read(EXAMPLE, ":24"))
    return ["--data.train_file", "data.extxyz", "--data.batch_size", "4"]


def test_a_run_shorter_than_one_epoch_writes_its_model(tmp_path, small_data):
    path = in_folder(tmp_path, small_data + ["--trainer.max_steps", "2", "--output", "short.pt"])
    model = e3pot.load_model(str(tmp_path / path))
    assert np.isfinite(model.metadata["validation"]["val/loss"])


def test_a_run_without_logger_writes_its_model(tmp_path, small_data):
    path = in_folder(tmp_path, small_data + ["--trainer.max_epochs", "1", "--trainer.logger", "false",
                                             "--output", "nolog.pt"])
    assert e3pot.load_model(str(tmp_path / path)).metadata["validation"]


def test_output_rule(tmp_path, small_data, capsys):
    write(tmp_path / "data.extxyz", read(EXAMPLE, ":24"))
    (tmp_path / "taken.pt").write_bytes(b"a user's file")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        base = ["--config", CONFIG, *TINY, *small_data, "--trainer.max_steps", "1"]
        assert train_run(base + ["--output", "taken.pt"]) == 2
        assert "--output taken.pt exists; pass --overwrite" in capsys.readouterr().err
        assert train_run(base + ["--output", "data.extxyz", "--overwrite"]) == 2
        assert "--output data.extxyz is also an input (data.extxyz)" in capsys.readouterr().err
        os.mkdir("folder")
        assert train_run(base + ["--output", "folder"]) == 2
        assert "--output folder is a folder" in capsys.readouterr().err
        # the default model file too: without a logger it is ./model.pt
        (tmp_path / "model.pt").write_bytes(b"another file of the user's")
        assert train_run(base + ["--output", "null", "--trainer.logger", "false"]) == 2
        assert "model.pt exists; pass --overwrite" in capsys.readouterr().err
        assert (tmp_path / "model.pt").read_bytes() == b"another file of the user's"
        # the config is an input too
        shutil.copy(CONFIG, "my.yaml")
        assert train_run(["--config", "my.yaml", *base[2:], "--output", "my.yaml", "--overwrite"]) == 2
        assert "--output my.yaml is also an input (my.yaml)" in capsys.readouterr().err
        assert not os.path.exists("runs")  # refused before any training
        assert (tmp_path / "taken.pt").read_bytes() == b"a user's file"
        assert len(read("data.extxyz", ":")) == 24
        assert train_run(base + ["--output", "taken.pt", "--overwrite"]) == 0
        assert e3pot.load_model("taken.pt")
        assert train_run(base + ["--output", "new/sub/model.pt"]) == 0  # folders are made
        assert e3pot.load_model("new/sub/model.pt")
    finally:
        os.chdir(cwd)


def test_resume_refuses_what_is_not_a_checkpoint(tmp_path, small_data, capsys):
    path = in_folder(tmp_path, small_data + ["--trainer.max_steps", "1", "--output", "m.pt"])
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        base = ["--config", CONFIG, *TINY, *small_data, "--trainer.max_steps", "2", "--output", "m2.pt"]
        assert train_run(base + ["--resume", path]) == 2
        assert f"--resume {path} is an e3pot model file, not a training checkpoint" in capsys.readouterr().err
        assert train_run(base + ["--resume", "data.extxyz"]) == 2
        assert "--resume data.extxyz: not a training checkpoint" in capsys.readouterr().err
        import torch

        torch.save({"weights": torch.zeros(2)}, "foreign.pt")
        assert train_run(base + ["--resume", "foreign.pt"]) == 2
        assert "--resume foreign.pt is not a training checkpoint written by train.py" in capsys.readouterr().err
    finally:
        os.chdir(cwd)


def test_seed_out_of_range_is_named(tmp_path, small_data, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert train_run(["--config", CONFIG, *TINY, *small_data, "--seed_everything", "-1"]) == 2
    finally:
        os.chdir(cwd)
    assert "--seed_everything must be between 0 and 4294967295" in capsys.readouterr().err


def test_store_refuses_label_options_it_was_not_made_with(tmp_path):
    from e3pot.data.io import LabelSpec
    from e3pot.data.store import write_store

    write(tmp_path / "data.extxyz", read(EXAMPLE, ":24"))
    store = write_store([str(tmp_path / "data.extxyz")], str(tmp_path / "data.store"), LabelSpec(), 4.0,
                        progress=False)
    with pytest.raises(DataError, match=r"data.store: data.energy_unit is 'kcal/mol' here, but the store was made "
                                        r"with 'eV'"):
        in_folder(tmp_path, ["--data.train_file", store, "--data.energy_unit", "kcal/mol",
                             "--trainer.max_steps", "1", "--output", "m.pt"])
    with pytest.raises(DataError, match=r"data.energy_key is 'free_energy' here, but the store was made with None"):
        in_folder(tmp_path, ["--data.train_file", store, "--data.energy_key", "free_energy",
                             "--trainer.max_steps", "1", "--output", "m.pt"])
    assert not os.path.exists(tmp_path / "m.pt")
    # the store's own settings, another spelling of the same unit, or none, train
    in_folder(tmp_path, ["--data.train_file", store, "--data.energy_unit", "eV", "--data.length_unit", "Angstrom",
                         "--trainer.max_steps", "1", "--output", "m.pt"])


def test_labels_in_mev_read_as_ev_are_flagged(tmp_path):
    from e3pot.train.datamodule import E3PotDataModule

    frames = read(EXAMPLE, ":24")
    for atoms in frames:  # the same data in meV
        atoms.calc.results["energy"] *= 1000.0
        atoms.calc.results["forces"] *= 1000.0
    write(tmp_path / "mev.extxyz", frames)
    for path, expect_warning in ((EXAMPLE, False), (str(tmp_path / "mev.extxyz"), True)):
        dm = E3PotDataModule(path, r_max=4.0, n_val=4)
        dm.setup("fit")
        shift = stats.fit_energy_shift(dm.train_set, len(dm.atomic_numbers))
        warning = stats.implausible_units(dm.train_set, shift, stats.force_rms(dm.train_set))
        if expect_warning:
            assert warning is not None and "do not look like eV and Å" in warning
            assert re.search(r"the forces have an RMS of \d+(\.\d+)? eV/Å", warning)
            assert "data.energy_unit" in warning
        else:
            assert warning is None


def test_checkpoints_carry_the_model_description(tmp_path, small_data):
    """A checkpoint alone gives a model file (the training data may be gone)."""
    import torch

    from e3pot.cli.export_checkpoint import MODEL_KEY
    from e3pot.cli.main import main as e3pot_main

    path = in_folder(tmp_path, small_data + ["--trainer.max_epochs", "1", "--output", "m.pt"])
    (last,) = glob.glob(str(tmp_path / "runs" / "*" / "version_*" / "checkpoints" / "last.ckpt"))
    assert MODEL_KEY in torch.load(last, map_location="cpu", weights_only=True)
    os.remove(tmp_path / "data.extxyz")
    out = str(tmp_path / "from_ckpt.pt")
    assert e3pot_main(["export-checkpoint", last, "-o", out]) == 0
    got, ref = e3pot.load_model(out), e3pot.load_model(str(tmp_path / path))
    assert got.atomic_numbers == ref.atomic_numbers
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(got.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("skip", [False, True], ids=["stops", "skips"])
def test_nonfinite_loss_under_ddp_stops_or_skips_on_every_process(tmp_path, skip):
    """A batch with a non-finite loss on one process: every process stops, or every process skips that
    step; none is left waiting in the gradient all-reduce."""
    from tests.test_bad_input import overflowing_label_data

    frames = [a for a in read(EXAMPLE, ":40") if len(a) == 9][:20]
    args = overflowing_label_data(tmp_path, frames) + [
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
        "--trainer.devices", "2", "--data.batch_size", "2", "--output", "model.pt",
        "--model.skip_nonfinite_batches", str(skip).lower()]
    code, out, err = run_with_limit([sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, *TINY,
                                     *args], tmp_path, 240)
    if skip:
        assert code == 0, err[-3000:]
        assert "skipped a batch with a non-finite loss" in err and "train.extxyz, frame 7" in err
        assert e3pot.load_model(str(tmp_path / "model.pt"))
    else:
        assert code == 2, err[-3000:]
        assert "non-finite training loss" in err and not os.path.exists(tmp_path / "model.pt")
