"""Smoke runs of the benchmark scripts at tiny sizes, so that they keep working."""
import json
import os
import sys

import numpy as np
import pytest
from ase.build import molecule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import rmd17  # noqa: E402
import speed  # noqa: E402


@pytest.mark.slow
def test_speed_smoke(tmp_path, capsys):
    peers = tmp_path / "peers"
    peers.mkdir()
    fake = {"package": "nequip", "version": "0.0", "dtype": "float32", "n_params": 10,
            "a_B1": {"step_s": {"median_s": 1.0}, "molecules_per_s": 1.0},
            "a_B32": {"step_s": {"median_s": 2.0}, "molecules_per_s": 16.0, "us_per_atom_step": 1.0},
            "b_water": {"step_s": {"median_s": 3.0}, "us_per_atom_step": 1.0, "peak_rss_mb_usr_bin_time": 1024},
            "c_train_B5": {"step_s": {"median_s": 4.0}}, "d_md_eager": {"s_per_step": 5.0}}
    (peers / "nequip_float32_t1.json").write_text(json.dumps(fake) + "\n")
    out = speed.main(["--presets", "tiny", "--compare-preset", "tiny", "--dtypes", "float32", "--reps", "2", "--water-reps", "2",
                      "--md-steps", "2", "--threads", "1", "--data-dir", str(tmp_path / "none"),
                      "--peers", str(peers), "--out", str(tmp_path / "speed.json"), "--parts", "abcde"])
    text = capsys.readouterr().out
    assert "| e3pot tiny (eager) | float32 |" in text and "nequip 0.0 (eager)" in text
    assert "(e) Time to first result" in text
    assert "Speed-up of e3pot over each peer" in text
    (tiny,) = out["e3pot"]
    for key in ("a_B1", "a_B32", "b_water", "c_train_B5", "d_md", "e_first_cold"):
        assert key in tiny
    assert tiny["e_first_cold"]["first_call_s"] > 0
    assert tiny["b_water"]["peak_rss_mb"] > 0 and tiny["a_B32"]["molecules_per_s"] > 0
    assert "| eager | nequip 0.0 (eager) | float32 |" in text.split("Speed-up")[1]
    assert json.loads((tmp_path / "speed.json").read_text())["peers"][0]["name"] == "nequip 0.0 (eager)"


def fake_rmd17(folder, name, n):
    rng = np.random.default_rng(len(name) + n)
    ref = molecule("CH3CH2OH")
    np.savez(folder / name, coords=ref.positions[None] + rng.normal(scale=0.05, size=(n, 9, 3)),
             nuclear_charges=ref.numbers.astype(np.uint8), energies=rng.normal(size=n) - 97000.0,
             forces=rng.normal(size=(n, 9, 3)))


def test_rmd17_smoke(tmp_path, capsys, monkeypatch):
    fake_rmd17(tmp_path, "rmd17_fake_train_01.npz", 70)
    fake_rmd17(tmp_path, "rmd17_fake_test_01.npz", 10)
    monkeypatch.chdir(tmp_path)
    out = rmd17.main(["--data", str(tmp_path), "--molecule", "fake", "--minutes", "1", "--learning-curve", "10", "20",
                      "--out", str(tmp_path / "results"), "--",
                      "--trainer.max_epochs", "1", "--model.l_max", "1", "--model.num_features", "4",
                      "--model.num_layers", "1", "--model.radial_hidden", "8", "--trainer.enable_model_summary", "false"])
    text = capsys.readouterr().out
    assert [p["n_train"] for p in out["points"]] == [10, 20]
    assert all(p["n_test"] == 10 and np.isfinite(p["forces_mae_meV_A"]) for p in out["points"])
    assert "| e3pot | 10 | 1 min CPU |" in text
    saved = json.loads((tmp_path / "results" / "rmd17_fake_1min_curve.json").read_text())  # benchmarks/results.py
    assert {"date", "commit", "machine", "versions"} <= set(saved["provenance"])
    assert [p["n_train"] for p in saved["results"]["points"]] == [10, 20]
    assert "| e3pot | 10 | 1 min CPU |" in (tmp_path / "results" / "rmd17_fake_1min_curve.md").read_text()


