"""No command deletes or truncates a file it did not create.

Canary files sit next to every input and output of every command, under the names a careless
command would use for its temporary files. Every command then runs once to success and once to
failure; afterwards every canary and every input is byte-for-byte as it was, and nothing else is
left behind but the outputs.
"""
import glob
import os

import pytest
from ase.io import read, write

from e3pot.cli.main import main as e3pot_main
from e3pot.train.cli import run as train_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "example.yaml")
EXAMPLE = os.path.join(ROOT, "data", "example.extxyz")
TINY = ["--model.l_max", "0", "--model.num_features", "4", "--model.num_layers", "1", "--model.radial_hidden", "4",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

INPUTS = ["data.extxyz"]
OUTPUTS = ["model.pt", "data.store", "pred.extxyz", "pred.csv", "metrics.json", "parity.png", "model.ts",
           "from_ckpt.pt"]


def canary_names(path: str):
    base = os.path.basename(path)
    return [f"{path}.partial", f"{path}.tmp", f".{base}.partial", f"{path}.partial-{os.getpid()}",
            f"{path}.old-{os.getpid()}", f"{path}.bak", f"{path}~"]


def snapshot(folder):
    out = {}
    for path in glob.glob(os.path.join(folder, "**"), recursive=True, include_hidden=True):
        if os.path.isfile(path) and "runs" not in os.path.relpath(path, folder).split(os.sep):
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def test_no_command_touches_a_file_it_did_not_create(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    write("data.extxyz", read(EXAMPLE, ":24"))
    canaries = {}
    for path in INPUTS + OUTPUTS:
        for name in canary_names(path):
            canaries[name] = f"canary {name}\n".encode()
            with open(name, "wb") as fh:
                fh.write(canaries[name])
    before = snapshot(tmp_path)

    train = ["--config", CONFIG, *TINY, "--data.train_file", "data.extxyz", "--data.batch_size", "4",
             "--trainer.max_epochs", "1"]
    predict = ["predict", "model.pt", "data.extxyz", "-o", "pred.extxyz", "--csv", "pred.csv",
               "--metrics-json", "metrics.json", "--plot", "parity.png", "--no-progress"]
    succeed = [
        lambda: train_run(train + ["--output", "model.pt"]),
        lambda: e3pot_main(["preprocess", "data.extxyz", "-o", "data.store", "--r-max", "4.0", "--no-progress"]),
        lambda: e3pot_main(predict),
        lambda: e3pot_main(["export", "model.pt", "-o", "model.ts"]),
        lambda: e3pot_main(["export-checkpoint", glob.glob("runs/*/version_*/checkpoints/last.ckpt")[0],
                            "-o", "from_ckpt.pt"]),
        lambda: e3pot_main(["audit", "model.pt", "data.extxyz", "--max-structures", "1", "--nve-steps", "0",
                            "--dtypes", "float64", "--quiet"]),
    ]
    for command in succeed:
        assert command() == 0, capsys.readouterr().err
    made = snapshot(tmp_path)
    assert {k for k in made if k not in before} == {
        "model.pt", "pred.extxyz", "pred.csv", "metrics.json", "parity.png", "model.ts", "from_ckpt.pt",
        *(os.path.relpath(p) for p in glob.glob("data.store/*"))}

    # every command again: its output exists (refused without --overwrite), or is its own input
    fail = [
        lambda: train_run(train + ["--output", "model.pt"]),
        lambda: train_run(train + ["--output", "data.extxyz", "--overwrite"]),
        lambda: e3pot_main(["preprocess", "data.extxyz", "-o", "data.store", "--r-max", "4.0", "--no-progress"]),
        lambda: e3pot_main(["preprocess", "data.extxyz", "-o", "data.extxyz", "--overwrite", "--no-progress"]),
        lambda: e3pot_main(predict),
        lambda: e3pot_main(predict[:4] + ["data.extxyz", "--overwrite", "--no-progress"]),
        lambda: e3pot_main(["export", "model.pt", "-o", "model.ts"]),
        lambda: e3pot_main(["export", "model.pt", "-o", "model.pt", "--overwrite"]),
        lambda: e3pot_main(["export-checkpoint", "model.pt", "-o", "from_ckpt.pt", "--overwrite"]),
        lambda: e3pot_main(["audit", "data.extxyz"]),
    ]
    for k, command in enumerate(fail):
        assert command() == 2, k
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
    assert snapshot(tmp_path) == made  # nothing changed, nothing left behind


def test_audit_names_a_seed_out_of_range(tmp_path, capsys):
    from e3pot.model.io import save_model
    from tests.conftest import make_model

    path = save_model(make_model(), str(tmp_path / "m.pt"))
    assert e3pot_main(["audit", path, "--seed", "-1"]) == 2
    assert "e3pot audit: error: --seed must be between 0 and 4294967295, got -1" in capsys.readouterr().err


def test_the_python_api_writes_only_what_it_is_asked_to(tmp_path, monkeypatch):
    """The calculator, OpenMM and select, called from Python: canaries around every model and structure stay as
    they were; the only new file is the calculator's flagged_file; nothing refused writes a byte."""
    import numpy as np
    from ase import units
    from ase.build import molecule
    from ase.md.verlet import VelocityVerlet

    from e3pot.calculator import E3PotCalculator
    from e3pot.files import OutputError
    from e3pot.model.io import save_model
    from e3pot.select import select_frames
    from e3pot.testing.models import random_model

    monkeypatch.chdir(tmp_path)
    models = [save_model(random_model("e3", seed=s), f"m{s}.pt") for s in range(2)]
    write("pool.extxyz", [molecule("CH3CH2OH") for _ in range(4)])
    for path in models + ["pool.extxyz", "flagged.xyz"]:
        for name in canary_names(path):
            with open(name, "w") as fh:
                fh.write(f"canary {name}\n")
    before = snapshot(tmp_path)

    # refused before anything is written: a member as the flagged file, a binary format, a missing folder
    for flagged in (models[1], "flagged.traj", os.path.join("no", "flagged.xyz")):
        with pytest.raises(OutputError):
            E3PotCalculator(models, uncertainty_threshold=1e-9, flagged_file=flagged)
    assert snapshot(tmp_path) == before

    atoms = molecule("CH3CH2OH")
    atoms.calc = E3PotCalculator(models, uncertainty_threshold=1e-9, flagged_file="flagged.xyz")
    atoms.set_momenta(np.random.default_rng(0).normal(0, 0.3, (len(atoms), 3)))
    VelocityVerlet(atoms, 0.5 * units.fs).run(2)

    pool = read("pool.extxyz", ":")
    for k, frame in enumerate(pool):
        frame.positions += np.random.default_rng(k).normal(0, 0.05, frame.positions.shape)
    assert len(select_frames(models, pool, 2)) == 2

    openmm = pytest.importorskip("openmm")
    pytest.importorskip("openmmml")
    from openmm import app
    from openmmml import MLPotential

    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("MOL", chain)
    for symbol in atoms.get_chemical_symbols():
        topology.addAtom(symbol, app.Element.getBySymbol(symbol), residue)
    system = MLPotential("e3pot", model=models).createSystem(topology)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * 0.1)
    assert np.isfinite(context.getState(getEnergy=True).getPotentialEnergy()._value)

    after = snapshot(tmp_path)
    assert {k for k in after if k not in before} == {"flagged.xyz"}
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(read("flagged.xyz", ":")) == 3
