"""Smoke run of benchmarks/learning_curves.py on fake rMD17 data: two sizes, tiny models, seconds of training."""
import json
import math
import os
import sys

import pytest

from test_benchmarks import fake_rmd17

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import learning_curves  # noqa: E402

SMOKE_MODELS = ["egnn", "cartesian-aug"]  # the other kinds train in tests/test_baselines.py
TINY = ["--model.num_features", "4", "--model.num_layers", "2", "--model.radial_hidden", "8", "--model.num_basis", "4",
        "--trainer.enable_model_summary", "false"]


@pytest.mark.slow
def test_learning_curves_smoke(tmp_path, capsys, monkeypatch):
    fake_rmd17(tmp_path, "rmd17_fake_train_01.npz", 70)  # 50 validation frames, 20 left for training
    fake_rmd17(tmp_path, "rmd17_fake_test_01.npz", 10)
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "results"

    def argv(models, jobs):
        return ["--data", str(tmp_path), "--molecules", "fake", "--sizes", "10", "20", "--seconds", "2",
                "--models", *models, "--jobs", str(jobs), "--threads", "1", "--out", str(out_dir), "--", *TINY]

    out = learning_curves.main(argv(SMOKE_MODELS, jobs=1))
    text = capsys.readouterr().out
    assert out["failed"] == [], text
    assert len(out["points"]) == 2 * len(SMOKE_MODELS)
    assert f"[{2 * len(SMOKE_MODELS)}/{2 * len(SMOKE_MODELS)}]" in text
    for p in out["points"]:
        assert p["n_test"] == 10 and p["n_train"] in (10, 20)
        assert math.isfinite(p["forces_mae_meV_A"]) and math.isfinite(p["energy_mae_meV"])
        assert p["epochs"] >= 1 and p["n_params"] > 0 and p["train_wall_s"] >= 2
        assert p["model_file"].startswith(str(out_dir))  # runs and models stay under --out
    assert not (tmp_path / "runs").exists()
    for p in out["points"]:  # the model table's overrides reached the trainer
        args = learning_curves.MODELS[p["model"]]["args"]
        for key, value in zip(args[::2], args[1::2]):
            if key.startswith("--model.") and key[8:] in p["model_config"]:
                assert str(p["model_config"][key[8:]]).lower() == value, (p["name"], key)

    for name in ("learning_curves.json", "learning_curves.md", "learning_curves.png"):
        assert (out_dir / name).stat().st_size > 0
    saved = json.loads((out_dir / "learning_curves.json").read_text())  # written by benchmarks/results.py
    assert [p["name"] for p in saved["results"]["points"]] == [p["name"] for p in out["points"]]
    assert {"date", "commit", "machine", "versions"} <= set(saved["provenance"])
    md = (out_dir / "learning_curves.md").read_text()
    assert "Measured " in md and " at commit " in md
    rows = [line for line in md.splitlines() if line.startswith("| fake |")]
    for model in SMOKE_MODELS:  # one row in the accuracy table and one in the progress table
        assert sum(f"| {learning_curves.MODELS[model]['label']} |" in row for row in rows) == 2
    assert "| forces N=10 | forces N=20 | energy N=10 | energy N=20 | slope forces |" in md

    # A second invocation resumes: nothing is retrained. Points that fail are reported, the rest go on.
    files = sorted((out_dir / "points").glob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    monkeypatch.setitem(learning_curves.MODELS, "broken", {"label": "broken", "args": ["--model.no_such_option", "1"]})
    out2 = learning_curves.main(argv(SMOKE_MODELS + ["broken"], jobs=2))
    text = capsys.readouterr().out
    assert f"{2 * len(SMOKE_MODELS) + 2} points, {2 * len(SMOKE_MODELS)} already done" in text
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert sorted(f["name"] for f in out2["failed"]) == ["fake-broken-n10", "fake-broken-n20"]
    assert "FAILED" in text and os.path.exists(out2["failed"][0]["log"])
    assert len(out2["points"]) == 2 * len(SMOKE_MODELS)
