"""``e3pot export --format aoti``: an AOTInductor package computes what the eager model computes, loads without
compiling, and is named for what it is where a model file is expected.

One tiny float64 model (l_max 1) is compiled once for the module (about 75 s on 2 CPU cores, both models of
the package); a float32 package would cost as much again, so float32 is left to the compiled path's tests
(tests/test_compiled.py), which trace and compile the same graphs."""
import json
import os
import re
import time
import zipfile

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import write
from conftest import assert_same_predictions, graph_of, make_model

from e3pot.calculator import E3PotCalculator
from e3pot.cli.export import main as export_main
from e3pot.cli.export import output_format
from e3pot.cli.predict import main as predict_main
from e3pot.data.graph import collate
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.aoti import FORCES, LOCAL_ENERGY, METADATA_KEY, AotiModel, engine_inputs, is_aoti
from e3pot.model.export import ExportedModel, export_model, is_torchscript
from e3pot.model.io import read_model_file, save_model
from e3pot.model.runtime import EXPORTED, choose_path, evaluate, load_any
from e3pot.testing import check_model
from tests.trained_model import single_torch_thread  # noqa: F401  (one thread: see tests/trained_model.py)

TOL = 1e-10


@pytest.fixture(scope="module")
def package(aoti_package):
    """(model file, TorchScript export, AOTInductor package) of one tiny float64 model: see tests/conftest.py."""
    model_path, ts_path, path = aoti_package
    assert is_aoti(path) and not is_torchscript(path)
    assert [name for name in os.listdir(os.path.dirname(path)) if name.startswith(".")] == []  # no temporary file
    return aoti_package


def results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
           "energies": atoms.get_potential_energies()}
    if atoms.pbc.any():
        out["stress"] = atoms.get_stress()
    return out


def assert_close(got, ref, name):
    assert set(got) == set(ref), name
    assert abs(got["energy"] - ref["energy"]) <= TOL * abs(ref["energy"]), name
    for key in ("forces", "energies", "stress"):
        if key in ref:
            scale = max(np.abs(ref[key]).max(), 1.0 if key != "stress" else 0.1)
            np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=TOL * scale, err_msg=f"{name} {key}")


@pytest.mark.slow
def test_calculator_equals_the_eager_model(package, ethanol, periodic, capsys):
    model_path, _, path = package
    start = time.perf_counter()
    calc = E3PotCalculator(path)
    assert time.perf_counter() - start < 10  # loads, compiles nothing
    assert isinstance(calc.model, AotiModel) and calc.dtype == torch.float64
    assert calc.model.atomic_numbers == [1, 6, 8, 14] and calc.r_max == 3.5
    eager = E3PotCalculator(model_path)
    single = Atoms("H", positions=[[0.0, 0.0, 0.0]])  # one atom, no edge
    pair = Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.97]])
    for name, atoms in (("ethanol", ethanol), ("periodic", periodic), ("single", single), ("pair", pair)):
        assert_close(results(calc, atoms), results(eager, atoms), name)
    assert "compiling" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_batch_runs_structure_by_structure(package, ethanol, periodic):
    model_path, _, path = package
    aoti, eager = load_any(path), load_any(model_path)
    species = SpeciesMap(eager.atomic_numbers)
    graph = collate([atoms_to_graph(a, species, eager.r_max) for a in (ethanol, periodic, molecule("H2O"))])
    assert choose_path(aoti, graph, True) == (EXPORTED, None)
    got = aoti(graph, True)
    ref = evaluate(eager, graph, compute_stress=True)
    torch.testing.assert_close(got[0], ref.energy, rtol=TOL, atol=0)
    torch.testing.assert_close(got[1], ref.forces, rtol=0, atol=TOL)
    torch.testing.assert_close(got[3], ref.atomic_energies, rtol=0, atol=TOL)
    torch.testing.assert_close(got[2], ref.stress, rtol=0, atol=TOL, equal_nan=True)
    assert aoti(graph, False)[2] is None


@pytest.mark.slow
def test_local_energy_equals_the_torchscript_export(package, ethanol, periodic):
    _, ts_path, path = package
    aoti, scripted = AotiModel(path), ExportedModel(ts_path)
    model = make_model(num_layers=2, l_max=1)
    inputs = engine_inputs()
    assert aoti.metadata["models"][LOCAL_ENERGY]["inputs"] == inputs
    assert inputs[:4] == ["positions", "species", "edge_index", "local"]
    cases = []
    g = graph_of(ethanol, model)
    local = (torch.arange(len(ethanol)) < 5).double()  # the last atoms are ghosts
    cases.append((g.positions, g.species, g.edge_index, local))
    if "edge_shift" in inputs:  # a periodic cell on one process: every ghost folded onto its atom
        g = graph_of(periodic, model)
        cases.append((g.positions, g.species, g.edge_index, torch.ones(len(periodic), dtype=torch.float64),
                      g.edge_shift))
    for args in cases:
        got = aoti.local_energy(*args)
        ref = scripted.module.local_energy(*args)
        assert len(got) == len(ref) == 5
        for a, b in zip(got, ref):
            assert a.dtype == torch.float64 and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL * max(1.0, float(b.abs().max())))


