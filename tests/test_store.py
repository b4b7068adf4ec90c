"""The on-disk store: `e3pot preprocess`, lazy reading, statistics, interrupted writes, training from it."""
import os

import numpy as np
import pytest
import torch
from ase.io import read, write

from e3pot.cli.preprocess import main as preprocess_main
from e3pot.data.dataset import GraphDataset, StoreDataset
from e3pot.data.io import LabelSpec, read_frames
from e3pot.data.neighbors import SpeciesMap
from e3pot.data.store import FrameStore, is_store, write_store
from e3pot.train import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "data", "example.extxyz")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    path = str(folder / "part.extxyz")
    write(path, read(EXAMPLE, ":40"))
    store = str(folder / "part.store")
    assert preprocess_main([path, "-o", store, "--r-max", "4.0", "--no-progress"]) == 0
    return path, store


def test_store_holds_the_frames(data):
    path, store_path = data
    store = FrameStore(store_path)
    frames = read_frames(path)
    assert len(store) == len(frames) == 40
    for k in (0, 17, 39):
        a, b = store.frame(k), frames[k]
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)
        assert a.energy == b.energy and a.stress is None
        assert f"{path}, frame {k}" in a.source


def test_statistics_from_store_equal_in_memory(data):
    path, store_path = data
    store = FrameStore(store_path)
    species = SpeciesMap(store.elements)
    idx = np.arange(3, 40)
    lazy = StoreDataset(store, idx, species, 4.0)
    memory = GraphDataset(read_frames(path)[3:], species, 4.0, progress=False)
    n = len(store.elements)
    np.testing.assert_allclose(stats.fit_energy_shift(lazy, n), stats.fit_energy_shift(memory, n), rtol=1e-10)
    assert stats.force_rms(lazy) == pytest.approx(stats.force_rms(memory), rel=1e-12)
    assert stats.avg_num_neighbors(lazy) == pytest.approx(stats.avg_num_neighbors(memory), rel=1e-12)
    # at another cutoff the neighbours are counted on the frames themselves
    assert stats.avg_num_neighbors(StoreDataset(store, idx, species, 3.0)) == pytest.approx(
        stats.avg_num_neighbors(GraphDataset(read_frames(path)[3:], species, 3.0, progress=False)), rel=1e-12)
    g1, l1, _ = lazy[5]
    g2, l2, _ = memory[5]
    assert torch.equal(g1.edge_index, g2.edge_index) and torch.equal(l1.forces, l2.forces)


def test_interrupted_preprocess_leaves_nothing(tmp_path, capsys):
    frames = read(EXAMPLE, ":5")
    frames[3].positions[0, 0] = np.nan
    bad = str(tmp_path / "bad.extxyz")
    write(bad, frames)
    out = str(tmp_path / "out.store")
    assert preprocess_main([bad, "-o", out, "--no-progress"]) == 2
    assert "frame 3" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["bad.extxyz"]  # no store, no partial folder
    # an existing store is kept unless --overwrite, and replaced only by a complete one
    good = str(tmp_path / "good.extxyz")
    write(good, read(EXAMPLE, ":5"))
    assert preprocess_main([good, "-o", out, "--no-progress"]) == 0
    assert preprocess_main([good, "-o", out, "--no-progress"]) == 2
    assert preprocess_main([bad, "-o", out, "--overwrite", "--no-progress"]) == 2
    assert is_store(out) and len(FrameStore(out)) == 5


def test_store_with_units(tmp_path):
    frames = read(EXAMPLE, ":3")
    path = str(tmp_path / "x.extxyz")
    write(path, frames)
    store = FrameStore(write_store([path], str(tmp_path / "kcal.store"), LabelSpec(energy_unit="kcal/mol"), 4.0,
                                   progress=False))
    assert store.frame(1).energy == pytest.approx(frames[1].get_potential_energy() * 0.0433641, rel=1e-5)


@pytest.mark.slow
def test_training_from_a_store_equals_training_from_the_file(data, tmp_path):
    import subprocess
    import sys

    import e3pot

    path, store = data
    common = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "example.yaml"),
              "--model.l_max", "1", "--model.num_features", "4", "--model.num_layers", "1", "--model.radial_hidden", "8",
              "--model.dtype", "float64", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for source, out, workers in ((path, "file.pt", "1"), (store, "store.pt", "1")):  # workers draw from the RNG: same for both
        run = subprocess.run(common + ["--data.train_file", source, "--data.num_workers", workers, "--output", out],
                             cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    a = e3pot.load_model(str(tmp_path / "file.pt")).state_dict()
    b = e3pot.load_model(str(tmp_path / "store.pt")).state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-9, atol=1e-12, msg=name)
