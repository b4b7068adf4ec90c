"""``e3pot predict`` and the files around it: inputs and bystanders are never touched, existing
outputs are replaced only with --overwrite, outputs appear together and complete or not at all,
non-finite reference labels, --group-by keys that no structure has, and the progress bar's total."""
import importlib
import json
import os
import re

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from e3pot.cli import predict as cli
from e3pot.cli.predict import main
from e3pot.data.io import count_frames
from e3pot.files import OVERWRITE_HELP
from e3pot.plots import parity_plot
from tests.trained_model import model_file_64, single_torch_thread  # noqa: F401  (fixtures)

PREDICT = importlib.import_module("e3pot.predict")  # the module; e3pot.predict is also a function
RUNTIME = importlib.import_module("e3pot.model.runtime")


def labelled_frames(n=6, nitrogen_at=None):
    """Small molecules with reference energies and forces (and a config_type); an NH3 (an element
    the test model does not know) at ``nitrogen_at``."""
    rng = np.random.default_rng(7)
    frames = []
    for k in range(n):
        atoms = molecule("NH3" if k == nitrogen_at else ("H2O", "CH4", "CH3OH")[k % 3])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["config_type"] = "even" if k % 2 == 0 else "odd"
        atoms.info["molecule"] = atoms.get_chemical_formula()
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 * len(atoms) + 0.1 * k,
                                           forces=rng.normal(scale=0.3, size=(len(atoms), 3)))
        frames.append(atoms)
    return frames


def run(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line_error(rc, err):
    assert rc == 2
    assert err.startswith("e3pot predict: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def refuse(*args, **kwargs):
    raise AssertionError("the model was loaded or run although the command should have stopped first")


def snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


# -- 1. inputs named like the temporary files of an output -------------------------------------

@pytest.mark.parametrize("option, output, input_name", [
    ("-o", "data.extxyz", "data.extxyz.partial"),
    ("--csv", "c.csv", "c.csv.partial"),
    ("--metrics-json", "m.json", "m.json.partial"),
    ("--plot", "p.png", "p.png.partial"),
])
def test_an_input_named_like_a_temporary_output_is_left_alone(model_file_64, tmp_path, capsys, option, output,
                                                              input_name):
    source = tmp_path / input_name  # an ASE trajectory (ASE knows it by its contents) named like a temporary file
    write(str(source), labelled_frames(4), format="traj")
    before = source.read_bytes()
    argv = [model_file_64, str(source), "--no-progress"]
    argv += ["-o", str(tmp_path / output)] if option == "-o" else ["-o", str(tmp_path / "out.extxyz"),
                                                                  option, str(tmp_path / output)]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert source.read_bytes() == before
    assert (tmp_path / output).stat().st_size > 0
    assert len(read(str(source), ":")) == 4
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left


# -- 2. existing outputs and --overwrite ---------------------------------------------------------

@pytest.mark.parametrize("option, name", [("-o", "out.extxyz"), ("--csv", "out.csv"),
                                          ("--metrics-json", "m.json"), ("--plot", "parity.png")])
def test_an_existing_output_is_refused_before_the_model_is_loaded(model_file_64, tmp_path, capsys, monkeypatch,
                                                                  option, name):
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(3))
    target = tmp_path / name
    target.write_bytes(b"an older file")
    argv = [model_file_64, data, "--no-progress"]
    argv += ["-o", str(target)] if option == "-o" else ["-o", str(tmp_path / "out.extxyz"), option, str(target)]
    with monkeypatch.context() as m:
        m.setattr(RUNTIME, "load_any", refuse)
        m.setattr(PREDICT, "iter_predictions", refuse)
        msg = one_line_error(*run(argv, capsys)[::2])
    assert msg.endswith(f"{option} {target} exists; pass --overwrite to replace it, or choose another name")
    assert target.read_bytes() == b"an older file"
    assert sorted(os.listdir(tmp_path)) == sorted(["data.extxyz", name])

    rc, out, err = run(argv + ["--overwrite"], capsys)
    assert rc == 0, err
    assert target.read_bytes() != b"an older file" and target.stat().st_size > 0


def test_writing_twice_to_the_same_output_needs_overwrite(model_file_64, tmp_path, capsys):
    data, out = str(tmp_path / "data.extxyz"), str(tmp_path / "out.extxyz")
    write(data, labelled_frames(2))
    assert run([model_file_64, data, "-o", out, "--no-progress"], capsys)[0] == 0
    first = open(out, "rb").read()
    msg = one_line_error(*run([model_file_64, data, "-o", out, "--no-progress"], capsys)[::2])
    assert f"-o {out} exists; pass --overwrite" in msg
    assert run([model_file_64, data, "-o", out, "--no-progress", "--overwrite"], capsys)[0] == 0
    assert open(out, "rb").read() == first


def test_help_states_the_rule_for_outputs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and " ".join(OVERWRITE_HELP.split()) in text
    assert "an output is never one of the inputs" in text
    assert "replaced only with --overwrite" in text
    assert "temporary file in its own folder" in text


@pytest.mark.parametrize("extra, message", [
    (["--csv", "{d}/data.extxyz"], "--csv {d}/data.extxyz is also an input ({d}/data.extxyz)"),
    (["--metrics-json", "{model}"], "--metrics-json {model} is also an input ({model})"),
    (["--csv", "{d}/same.csv", "--metrics-json", "{d}/same.csv"],
     "--csv {d}/same.csv and --metrics-json {d}/same.csv are the same file"),
    (["--csv", "{d}"], "--csv {d} is a folder"),
    (["--plot", "{d}/missing/p.png"], "--plot {d}/missing/p.png: the folder {d}/missing does not exist"),
])
def test_bad_output_paths_are_refused_through_the_rule(model_file_64, tmp_path, capsys, monkeypatch, extra,
                                                       message):
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(2))
    monkeypatch.setattr(RUNTIME, "load_any", refuse)
    fill = dict(d=str(tmp_path), model=model_file_64)
    argv = [model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--no-progress",
            *(e.format(**fill) for e in extra)]
    msg = one_line_error(*run(argv, capsys)[::2])
    assert message.format(**fill) in msg
    assert os.listdir(tmp_path) == ["data.extxyz"]


