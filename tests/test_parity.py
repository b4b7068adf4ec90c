"""``e3pot predict --plot/--metrics-json`` and ``e3pot.plots``: the PNG, per-config_type metrics,
missing references and missing matplotlib."""
import csv
import importlib
import json
import os
import re
import sys

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

import e3pot.plots
from e3pot.cli.predict import main
from e3pot.plots import error_stats, parity_figure, parity_plot, stats_by_type
from tests.trained_model import model_file_64, single_torch_thread  # noqa: F401  (fixtures)

PREDICT = importlib.import_module("e3pot.predict")  # the module; e3pot.predict is also a function
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# prediction − reference per config_type: energy per atom (eV/atom), every force component (eV/Å)
OFFSETS = {"molecule": (0.002, 0.010), "bulk": (-0.005, 0.030)}
TOL = 1e-6  # meV/atom, meV/Å


def structures():
    """Molecules and a periodic cell; the config_type of each is the key of OFFSETS it gets."""
    rng = np.random.default_rng(3)
    si = bulk("Si", "diamond", a=5.3)
    frames = [molecule("H2O"), molecule("CH4"), si, molecule("CH3CH2OH"), si.repeat((1, 1, 2))]
    for atoms in frames:
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return frames, ["molecule", "molecule", "bulk", "molecule", "bulk"]


@pytest.fixture(scope="module")
def labelled(model_file_64, tmp_path_factory):
    """A .traj (exact float64 labels) whose references are the CLI's own predictions minus the
    offsets of each frame's config_type, and the frames' types."""
    work = tmp_path_factory.mktemp("parity")
    frames, types = structures()
    bare, pred = str(work / "bare.traj"), str(work / "pred.traj")
    write(bare, frames)
    assert main([model_file_64, bare, "-o", pred, "--batch-size", "2", "--no-progress"]) == 0
    out = []
    for atoms, p, ctype in zip(read(bare, ":"), read(pred, ":"), types):
        de, df = OFFSETS[ctype]
        atoms.info["config_type"] = ctype
        atoms.calc = SinglePointCalculator(atoms, energy=p.get_potential_energy() - de * len(atoms),
                                           forces=p.get_forces() - df)
        out.append(atoms)
    path = str(work / "labelled.traj")
    write(path, out)
    return path, types


def run_cli(model, inputs, tmp_path, *extra):
    out = str(tmp_path / "out.extxyz")
    return main([model, *inputs, "-o", out, "--batch-size", "2", "--no-progress", *extra])


