"""Smoke run of benchmarks/active_learning.py --quick: xTB data, one round of both strategies, the shallow
ensemble, and the summary files (about two minutes on 2 CPU cores)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "active_learning.py")


@pytest.mark.slow
def test_active_learning_quick(tmp_path):
    pytest.importorskip("tblite")
    out = tmp_path / "al"
    # a child process: the script sets OMP_NUM_THREADS for itself, which must not leak into the test session
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    saved = json.loads((tmp_path / "al.json").read_text())  # written by benchmarks/results.py
    assert {"date", "commit", "machine", "versions"} <= set(saved["provenance"])
    res = saved["results"]
    assert res["settings"]["quick"] and res["settings"]["rounds"] == 1
    for strategy in ("uncertainty", "random"):
        rows = res["strategies"][strategy]
        assert [r["round"] for r in rows] == [0, 1]
        assert [r["labels"] for r in rows] == [25, 30]  # 5 xTB labels in the round
        assert rows[1]["picked"] == 5 and rows[1]["xtb_failed"] == 0
        for row in rows:
            for who in ("member1", "committee"):
                assert 0 < row[who]["forces_mae"] < 5000 and 0 < row[who]["energy_mae"] < 5000
            assert row["stability"]["runs"] == 1 and 0 <= row["stability"]["blow_ups"] <= 1
            assert all(e is not None and e >= 1 for e in row["epochs"])
        assert rows[1]["committee"] != rows[1]["member1"]  # bootstrap and seeds make the members differ
    assert res["strategies"]["uncertainty"][0] == res["strategies"]["random"][0]  # one shared round 0
    reasons = res["strategies"]["uncertainty"][1]["reasons"]
    assert len(reasons) == 5 and all(reasons)  # select_frames says why it picked each frame
    assert res["strategies"]["random"][1]["reasons"] == []
    assert len(res["ranking"]) == 3
    for r in res["ranking"].values():
        for key in ("spearman_forces_atom", "spearman_energy"):
            assert r[key] is None or -1 <= r[key] <= 1
        assert r["forces_components"]["n"] == 3 * 9 * 100  # every force component of the 100 hot frames

    md = (tmp_path / "al.md").read_text()
    assert "Measured " in md and "| round | labels | uncertainty: force MAE |" in md
    assert sum(line.startswith("| 0 | 25 |") or line.startswith("| 1 | 30 |") for line in md.splitlines()) == 2
    assert "shallow ensemble, 4 heads" in md
    assert (tmp_path / "al.png").stat().st_size > 0
    for name in ("start_300K_n25_every20_seed0.extxyz", "hot_1000K_n100_every10_seed1.extxyz"):
        assert (out / "data" / name).stat().st_size > 0  # the cached xTB sets
    assert (out / "shallow" / "shallow.pt").exists() and not (tmp_path / "runs").exists()
