"""Settings of inference and set-up that must fail clearly or say what they do: the memory budget
(E3POT_MEMORY_BUDGET, memory_budget=), the device, the compiled path's note, and E3POT_ENV=active."""
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule
from conftest import SPECIES, graph_of, make_model

from e3pot.calculator import E3PotCalculator
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.chunked import MemoryBudgetError, format_gib, out_of_memory_message, plan
from e3pot.model.kinds import build_model
from e3pot.model.runtime import evaluate, load_any
from e3pot.predict import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZERO_GIB = re.compile(r"(?<![\d.])0\.0 GiB")  # a size rounded away to nothing


@pytest.fixture(scope="module")
def model():
    return make_model(l_max=1)


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(1).normal(scale=0.1, size=atoms.positions.shape)
    return atoms


def egnn(seed=0):
    torch.manual_seed(seed)
    return build_model(dict(kind="egnn", atomic_numbers=SPECIES, r_max=3.5, num_features=6, num_layers=2,
                            num_basis=6, radial_hidden=16, avg_num_neighbors=4.0,
                            energy_shift=[-13.0, -1030.0, -2040.0, -100.0], energy_scale=1.3)).double().eval()


# E3POT_MEMORY_BUDGET ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "0", "-2", "nan", "4GiB"])
def test_a_bad_budget_variable_is_an_error_for_a_molecule_too(model, ethanol, monkeypatch, value):
    monkeypatch.setenv("E3POT_MEMORY_BUDGET", value)
    message = rf"E3POT_MEMORY_BUDGET must be a positive number of GiB.*got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        E3PotCalculator(model)
    with pytest.raises(ValueError, match=message):
        predict(model, [ethanol])
    with pytest.raises(ValueError, match=message):
        evaluate(model, graph_of(ethanol, model))
    with pytest.raises(ValueError, match=message):  # an explicit budget does not hide a bad variable
        E3PotCalculator(model, memory_budget=2.0)


def test_a_good_budget_variable_is_the_budget(model, ethanol, monkeypatch):
    monkeypatch.setenv("E3POT_MEMORY_BUDGET", " 8 ")
    assert plan(model, graph_of(ethanol, model), False) is None
    reference = E3PotCalculator(model).get_potential_energy(ethanol)
    monkeypatch.setenv("E3POT_MEMORY_BUDGET", "1e-5")  # applies to a molecule as to a large structure
    with pytest.raises(MemoryBudgetError, match=r"memory budget of 0\.00001 GiB"):
        E3PotCalculator(model).get_potential_energy(ethanol)
    monkeypatch.setenv("E3POT_MEMORY_BUDGET", "")  # empty: unset
    assert E3PotCalculator(model).get_potential_energy(ethanol) == reference


def test_a_bad_budget_argument_names_itself(model):
    for value in (0, -1.0, float("nan"), "abc"):
        with pytest.raises(ValueError, match=rf"memory_budget must be a positive number of GiB, got {re.escape(repr(value))}"):
            E3PotCalculator(model, memory_budget=value)


# a budget for a model kind that is never chunked ------------------------------------------------------------