@pytest.mark.slow
def test_predict_command_takes_the_package(package, tmp_path, capsys):
    model_path, _, path = package
    rng = np.random.default_rng(3)
    structures = [molecule("CH3CH2OH"), Atoms("SiOOCH", scaled_positions=rng.uniform(size=(5, 3)), pbc=True,
                                                cell=[[3.1, 0.0, 0.0], [0.4, 3.3, 0.0], [-0.3, 0.2, 3.0]]),
                  molecule("H2O")]
    inputs = str(tmp_path / "in.extxyz")
    write(inputs, structures)
    out_eager, out_aoti = str(tmp_path / "eager.extxyz"), str(tmp_path / "aoti.extxyz")
    assert predict_main([model_path, inputs, "-o", out_eager, "--batch-size", "2", "--no-progress"]) == 0
    assert predict_main([path, inputs, "-o", out_aoti, "--batch-size", "2", "--no-progress"]) == 0
    assert_same_predictions(out_eager, out_aoti)
    capsys.readouterr()
    rc = predict_main([path, inputs, "-o", str(tmp_path / "x.extxyz"), "--dtype", "float32", "--no-progress"])
    assert rc == 2
    assert "e3pot predict: error: the exported model runs in torch.float64, not float32" in capsys.readouterr().err


@pytest.mark.slow
def test_metadata_is_readable_by_python_and_by_the_loader(package):
    model_path, _, path = package
    model = AotiModel(path)
    info = model.metadata
    assert info["format"] == "e3pot-aoti" and info["dtype"] == "float64" and info["r_max"] == 3.5
    assert info["atomic_numbers"] == [1, 6, 8, 14] and info["ghost_cutoff"] == 7.0 and info["num_layers"] == 2
    assert info["device"] == "cpu" and set(info["models"]) == {FORCES, LOCAL_ENERGY}
    for name in (FORCES, LOCAL_ENERGY):
        # what C++'s AOTIModelPackageLoader(path, name).get_metadata() returns, and its static
        # load_metadata_from_package(path, name), which loads no model
        assert json.loads(model.package_metadata(name)[METADATA_KEY]) == info
        static = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(path, name)
        assert json.loads(static[METADATA_KEY]) == info
    assert model.kind == "e3" and model.energy_model is None and model.chunk_sizes() is None


@pytest.mark.slow
def test_the_package_is_refused_where_it_does_not_fit(package, tmp_path, capsys):
    model_path, _, path = package
    with pytest.raises(ValueError, match=re.escape("the exported model runs in torch.float64, not float32")):
        E3PotCalculator(path, dtype="float32")
    with pytest.raises(ValueError, match="an AOTInductor package .* is compiled already"):
        E3PotCalculator(path, compile=True)
    message = f"{path} is an AOTInductor package made by e3pot export --format aoti, not a model file"
    with pytest.raises(ValueError, match=re.escape(message)):
        read_model_file(path)
    assert export_main([path, "-o", str(tmp_path / "again.pt2")]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "again.pt2")
    with pytest.raises(ValueError, match="compiled for cpu, not cuda"):
        AotiModel(path, device="cuda")


@pytest.mark.slow
def test_the_battery_passes_on_the_package(package):
    report = check_model(package[2], dtype="float64")
    assert report.passed, report.table()
    with pytest.raises(ValueError, match="cannot run in float32"):
        check_model(package[2], dtype="float32")


# without a compilation ---------------------------------------------------------------------------------------

def fake_package(path, models=(FORCES, LOCAL_ENERGY)):
    """A zip laid out as a PT2 archive (entries only: nothing to load)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name in models:
            zf.writestr(f"archive/data/aotinductor/{name}/x.wrapper_metadata.json", json.dumps({}))
        zf.writestr("archive/archive_format", "pt2")
    return str(path)


def test_aoti_packages_are_recognised(tmp_path):
    text = tmp_path / "text.pt2"
    text.write_text("not a package\n")
    assert not is_aoti(str(text))
    assert not is_aoti(str(tmp_path))
    assert not is_aoti(fake_package(tmp_path / "other.pt2"))  # no e3pot metadata
    ts = export_model(make_model(num_layers=1), str(tmp_path / "m.ts"))
    assert not is_aoti(ts)


def test_a_package_is_named_where_a_model_file_is_expected(tmp_path, capsys):
    ours, other = fake_package(tmp_path / "ours.pt2"), fake_package(tmp_path / "other.pt2", models=("model",))
    with pytest.raises(ValueError, match=re.escape(f"{ours} is an AOTInductor package made by e3pot export "
                                                   "--format aoti, not a model file")):
        read_model_file(ours)
    with pytest.raises(ValueError, match=re.escape(f"{other} is an AOTInductor package (.pt2), not an e3pot model "
                                                   "file")):
        read_model_file(other)


def test_export_format_options(tmp_path, capsys):
    assert output_format(None, "model.pt2") == "aoti" and output_format(None, "m.PT2") == "aoti"
    assert output_format(None, "model.ts") == "torchscript"
    assert output_format("torchscript", "model.pt2") == "torchscript"
    assert output_format("aoti", "model.bin") == "aoti"
    model_path = save_model(make_model(num_layers=1), str(tmp_path / "model.pt"))
    assert export_main([model_path, "-o", str(tmp_path / "m.ts"), "--device", "cuda"]) == 2
    assert "only an AOTInductor export (--format aoti) is compiled for a device" in capsys.readouterr().err
    assert export_main([model_path, "-o", str(tmp_path / "m.bin"), "--format", "aoti"]) == 2
    assert "an AOTInductor package is a .pt2 file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert export_main([model_path, "-o", str(tmp_path / "m.pt2"), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not any(os.path.exists(tmp_path / name) for name in ("m.pt2", "m.ts", "m.bin"))


def test_a_memory_budget_warning_names_the_package_not_the_kind(package):
    """The package, not the model kind (e3, which is chunkable), is what runs in one piece."""
    _, _, path = package
    with pytest.warns(UserWarning, match="AOTInductor package") as caught:
        E3PotCalculator(path, memory_budget=1.0)
    message = str(caught[0].message)
    assert "a model of kind" not in message and path in message