def test_png_is_written_and_readable(model_file_64, labelled, tmp_path, monkeypatch):
    from matplotlib.image import imread

    calls = []

    def spy(*args):
        calls.append(args)
        return parity_plot(*args)

    monkeypatch.setattr(e3pot.plots, "parity_plot", spy)
    png = str(tmp_path / "parity.png")
    assert run_cli(model_file_64, [labelled[0]], tmp_path, "--plot", png) == 0
    (_, e_pred, e_ref, f_pred, f_ref, e_types, f_types), = calls  # the points are coloured by config_type
    frames, types = read(labelled[0], ":"), labelled[1]
    assert list(e_types) == types
    assert list(f_types) == [t for a, t in zip(frames, types) for _ in range(3 * len(a))]
    np.testing.assert_allclose(e_ref, [a.get_potential_energy() / len(a) for a in frames], rtol=1e-14)
    with open(png, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    image = imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600, image.shape  # two panels side by side
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_per_type_metrics_equal_the_offsets(model_file_64, labelled, tmp_path, capsys):
    path, types = labelled
    metrics_path, table = str(tmp_path / "metrics.json"), str(tmp_path / "energies.csv")
    assert run_cli(model_file_64, [path], tmp_path, "--metrics-json", metrics_path, "--csv", table) == 0
    with open(metrics_path) as fh:
        metrics = json.load(fh)
    by_type = metrics["by_config_type"]
    assert list(by_type) == ["molecule", "bulk"]  # in order of first appearance
    for name, (de, df) in OFFSETS.items():
        m = by_type[name]
        assert m["n_structures"] == types.count(name)
        for key in ("mae", "rmse"):
            assert m["energy_per_atom"][key] == pytest.approx(1000 * abs(de), abs=TOL)
            assert m["forces"][key] == pytest.approx(1000 * abs(df), abs=TOL)
        assert m["energy_per_atom"]["mean"] == pytest.approx(1000 * de, abs=TOL)  # sign: prediction − reference
    # overall: the mean over structures (energy) and over force components
    frames = read(path, ":")
    e_atom = np.array([1000 * OFFSETS[t][0] for t in types])
    f_comp = np.concatenate([np.full(3 * len(a), 1000 * OFFSETS[t][1]) for a, t in zip(frames, types)])
    overall = metrics["overall"]
    assert overall["energy_per_atom"]["mae"] == pytest.approx(np.abs(e_atom).mean(), abs=TOL)
    assert overall["energy_per_atom"]["rmse"] == pytest.approx(np.sqrt((e_atom ** 2).mean()), abs=TOL)
    assert overall["forces"]["mae"] == pytest.approx(f_comp.mean(), abs=TOL)
    assert overall["forces"]["n"] == f_comp.size

    stdout = capsys.readouterr().out
    for name, (de, df) in OFFSETS.items():  # the printed table, to its 3 decimals
        row = re.search(rf"^\| {name}\s*\|\s*(\d+)\s*\|" + r"\s*([\d.]+)\s*\|" * 4 + "$", stdout, re.M)
        assert row, stdout
        assert int(row.group(1)) == types.count(name)
        assert [float(v) for v in row.group(2, 3, 4, 5)] == pytest.approx(
            [1000 * abs(de)] * 2 + [1000 * df] * 2, abs=1e-3)
    assert re.search(r"^\| \(all\)\s*\|\s*5\s*\|", stdout, re.M), stdout
    with open(table) as fh:
        assert [row["config_type"] for row in csv.DictReader(fh)] == types


def test_metrics_json_keys(model_file_64, tmp_path):
    """Forces only, no config_type: energies are null and there is no per-type section."""
    frames, _ = structures()
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, forces=np.zeros((len(atoms), 3)))
    path, metrics_path = str(tmp_path / "forces_only.traj"), str(tmp_path / "m.json")
    write(path, frames)
    assert run_cli(model_file_64, [path], tmp_path, "--metrics-json", metrics_path) == 0
    with open(metrics_path) as fh:
        metrics = json.load(fh)
    assert set(metrics) == {"units", "n_structures", "overall", "group_by", "by_config_type",
                            "n_left_out_nonfinite", "first_left_out_nonfinite"}
    assert metrics["n_left_out_nonfinite"] == 0 and metrics["first_left_out_nonfinite"] is None
    assert metrics["units"] == {"energy": "meV", "energy_per_atom": "meV/atom", "forces": "meV/Å"}
    assert metrics["n_structures"] == len(frames)
    assert metrics["overall"]["energy"] is None and metrics["overall"]["energy_per_atom"] is None
    assert set(metrics["overall"]["forces"]) == {"n", "mae", "rmse", "mean"}
    assert metrics["overall"]["forces"]["mae"] > 0
    assert metrics["by_config_type"] == {}


def refuse_to_predict(*args, **kwargs):
    raise AssertionError("predicted although the command should have stopped first")


@pytest.mark.parametrize("flag, name", [("--plot", "parity.png"), ("--metrics-json", "metrics.json")])
def test_no_references_is_an_error_before_predicting(model_file_64, tmp_path, capsys, monkeypatch, flag, name):
    frames, _ = structures()
    path = str(tmp_path / "bare.extxyz")
    write(path, frames)
    monkeypatch.setattr(PREDICT, "iter_predictions", refuse_to_predict)
    assert run_cli(model_file_64, [path], tmp_path, flag, str(tmp_path / name)) == 2
    err = capsys.readouterr().err
    assert err.startswith("e3pot predict: error: ") and err.count("\n") == 1, err
    assert f"{flag} needs reference labels" in err
    assert os.listdir(tmp_path) == ["bare.extxyz"]  # no PNG/JSON, no predictions, no partial files


def test_references_after_an_unlabelled_first_structure(model_file_64, tmp_path, capsys):
    frames, _ = structures()
    frames[-1].calc = SinglePointCalculator(frames[-1], energy=-1000.0)
    path, png = str(tmp_path / "late_label.traj"), str(tmp_path / "parity.png")
    write(path, frames)
    assert run_cli(model_file_64, [path], tmp_path, "--plot", png) == 0
    assert os.path.getsize(png) > 1000
    assert "no reference" not in capsys.readouterr().err