def test_the_same_string_for_two_outputs_is_refused(model_file_64, tmp_path, capsys, monkeypatch):
    data, same = str(tmp_path / "data.extxyz"), str(tmp_path / "same.csv")
    write(data, labelled_frames(2))
    monkeypatch.setattr(RUNTIME, "load_any", refuse)
    argv = [model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--csv", same, "--metrics-json", same]
    assert "are the same file" in one_line_error(*run(argv, capsys)[::2])


# -- 3. non-finite reference labels --------------------------------------------------------------

def nonfinite_file(tmp_path):
    frames = labelled_frames(6)
    frames[1].calc.results["energy"] = float("nan")
    forces = frames[4].calc.results["forces"].copy()
    forces[0, 2] = np.inf
    frames[4].calc.results["forces"] = forces
    path = str(tmp_path / "labels.extxyz")
    write(path, frames)
    finite = str(tmp_path / "finite.extxyz")
    write(finite, [a for k, a in enumerate(frames) if k not in (1, 4)])
    return path, finite


def strict_json(path):
    def refuse_constant(name):
        raise ValueError(f"{name} in the JSON file")

    with open(path) as fh:
        return json.load(fh, parse_constant=refuse_constant)


def test_nonfinite_reference_labels_are_left_out_and_counted(model_file_64, tmp_path, capsys):
    path, finite = nonfinite_file(tmp_path)
    metrics, png = str(tmp_path / "m.json"), str(tmp_path / "parity.png")
    rc, out, err = run([model_file_64, path, "-o", str(tmp_path / "out.extxyz"), "--metrics-json", metrics,
                        "--plot", png, "--csv", str(tmp_path / "out.csv"), "--no-progress"], capsys)
    assert rc == 0, err
    assert not re.search(r"\|\s*[-+]?(nan|inf)\s*\|", out, re.I), out  # no NaN in the tables
    assert (f"left out of the error metrics: 2 structures with a NaN or infinite reference energy or forces "
            f"(the first: {path}, frame 1 (energy))") in out
    got = strict_json(metrics)
    assert got["n_left_out_nonfinite"] == 2
    assert got["first_left_out_nonfinite"] == f"{path}, frame 1 (energy)"
    assert got["n_structures"] == 4
    assert os.path.getsize(png) > 1000
    assert len(read(str(tmp_path / "out.extxyz"), ":")) == 6  # every structure is still predicted

    # the metrics are those of the finite structures alone
    expected = str(tmp_path / "expected.json")
    assert run([model_file_64, finite, "-o", str(tmp_path / "finite_out.extxyz"), "--metrics-json", expected,
                "--no-progress"], capsys)[0] == 0
    want = strict_json(expected)
    assert want["n_left_out_nonfinite"] == 0
    assert flat(got["overall"]) == pytest.approx(flat(want["overall"]), rel=1e-12)
    assert flat(got["by_config_type"]) == pytest.approx(flat(want["by_config_type"]), rel=1e-12)


def flat(tree, prefix=""):
    """A nested dict of numbers as one flat dict (for pytest.approx)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_only_nonfinite_labels_are_no_references(model_file_64, tmp_path, capsys, monkeypatch):
    frames = labelled_frames(2)
    for atoms in frames:
        atoms.calc.results["energy"] = float("nan")
        atoms.calc.results["forces"][:] = np.nan
    path = str(tmp_path / "nan.extxyz")
    write(path, frames)
    monkeypatch.setattr(RUNTIME, "load_any", refuse)
    msg = one_line_error(*run([model_file_64, path, "-o", str(tmp_path / "out.extxyz"), "--plot",
                               str(tmp_path / "p.png"), "--no-progress"], capsys)[::2])
    assert "--plot needs reference labels, but no structure in the inputs has a finite reference energy" in msg
    assert os.listdir(tmp_path) == ["nan.extxyz"]


def test_parity_plot_leaves_out_nonfinite_points(tmp_path):
    png = str(tmp_path / "p.png")
    parity_plot(png, np.array([1.0, np.nan, 2.0]), np.array([1.1, 0.5, np.inf]),
                np.array([np.nan, np.nan]), np.array([0.0, 1.0]), ["a", "b", "a"], ["a", "b"])
    assert os.path.getsize(png) > 1000
    assert os.listdir(tmp_path) == ["p.png"]


def test_a_late_failure_leaves_no_output(model_file_64, tmp_path, capsys, monkeypatch):
    """The plot is made before any output is moved into place: if it fails, none of them appears."""
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(3))

    def broken(*args, **kwargs):
        raise ValueError("the plot failed")

    monkeypatch.setattr(importlib.import_module("e3pot.plots"), "parity_plot", broken)
    msg = one_line_error(*run([model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--csv",
                               str(tmp_path / "out.csv"), "--metrics-json", str(tmp_path / "m.json"),
                               "--plot", str(tmp_path / "p.png"), "--no-progress"], capsys)[::2])
    assert msg.endswith("the plot failed")
    assert os.listdir(tmp_path) == ["data.extxyz"]


# -- 4. --group-by --------------------------------------------------------------------------------

def test_group_by_a_key_no_structure_has_is_refused(model_file_64, tmp_path, capsys, monkeypatch):
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(3))
    monkeypatch.setattr(RUNTIME, "load_any", refuse)
    argv = [model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--csv", str(tmp_path / "c.csv"),
            "--group-by", "nosuchkey", "--no-progress"]
    msg = one_line_error(*run(argv, capsys)[::2])
    assert "--group-by nosuchkey: no input structure has the info key 'nosuchkey'" in msg
    assert "'config_type'" in msg and "'molecule'" in msg  # keys the structures do have
    assert os.listdir(tmp_path) == ["data.extxyz"]


def test_group_by_a_key_of_a_later_structure_is_accepted(model_file_64, tmp_path, capsys):
    frames = labelled_frames(4)
    for atoms in frames[:3]:
        del atoms.info["molecule"]
    data = str(tmp_path / "data.extxyz")
    write(data, frames)
    rc, out, err = run([model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--group-by", "molecule",
                        "--no-progress"], capsys)
    assert rc == 0, err
    assert "By molecule" in out


def test_the_default_group_key_may_be_absent(model_file_64, tmp_path, capsys):
    frames = labelled_frames(2)
    for atoms in frames:
        del atoms.info["config_type"]
    data = str(tmp_path / "data.extxyz")
    write(data, frames)
    rc, out, err = run([model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--no-progress"], capsys)
    assert rc == 0, err
    assert "By config_type" not in out


# -- 5. a folder where no file can be made --------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_an_unwritable_folder_names_the_users_path(model_file_64, tmp_path, capsys, monkeypatch):
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(2))
    monkeypatch.setattr(RUNTIME, "load_any", refuse)
    msg = one_line_error(*run([model_file_64, data, "-o", "/proc/x.extxyz", "--no-progress"], capsys)[::2])
    assert "/proc/x.extxyz" in msg
    assert ".partial" not in msg and "/proc/." not in msg  # no temporary name the user never gave


def test_an_unwritable_folder_for_the_csv(model_file_64, tmp_path, capsys, monkeypatch):
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(2))
    monkeypatch.setattr(RUNTIME, "load_any", refuse)
    if not os.path.isdir("/proc"):
        pytest.skip("needs /proc")
    msg = one_line_error(*run([model_file_64, data, "-o", str(tmp_path / "out.extxyz"), "--csv", "/proc/x.csv",
                               "--no-progress"], capsys)[::2])
    assert "/proc/x.csv" in msg and ".partial" not in msg
    assert os.listdir(tmp_path) == ["data.extxyz"]


# -- 6. the progress bar's total ------------------------------------------------------------------

def test_count_frames(tmp_path):
    frames = labelled_frames(5) + [bulk("Si", "diamond", a=5.4)]
    ext, xyz, traj, db = (str(tmp_path / f"f.{e}") for e in ("extxyz", "xyz", "traj", "db"))
    write(ext, frames)
    write(xyz, frames[:2], format="extxyz")
    with open(xyz, "a") as fh:
        fh.write("\n\n")  # blank lines at the end
    write(traj, frames[:3])
    write(db, frames[:4])
    assert count_frames([ext]) == 6
    assert count_frames([xyz]) == 2
    assert count_frames([traj]) == 3
    assert count_frames([db]) == 4
    assert count_frames([ext, xyz, traj, db]) == 15
    garbage = str(tmp_path / "garbage.extxyz")
    with open(garbage, "w") as fh:
        fh.write("this is not\na structure file\n")
    assert count_frames([garbage]) is None
    cut = str(tmp_path / "cut.extxyz")
    with open(ext) as src, open(cut, "w") as dst:
        dst.write("".join(src.readlines()[:-2]))
    assert count_frames([cut]) is None
    assert count_frames([ext, str(tmp_path / "other.cif")]) is None
    assert count_frames([str(tmp_path / "nowhere.extxyz")]) is None


def test_the_progress_bar_has_a_total(model_file_64, tmp_path, capsys, monkeypatch):
    data = str(tmp_path / "data.extxyz")
    write(data, labelled_frames(5))
    seen = []
    real = cli.tqdm

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "tqdm", spy)
    rc, out, err = run([model_file_64, data, data, "-o", str(tmp_path / "out.extxyz")], capsys)
    assert rc == 0, err
    assert seen[0]["total"] == 10 and not seen[0]["disable"]
    assert run([model_file_64, data, "-o", str(tmp_path / "quiet.extxyz"), "--no-progress"], capsys)[0] == 0
    assert seen[1]["disable"]


# -- canaries: files next to every input and output are never touched ----------------------------

OUTPUTS = ["out.extxyz", "out.csv", "m.json", "parity.png"]
CANARIES = ["data.extxyz.partial", ".data.extxyz.partial", *(f"{o}.partial" for o in OUTPUTS),
            *(f".{o}.partial" for o in OUTPUTS), *(f".{o}.canary.partial" for o in OUTPUTS),
            *(f".{o}.abcd1234.partial" for o in OUTPUTS), *(f"{o}.tmp" for o in OUTPUTS)]


def canary_folder(tmp_path, nitrogen_at=None, existing=False):
    """Inputs, canary files (each with its own bytes) and, with ``existing``, older outputs."""
    write(str(tmp_path / "data.extxyz"), labelled_frames(6, nitrogen_at))
    for k, name in enumerate(CANARIES):
        (tmp_path / name).write_bytes(f"canary {k}: {name}\n".encode())
    if existing:
        for name in OUTPUTS:
            (tmp_path / name).write_bytes(f"older {name}\n".encode())
    return snapshot(tmp_path)


def predict_argv(model, tmp_path, *extra):
    d = str(tmp_path)
    return [model, f"{d}/data.extxyz", "-o", f"{d}/out.extxyz", "--csv", f"{d}/out.csv",
            "--metrics-json", f"{d}/m.json", "--plot", f"{d}/parity.png", "--batch-size", "1", "--no-progress",
            *extra]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_canaries_survive_a_successful_run(model_file_64, tmp_path, capsys, existing):
    before = canary_folder(tmp_path, existing=existing)
    rc, out, err = run(predict_argv(model_file_64, tmp_path, *(["--overwrite"] if existing else [])), capsys)
    assert rc == 0, err
    after = snapshot(tmp_path)
    assert set(after) == set(before) | set(OUTPUTS)  # no temporary file left
    for name in [*CANARIES, "data.extxyz"]:
        assert after[name] == before[name], name
    for name in OUTPUTS:
        assert after[name] and not after[name].startswith(b"older"), name
    assert len(read(str(tmp_path / "out.extxyz"), ":")) == 6
    assert strict_json(str(tmp_path / "m.json"))["n_structures"] == 6


@pytest.mark.parametrize("how", ["bad frame midway", "output clash", "existing output", "late failure"])
def test_canaries_survive_a_failed_run(model_file_64, tmp_path, capsys, monkeypatch, how):
    extra = ["--overwrite"]
    if how == "bad frame midway":
        before = canary_folder(tmp_path, nitrogen_at=3, existing=True)
    elif how == "output clash":
        before = canary_folder(tmp_path, existing=True)
        extra += ["--csv", str(tmp_path / "data.extxyz.partial")]  # a canary as an output: still a new name
        extra += ["--metrics-json", str(tmp_path / "out.extxyz")]
    elif how == "existing output":
        before = canary_folder(tmp_path, existing=True)
        extra = []
    else:
        before = canary_folder(tmp_path, existing=True)

        def broken(*args, **kwargs):
            raise ValueError("the plot failed")

        monkeypatch.setattr(importlib.import_module("e3pot.plots"), "parity_plot", broken)
    msg = one_line_error(*run(predict_argv(model_file_64, tmp_path, *extra), capsys)[::2])
    assert {"bad frame midway": f"{tmp_path}/data.extxyz, frame 3",
            "output clash": "are the same file",
            "existing output": "exists; pass --overwrite",
            "late failure": "the plot failed"}[how] in msg
    assert snapshot(tmp_path) == before  # every file as it was, nothing added