def test_a_budget_for_an_egnn_says_it_is_ignored(ethanol):
    model = egnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no budget given: nothing to say
        E3PotCalculator(model).get_potential_energy(ethanol)
        predict(model, [ethanol])
    with pytest.warns(UserWarning, match=r"memory budget of 2\.0 GiB .*has no effect.*kind 'egnn'.*always evaluated in one piece"):
        calc = E3PotCalculator(model, memory_budget=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, at set-up: not again at each step
        calc.get_potential_energy(ethanol)
        calc.get_forces(ethanol.copy())
    other = egnn(seed=1)
    with pytest.warns(UserWarning, match=r"kind 'egnn'.*always evaluated in one piece"):
        predict(other, [ethanol, ethanol.copy()], batch_size=1, memory_budget=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(other, [ethanol], memory_budget=2.0)  # the same model: said already


def test_a_budget_for_a_chunkable_model_says_nothing(model, ethanol):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E3PotCalculator(model, memory_budget=2.0).get_potential_energy(ethanol)
        predict(model, [ethanol], memory_budget=2.0)


# budget messages -------------------------------------------------------------------------------------------

def test_sizes_are_never_shown_as_zero():
    assert format_gib(0.001) == "0.001 GiB"
    assert format_gib(1e-5) == "0.00001 GiB"
    assert format_gib(0.000523456) == "0.000523 GiB"
    assert format_gib(1.5) == "1.5 GiB"
    assert format_gib(12.345) == "12.3 GiB"
    assert format_gib(99.97) == "100 GiB"
    assert format_gib(1234.4) == "1234 GiB"
    assert format_gib(2.0) == "2 GiB"


def test_a_tiny_budget_gives_its_sizes_in_significant_figures(model, ethanol):
    with pytest.raises(MemoryBudgetError) as info:
        plan(model, graph_of(ethanol, model), False, 1e-4)
    message = str(info.value)
    assert not ZERO_GIB.search(message), message
    assert "a structure of 9 atoms and" in message and "memory budget of 0.0001 GiB" in message
    need = float(re.search(r"needs about (\S+) GiB", message).group(1))
    assert need > 1e-4
    assert "--batch-size" not in message  # one structure: no batch to make smaller


def test_a_batch_is_called_a_batch(model, ethanol):
    structures = [ethanol.copy() for _ in range(20)]
    with pytest.raises(MemoryBudgetError) as info:
        predict(model, structures, batch_size=20, memory_budget=0.001)
    message = str(info.value)
    assert re.search(r"a batch of 20 structures \(180 atoms, \d+ edges\) needs about", message), message
    assert "--batch-size" in message and "memory budget of 0.001 GiB" in message
    assert not ZERO_GIB.search(message), message


def test_out_of_memory_message_for_a_batch(model, ethanol):
    species = SpeciesMap(model.atomic_numbers)
    graph = collate([atoms_to_graph(ethanol, species, model.r_max) for _ in range(3)])
    message = out_of_memory_message(model, graph, 0.001)
    assert re.search(r"evaluating a batch of 3 structures \(27 atoms, \d+ edges\)", message), message
    assert "memory budget of 0.001 GiB" in message and "--batch-size" in message
    assert not ZERO_GIB.search(message), message
    single = out_of_memory_message(model, graph_of(ethanol, model), 0.001)
    assert "a structure of 9 atoms" in single and "--batch-size" not in single
    assert "batch of 3 structures" in out_of_memory_message(egnn(), graph, None)


# device --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["bogus", "cpu:x", ""])
def test_an_unknown_device_is_a_clear_error(model, device):
    message = rf"unknown device {re.escape(repr(device))}; use 'cpu', 'cuda' or 'cuda:N'"
    with pytest.raises(ValueError, match=message):
        E3PotCalculator(model, device=device)
    with pytest.raises(ValueError, match=message):
        load_any(model, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_clear_error(model):
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match=rf"device {device!r} asked for, but CUDA is not available.*use device 'cpu'"):
            E3PotCalculator(model, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_that_is_not_there_is_a_clear_error(model):
    device = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=rf"device {device!r} asked for, but torch sees \d+ GPU"):
        E3PotCalculator(model, device=device)


# the compiled path says that it compiles -------------------------------------------------------------------

class _Traced(Exception):
    """Raised in place of the trace: the test stops where the compilation would start."""


def _no_trace(*args, **kwargs):
    raise _Traced


def test_compiling_message_says_what_how_long_and_where(monkeypatch, tmp_path):
    from e3pot.model.compiled import compiling_message

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    message = compiling_message("energy and forces", torch.device("cpu"))
    assert "compiling energy and forces" in message
    assert "about a minute or two on a CPU the first time" in message and "cache is warm" in message
    assert str(tmp_path / "cache") in message and "TORCHINDUCTOR_CACHE_DIR" in message
    assert not (tmp_path / "cache").exists()  # naming the folder creates nothing
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert "torchinductor_" in compiling_message("x", torch.device("cpu"))


def test_a_compilation_is_announced_on_stderr(model, ethanol, monkeypatch, capsys):
    import torch.fx.experimental.proxy_tensor as proxy_tensor

    from e3pot.model.compiled import CompiledModel, CompiledTrainingLoss

    monkeypatch.setattr(proxy_tensor, "make_fx", lambda *a, **k: _no_trace)
    compiled = CompiledModel(model)
    graph = graph_of(ethanol, model)
    with pytest.raises(_Traced):
        compiled(graph, False)
    err = capsys.readouterr().err
    assert err.count("compiling") == 1
    assert "compiling energy and forces of one structure" in err and "minute or two" in err

    species = SpeciesMap(model.atomic_numbers)
    batch = collate([atoms_to_graph(ethanol, species, model.r_max) for _ in range(2)])
    loss = CompiledTrainingLoss(model, lambda pred, labels: {"loss": pred.energy.sum()}, compute_stress=False)
    with pytest.raises(_Traced):
        loss(batch, (torch.zeros(2),))
    err = capsys.readouterr().err
    assert "compiling the training loss and its gradients" in err and "minute or two" in err


# E3POT_ENV=active ------------------------------------------------------------------------------------------

SITECUSTOMIZE = """
import os, sys, sysconfig
if os.environ.get("FAKE_SYSTEM") == "1":  # not a virtual environment
    sys.base_prefix = sys.prefix
_stdlib = os.environ["FAKE_STDLIB"]
_get_path = sysconfig.get_path
sysconfig.get_path = lambda name, *a, **k: _stdlib if name == "stdlib" else _get_path(name, *a, **k)
if os.environ.get("FAKE_EMPTY") == "1":  # nothing installed
    sys.modules["torch"] = None
sys.modules["pip"] = None  # and nothing will be: pip cannot run
"""


def _fake_python(tmp_path, name="python"):
    """A ``python`` on PATH that runs this interpreter with a stand-in stdlib folder and prefix."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / name
    fake.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("managed, system, empty, refused", [
    (True, True, True, True),  # an OS-managed Python outside a venv, with nothing installed: refused
    (False, True, True, False),  # not managed: set-up goes on to install
    (True, False, True, False),  # a virtual environment of such a Python: goes on
    (True, True, False, False),  # everything installed already: nothing to do
], ids=["managed", "not-managed", "venv", "installed"])
def test_setup_with_an_active_externally_managed_python(tmp_path, managed, system, empty, refused):
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    if managed:
        (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a venv\n")
    bin_dir = _fake_python(tmp_path)
    env = dict(os.environ, E3POT_ENV="active", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TORCH_BUILD="cpu",
               FAKE_STDLIB=str(stdlib), FAKE_SYSTEM="1" if system else "0", FAKE_EMPTY="1" if empty else "0",
               PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    env.pop("PYTHONPATH", None)
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup_env.sh")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert f"using {bin_dir / 'python'}" in run.stderr, run.stderr
    if refused:
        assert run.returncode == 1
        assert "externally managed" in run.stderr and "Activate a virtual environment" in run.stderr
        assert "./.venv" in run.stderr
        assert "installing" not in run.stderr
    else:
        assert "externally managed" not in run.stderr
        if empty:  # went on to install, which this stand-in's pip cannot do
            assert "installing torch" in run.stderr and run.returncode != 0
        else:
            assert run.returncode == 0 and "nothing to install" in run.stderr, run.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("names, chosen", [(["python3"], "python3"), (["python", "python3"], "python")])
def test_make_with_an_active_environment_runs_the_interpreter_setup_chose(tmp_path, names, chosen):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in names:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, E3POT_ENV="active", PATH=str(bin_dir))
    run = subprocess.run([shutil.which("make"), "-n", "test", "example"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"{bin_dir / chosen} -m pytest -q" in run.stdout, run.stdout
    assert f"{bin_dir / chosen} train.py --config configs/example.yaml" in run.stdout, run.stdout
    with open(os.path.join(ROOT, "scripts", "setup_env.sh")) as fh:  # the script looks in the same order
        assert "py=$(command -v python || command -v python3)" in fh.read()