def test_missing_matplotlib_is_named(model_file_64, labelled, tmp_path, capsys, monkeypatch):
    for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    monkeypatch.setattr(PREDICT, "iter_predictions", refuse_to_predict)
    png = str(tmp_path / "parity.png")
    assert run_cli(model_file_64, [labelled[0]], tmp_path, "--plot", png) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not os.path.exists(png)


def test_plot_needs_png_extension(model_file_64, labelled, tmp_path, capsys):
    assert run_cli(model_file_64, [labelled[0]], tmp_path, "--plot", str(tmp_path / "parity.pdf")) == 2
    assert "ending in .png" in capsys.readouterr().err


# -- the library function, on plain arrays -------------------------------------------------------

def test_legend_has_one_entry_per_type_with_its_mae():
    ref = np.array([-3.0, -2.0, -1.0, -4.0])  # eV/atom
    pred = ref + np.array([0.001, -0.001, 0.004, 0.004])
    types = ["a", "a", "b", "b"]
    f_ref = np.linspace(-1, 1, 12)  # eV/Å
    fig = parity_figure(pred, ref, f_ref + 0.02, f_ref, types, ["a"] * 6 + ["b"] * 6)
    ax_e, ax_f = fig.axes
    labels = [t.get_text() for t in ax_e.get_legend().get_texts()]
    assert labels == ["a: MAE 1", "b: MAE 4", "all: MAE 2.5, RMSE 2.92", "y = x"]
    assert ax_e.get_legend().get_title().get_text() == "errors in meV/atom"
    assert ax_f.get_legend().get_title().get_text() == "errors in meV/Å"
    assert [t.get_text() for t in ax_f.get_legend().get_texts()][:2] == ["a: MAE 20", "b: MAE 20"]
    colours = [line.get_color() for line in ax_e.lines[:2]]
    assert colours[0] != colours[1]

    untyped = parity_figure(pred, ref, np.zeros(0), np.zeros(0))
    assert [t.get_text() for t in untyped.axes[0].get_legend().get_texts()] == ["MAE 2.5, RMSE 2.92", "y = x"]
    assert untyped.axes[1].get_legend() is None  # the empty force panel says so instead
    assert "no reference force components" in [t.get_text() for t in untyped.axes[1].texts]


def test_error_stats():
    s = error_stats(np.array([1.0, 2.0]), np.array([0.0, 4.0]), scale=1000.0)
    assert s == {"n": 2, "mae": 1500.0, "rmse": pytest.approx(1000 * np.sqrt(2.5)), "mean": -500.0}
    assert error_stats(np.zeros(0), np.zeros(0)) is None
    by_type = stats_by_type(np.array([1.0, 2.0, 3.0]), np.zeros(3), ["x", "y", "x"])
    assert list(by_type) == ["x", "y"] and by_type["x"]["mae"] == 2.0 and by_type["y"]["n"] == 1
    with pytest.raises(ValueError, match="one type per value"):
        stats_by_type(np.zeros(3), np.zeros(3), ["x"])


def test_plot_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "parity.png"
    path.write_bytes(b"an older plot")

    def broken_savefig(self, fh, **kwargs):
        fh.write(PNG_MAGIC)  # a start, then a failure
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        parity_plot(str(path), np.zeros(2), np.ones(2), np.zeros(3), np.ones(3))
    assert path.read_bytes() == b"an older plot"
    assert os.listdir(tmp_path) == ["parity.png"]


def test_group_by_another_info_key(model_file_64, tmp_path, capsys):
    """--group-by picks the info key that groups the metrics (here the example data's ``molecule``)."""
    model = model_file_64
    frames = read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                               "example.extxyz"), "::50")
    data = str(tmp_path / "frames.extxyz")
    write(data, frames)
    metrics = str(tmp_path / "metrics.json")
    rc = main([model, data, "-o", str(tmp_path / "out.extxyz"), "--group-by", "molecule",
                     "--metrics-json", metrics, "--no-progress"])
    assert rc == 0
    out = json.load(open(metrics))
    assert out["group_by"] == "molecule"
    assert set(out["by_config_type"]) == {a.info["molecule"] for a in frames}
    assert sum(m["n_structures"] for m in out["by_config_type"].values()) == len(frames)
    assert "By molecule" in capsys.readouterr().out
