"""``e3pot export``: the TorchScript archive computes what the eager model computes, with torch alone."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write
from conftest import assert_same_predictions

import e3pot
from e3pot.calculator import E3PotCalculator
from e3pot.cli.export import main as export_main
from e3pot.cli.predict import main as predict_main
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
from e3pot.model.export import is_torchscript
from tests.trained_model import SUBPROCESS_ENV, model_file_32, model_file_64, single_torch_thread  # noqa: F401

# Relative tolerance of the energy. Forces and stress get the same relative to their largest entry,
# but not below a typical magnitude (1 eV/Å, 0.1 eV/Å^3): rounding errors in float32 scale with the
# per-edge terms, not with the net force on an atom, which nearly cancels in a crystal.
TOL = {"float64": 1e-10, "float32": 1e-5}
FLOOR = {"forces": 1.0, "stress": 0.1}


def structures():
    rng = np.random.default_rng(7)
    ethanol = molecule("CH3CH2OH")
    ethanol.positions += rng.normal(scale=0.1, size=ethanol.positions.shape)
    skewed = Atoms("SiOOCH", scaled_positions=rng.uniform(size=(5, 3)), pbc=True,
                   cell=[[3.1, 0.0, 0.0], [0.4, 3.3, 0.0], [-0.3, 0.2, 3.0]])
    si = bulk("Si", "diamond", a=5.3)
    si.positions += rng.normal(scale=0.05, size=si.positions.shape)
    return {"ethanol": ethanol, "skewed": skewed, "si": si}


@pytest.fixture(scope="module")
def exported(model_file_64, model_file_32, tmp_path_factory):
    """{dtype: (model file, exported file)} through the command line."""
    out = {}
    for dtype, model_path in (("float64", model_file_64), ("float32", model_file_32)):
        path = str(tmp_path_factory.mktemp("export") / f"model_{dtype}.ts")
        assert export_main([model_path, "-o", path]) == 0
        assert os.path.exists(path) and is_torchscript(path) and not is_torchscript(model_path)
        out[dtype] = (model_path, path)
    return out


def results(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.any():
        out["stress"] = atoms.get_stress()
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exported_matches_eager(exported, dtype):
    model_path, export_path = exported[dtype]
    eager, scripted = E3PotCalculator(model_path), E3PotCalculator(export_path)
    assert eager.dtype == scripted.dtype == getattr(torch, dtype)
    assert scripted.model.atomic_numbers == [1, 6, 8, 14] and scripted.r_max == 3.5
    tol = TOL[dtype]
    for name, atoms in structures().items():
        ref, got = results(eager, atoms), results(scripted, atoms)
        assert set(got) == set(ref), name
        assert abs(got["energy"] - ref["energy"]) <= tol * abs(ref["energy"]), name
        for key in ("forces", "stress"):
            if key in ref:
                scale = np.abs(ref[key]).max()
                assert scale > 1e-3, (name, key)
                np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=tol * max(scale, FLOOR[key]),
                                           err_msg=f"{name} {key}")


def test_float32_export_runs_in_float32(exported):
    e64 = results(E3PotCalculator(exported["float64"][1]), structures()["ethanol"])["energy"]
    e32 = results(E3PotCalculator(exported["float32"][1]), structures()["ethanol"])["energy"]
    assert e32 != e64  # really computed in single precision ...
    assert abs(e32 - e64) < 1e-5 * abs(e64)  # ... of the same weights


def test_export_dtype_option(model_file_64, exported, tmp_path, capsys):
    path = str(tmp_path / "cast.ts")
    assert export_main([model_file_64, "-o", path, "--dtype", "float32"]) == 0
    assert "float32" in capsys.readouterr().out
    cast = E3PotCalculator(path)
    assert cast.dtype == torch.float32
    # the float64 model cast at export time == the float32 model file of the same weights, exported
    atoms = structures()["skewed"]
    ref = results(E3PotCalculator(exported["float32"][1]), atoms)
    got = results(cast, atoms)
    assert got["energy"] == pytest.approx(ref["energy"], rel=1e-6)
    np.testing.assert_allclose(got["stress"], ref["stress"], rtol=0, atol=1e-5 * np.abs(ref["stress"]).max())


def test_export_missing_model(tmp_path, capsys):
    assert export_main([str(tmp_path / "none.pt"), "-o", str(tmp_path / "x.ts")]) == 2
    assert capsys.readouterr().err.startswith("e3pot export: error: ")
    assert not os.path.exists(tmp_path / "x.ts")


def test_predict_accepts_exported_file(exported, tmp_path, capsys):
    model_path, export_path = exported["float64"]
    inputs = str(tmp_path / "in.extxyz")
    write(inputs, list(structures().values()))
    out_eager, out_export = str(tmp_path / "eager.extxyz"), str(tmp_path / "export.extxyz")
    assert predict_main([model_path, inputs, "-o", out_eager, "--batch-size", "2", "--no-progress"]) == 0
    assert predict_main([export_path, inputs, "-o", out_export, "--batch-size", "2", "--no-progress"]) == 0
    assert_same_predictions(out_eager, out_export)
    # an export runs in its own dtype only; asking for another is a clear error
    capsys.readouterr()
    rc = predict_main([export_path, inputs, "-o", str(tmp_path / "x.extxyz"), "--dtype", "float32", "--no-progress"])
    assert rc == 2
    assert "e3pot predict: error: the exported model runs in torch.float64" in capsys.readouterr().err


STANDALONE = r"""
import json, sys
sys.modules["e3pot"] = None  # importing e3pot would fail here
sys.modules["e3nn"] = None
import torch