def test_energy_accuracy_smoke(tmp_path, capsys, monkeypatch):
    import energy_accuracy

    (tmp_path / "rmd17").mkdir()
    fake_rmd17(tmp_path / "rmd17", "rmd17_aspirin_train_01.npz", 70)  # ethanol under aspirin's name
    fake_rmd17(tmp_path / "rmd17", "rmd17_aspirin_test_01.npz", 10)
    monkeypatch.chdir(tmp_path)
    out = energy_accuracy.main(["--dataset", "aspirin", "--data", str(tmp_path), "--minutes", "1",
                                "--out", str(tmp_path / "results"), "--",
                                "--trainer.max_epochs", "1", "--model.l_max", "1", "--model.num_features", "4",
                                "--model.num_layers", "1", "--model.radial_hidden", "8",
                                "--trainer.enable_model_summary", "false"])
    text = capsys.readouterr().out
    (test,) = out["tests"].values()
    assert test["n"] == 10 and np.isfinite(test["energy_mae_meV"]) and np.isfinite(test["forces_mae_meV_A"])
    assert test["energy_std_meV"] <= test["energy_rmse_meV"] + 1e-9
    assert "| test (1000) |" in text
    saved = json.loads((tmp_path / "results" / "energy-aspirin-1min.json").read_text())
    assert saved["results"]["tests"]["test (1000)"]["n"] == 10 and "commit" in saved["provenance"]
    assert (tmp_path / "results" / "energy-aspirin-1min.md").exists()


@pytest.mark.slow
def test_large_systems_smoke(tmp_path, capsys):
    import large_systems

    out = large_systems.main(["--preset", "tiny", "--sizes", "192", "--direct-sizes", "", "--chunked-sizes", "192",
                              "--md-size", "192", "--md-steps", "2", "--threads", "1", "--reps", "1",
                              "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "large.json")])
    text = capsys.readouterr().out
    assert "| 192 |" in text and "chunked |" in text and "| VelocityVerlet 0.5 fs | 192 | 1.0 |" in text
    modes = {(r["mode"], r["stress"]): r for r in out["rows"]}
    assert modes[("chunked", True)]["chunk_edges"] is not None and modes[("default", False)]["chunk_edges"] is None
    assert all(r["peak_rss_gib"] > 0 and r["step_s"]["median_s"] > 0 for r in out["rows"])
    assert [m["neighbor_list_builds"] for m in out["md"]] == [4, 1]  # fresh list at every call, then one build
    assert json.loads((tmp_path / "large.json").read_text())["rows"][0]["n_atoms"] == 192


def test_gpu_scripts_refuse_a_machine_without_a_gpu(tmp_path):
    """benchmarks/gpu.sh and profile_call.py --device cuda stop at once, with a message, when there is no GPU."""
    import shutil
    import subprocess

    import torch

    if shutil.which("nvidia-smi") or torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu.sh")], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "E3POT_GPU_ENV": str(tmp_path / "venv")})
    assert out.returncode == 2 and "nvidia-smi not found" in out.stderr and "nothing was run" in out.stderr
    assert not (tmp_path / "venv").exists()
    import profile_call

    with pytest.raises(SystemExit, match="torch sees no CUDA GPU here"):
        profile_call.main(["--device", "cuda", "--out", str(tmp_path / "p.json")])


def test_profile_call_on_the_cpu(tmp_path, capsys):
    import profile_call

    profile_call.main(["--device", "cpu", "--preset", "tiny", "--kernels", "torch", "--reps", "2", "--calls", "1",
                       "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "p.json")])
    text = capsys.readouterr().out
    assert "| torch |" in text and "Operators, torch kernels (1 calls, by self CPU time)" in text
    (row,) = json.loads((tmp_path / "p.json").read_text())["results"]["rows"]
    assert row["kernels"] == "torch" and row["wall_ms"] > 0


@pytest.mark.slow
def test_shared_machine_smoke(tmp_path, capsys):
    import shared_machine

    out = shared_machine.main(["--size", "768", "--preset", "tiny", "--reps", "1", "--settings", "2x1p",
                               "--out", str(tmp_path / "shared.json")])
    (row,) = out["rows"]
    assert row["jobs"] == 2 and row["threads"] == 1 and row["passive"] and len(row["ms_per_atom"]) == 2
    assert all(x > 0 for x in row["ms_per_atom"]) and row["throughput_atoms_per_s"] > 0
    assert "| 2 × 1 | PASSIVE |" in capsys.readouterr().out


def test_radial_fusion_smoke(tmp_path, capsys):
    import radial_fusion

    out = radial_fusion.main(["--preset", "tiny", "--reps", "2", "--data-dir", str(tmp_path / "none"),
                              "--out", str(tmp_path / "rf.json")])
    assert [r["case"] for r in out["rows"]] == ["aspirin, batch 1", "water box"]
    assert all(r["fused_s"] > 0 and r["separate_s"] > 0 for r in out["rows"])
    assert "| water box |" in capsys.readouterr().out
    assert json.loads((tmp_path / "rf.json").read_text())["rows"][0]["reps"] == 2