path, graphs = sys.argv[1], json.load(sys.stdin)
extra = {"metadata.json": ""}
module = torch.jit.load(path, _extra_files=extra)
meta = json.loads(extra["metadata.json"])
dtype = getattr(torch, meta["dtype"])
out = []
for g in graphs:
    species = torch.tensor([meta["atomic_numbers"].index(z) for z in g["numbers"]])
    n = len(g["numbers"])
    energy, forces, stress, atomic = module(
        torch.tensor(g["positions"], dtype=dtype), species, torch.tensor(g["edge_index"]).reshape(2, -1),
        torch.tensor(g["edge_shift"], dtype=dtype).reshape(-1, 3), torch.zeros(n, dtype=torch.long),
        torch.tensor(g["cell"], dtype=dtype).reshape(1, 3, 3), torch.tensor([g["pbc"]]), g["periodic"])
    out.append({"energy": energy.tolist(), "forces": forces.tolist(),
                "stress": None if stress is None else stress.tolist(), "r_max": meta["r_max"]})
assert "e3pot" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
assert "e3nn" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]
print(json.dumps(out))
"""


def test_export_runs_with_torch_alone(exported, tmp_path):
    """A process that cannot import e3pot (or e3nn) loads the archive and runs it on plain tensors."""
    model_path, export_path = exported["float64"]
    calc = E3PotCalculator(model_path)
    species = SpeciesMap(calc.model.atomic_numbers)
    graphs, expected = [], []
    for name in ("ethanol", "skewed"):
        atoms = structures()[name]
        g = atoms_to_graph(atoms, species, calc.r_max)  # neighbour list made here, model run there
        graphs.append({"numbers": atoms.numbers.tolist(), "positions": g.positions.tolist(),
                       "edge_index": g.edge_index.tolist(), "edge_shift": g.edge_shift.tolist(),
                       "cell": g.cell.tolist(), "pbc": g.pbc[0].tolist(), "periodic": bool(atoms.pbc.any())})
        expected.append(results(calc, atoms))
    proc = subprocess.run([sys.executable, "-c", STANDALONE, export_path], input=json.dumps(graphs),
                          capture_output=True, text=True, cwd=str(tmp_path), env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, g, ref in zip(("ethanol", "skewed"), got, expected):
        assert g["r_max"] == 3.5
        assert g["energy"][0] == pytest.approx(ref["energy"], rel=1e-12, abs=0), name
        np.testing.assert_allclose(np.array(g["forces"]), ref["forces"], rtol=0, atol=1e-10)
        if "stress" in ref:
            from ase.stress import full_3x3_to_voigt_6_stress

            np.testing.assert_allclose(full_3x3_to_voigt_6_stress(np.array(g["stress"][0])), ref["stress"],
                                       rtol=0, atol=1e-12)
        else:
            assert g["stress"] is None
    assert e3pot.load_model(model_path).dtype == torch.float64


def test_model_file_from_another_format_is_refused(model_file_64, tmp_path):
    payload = torch.load(model_file_64, weights_only=True)
    for version, message in ((payload["format_version"] - 1, "older than this e3pot reads.*retrain"),
                             (payload["format_version"] + 1, "newer than this e3pot understands")):
        path = str(tmp_path / f"v{version}.pt")
        torch.save(dict(payload, format_version=version), path)
        with pytest.raises(ValueError, match=message):
            e3pot.load_model(path)
    broken = dict(payload, state_dict={k: v for k, v in payload["state_dict"].items() if "conv" not in k})
    path = str(tmp_path / "broken.pt")
    torch.save(broken, path)
    with pytest.raises(ValueError, match="broken.pt: weights do not fit"):
        e3pot.load_model(path)
