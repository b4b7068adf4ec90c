"""Writing and reading stores safely: `preprocess --overwrite` replaces only a store, never an input, and
removes nothing but its own temporary folders; a damaged store is named in one line; and the canary test:
export and preprocess, succeeding and failing, leave every file around their inputs and outputs as it was."""
import json
import os
import re

import numpy as np
import pytest
import torch
from ase.io import read, write

from e3pot.cli.export import main as export_main
from e3pot.cli.preprocess import main as preprocess_main
from e3pot.data.io import DataError
from e3pot.data.store import FrameStore, StoreError, has_store_marker, is_store
from e3pot.files import OVERWRITE_HELP
from e3pot.model.export import is_torchscript
from tests.trained_model import model_file_64, single_torch_thread  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "data", "example.extxyz")


def one_line_error(err: str, command: str) -> str:
    """The single error line of a failed command (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"e3pot {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder) -> dict:
    """Every file under ``folder``: relative path -> bytes (folders as None)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


def extxyz(path, frames=":5", nan_frame=None) -> str:
    atoms = read(EXAMPLE, frames)
    if nan_frame is not None:
        atoms[nan_frame].positions[0, 0] = np.nan
    write(str(path), atoms)
    return str(path)


# -- preprocess --overwrite replaces only a store ------------------------------------------------------

def test_overwrite_refuses_an_ordinary_folder(tmp_path, capsys):
    data = extxyz(tmp_path / "in.extxyz")
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("my work")
    before = snapshot(tmp_path)
    assert preprocess_main([data, "-o", str(folder), "--overwrite", "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err, "preprocess")
    assert f"-o {folder} exists and is a folder, not an e3pot store" in line
    assert "--overwrite replaces only a store made by e3pot preprocess" in line
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_folder_holding_an_input(tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    data = extxyz(folder / "in.extxyz")
    before = snapshot(tmp_path)
    assert preprocess_main([data, "-o", str(folder), "--overwrite", "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err, "preprocess")
    assert f"-o {folder} holds the input {data}; replacing the store would delete it" in line
    assert snapshot(tmp_path) == before
    # a store whose folder holds an input (here: its own meta.json given as input) is not replaced either
    store = str(tmp_path / "out.store")
    assert preprocess_main([data, "-o", store, "--no-progress"]) == 0
    before = snapshot(tmp_path)
    inside = os.path.join(store, "meta.json")
    assert preprocess_main([data, inside, "-o", store, "--overwrite", "--no-progress"]) == 2
    assert f"-o {store} holds the input {inside}" in one_line_error(capsys.readouterr().err, "preprocess")
    assert snapshot(tmp_path) == before


def test_output_is_never_an_input(tmp_path, capsys):
    data = extxyz(tmp_path / "in.extxyz")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert preprocess_main([data, "-o", data, "--no-progress", *extra]) == 2
        assert f"-o {data} is also an input ({data})" in one_line_error(capsys.readouterr().err, "preprocess")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_file_and_a_store_without_its_marker(tmp_path, capsys):
    data = extxyz(tmp_path / "in.extxyz")
    plain = tmp_path / "plain.txt"
    plain.write_text("keep")
    fake = tmp_path / "fake.store"
    fake.mkdir()
    (fake / "meta.json").write_text(json.dumps({"format": "something else"}))
    before = snapshot(tmp_path)
    assert preprocess_main([data, "-o", str(plain), "--overwrite", "--no-progress"]) == 2
    assert "exists and is a file, not an e3pot store" in one_line_error(capsys.readouterr().err, "preprocess")
    assert preprocess_main([data, "-o", str(fake), "--overwrite", "--no-progress"]) == 2
    assert "exists and is a folder, not an e3pot store" in one_line_error(capsys.readouterr().err, "preprocess")
    assert snapshot(tmp_path) == before
    assert is_store(str(fake)) and not has_store_marker(str(fake))


def test_overwrite_replaces_a_store_and_leaves_no_temporary_folder(tmp_path, capsys):
    small, large = extxyz(tmp_path / "small.extxyz", ":3"), extxyz(tmp_path / "large.extxyz", ":7")
    store = str(tmp_path / "out.store")
    assert preprocess_main([small, "-o", store, "--no-progress"]) == 0
    assert preprocess_main([large, "-o", store, "--no-progress"]) == 2
    assert f"-o {store} exists; pass --overwrite to replace it" in one_line_error(capsys.readouterr().err, "preprocess")
    assert preprocess_main([large, "-o", store, "--overwrite", "--no-progress"]) == 0
    assert len(FrameStore(store)) == 7
    assert sorted(os.listdir(tmp_path)) == ["large.extxyz", "out.store", "small.extxyz"]


def test_temporary_store_folders_have_names_of_their_own(tmp_path):
    """The names the store writer once used for its temporary folders (``STORE.partial-PID``,
    ``STORE.old-PID``) may be a user's folders: they are never touched."""
    data = extxyz(tmp_path / "in.extxyz")
    store = str(tmp_path / "out.store")
    for name in (f"out.store.partial-{os.getpid()}", f"out.store.old-{os.getpid()}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    before = snapshot(tmp_path)
    assert preprocess_main([data, "-o", store, "--no-progress"]) == 0
    assert preprocess_main([data, "-o", store, "--no-progress", "--overwrite"]) == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out.store" + os.sep) and k != "out.store"} == before


def test_empty_input_draws_no_progress_bar(tmp_path, capsys):
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    assert preprocess_main([str(empty), "-o", str(tmp_path / "out.store")]) == 2
    err = capsys.readouterr().err
    assert "preprocessing" not in err  # no bar for an input without frames (it was drawn twice)
    assert "contains no structures" in one_line_error(err, "preprocess")
    assert os.listdir(tmp_path) == ["empty.extxyz"]
    data = extxyz(tmp_path / "in.extxyz", ":3")
    assert preprocess_main([data, "-o", str(tmp_path / "out.store")]) == 0
    assert "preprocessing" in capsys.readouterr().err


@pytest.mark.parametrize("command", [export_main, preprocess_main])
def test_help_states_the_rule(command, capsys):
    with pytest.raises(SystemExit):
        command(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and " ".join(OVERWRITE_HELP.split()) in text


# -- a damaged store is named in one line ---------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    data = extxyz(tmp_path / "in.extxyz", ":6")
    path = str(tmp_path / "data.store")
    assert preprocess_main([data, "-o", path, "--no-progress"]) == 0
    return path


def test_broken_meta_json(store):
    meta = os.path.join(store, "meta.json")
    with open(meta, "r+") as fh:
        fh.truncate(40)
    with pytest.raises(StoreError, match=re.escape(f"store {store}: {meta} is damaged (")) as info:
        FrameStore(store)
    assert isinstance(info.value, DataError) and "\n" not in str(info.value)


def test_truncated_array_file(store):
    positions = os.path.join(store, "positions.bin")
    size = os.path.getsize(positions)
    with open(positions, "r+b") as fh:
        fh.truncate(size - 24)
    message = (f"store {store}: {positions} has {size - 24} bytes, but meta.json (6 frames, "
               f"{size // 24} atoms) implies {size} bytes; the store is damaged or incomplete")
    with pytest.raises(StoreError, match=re.escape(message)):
        FrameStore(store)
    os.remove(positions)
    with pytest.raises(StoreError, match=re.escape(f"store {store}: {positions} is missing")):
        FrameStore(store)


def poison(store: str, frame: int) -> None:
    """NaN in the positions of ``frame`` of ``store``."""
    offsets = np.fromfile(os.path.join(store, "offsets.bin"), dtype=np.int64)
    positions = np.memmap(os.path.join(store, "positions.bin"), dtype=np.float64, mode="r+").reshape(-1, 3)
    positions[offsets[frame] + 1, 2] = np.nan
    positions.flush()
    del positions


def test_nan_positions_are_named_with_their_frame(store, tmp_path):
    poison(store, 4)
    reader = FrameStore(store)
    reader.frame(3)  # the others read as before
    positions = os.path.join(store, "positions.bin")
    message = (f"store {store}: {positions} holds non-finite positions (NaN or infinite) for frame 4 "
               f"(from {tmp_path / 'in.extxyz'}, frame 4); the store is damaged")
    with pytest.raises(StoreError, match=re.escape(message)):
        reader.frame(4)


def test_nan_positions_in_a_dataloader_worker_are_one_line(store):
    from torch.utils.data import DataLoader

    from e3pot.data.dataset import StoreDataset, collate_batch
    from e3pot.data.neighbors import SpeciesMap

    poison(store, 2)
    reader = FrameStore(store)
    dataset = StoreDataset(reader, np.arange(len(reader)), SpeciesMap(reader.elements), 4.0)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate_batch)
    with pytest.raises(DataError) as info:
        list(loader)
    text = str(info.value)
    assert "\n" not in text and "Traceback" not in text and "worker" not in text, text
    assert text.startswith(f"store {store}: {os.path.join(store, 'positions.bin')} holds non-finite positions") and \
        "for frame 2" in text


@pytest.mark.slow
def test_training_from_a_damaged_store_says_so_in_one_line(store, tmp_path, capsys, monkeypatch):
    from e3pot.train.cli import run

    for frame in range(6):
        poison(store, frame)
    monkeypatch.chdir(tmp_path)
    rc = run(["--config", os.path.join(ROOT, "configs", "example.yaml"), "--data.train_file", store,
              "--data.num_workers", "1", "--trainer.max_epochs", "1", "--model.l_max", "0", "--model.num_features", "4",
              "--model.num_layers", "1", "--model.radial_hidden", "8", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false", "--output", str(tmp_path / "m.pt")], prog="e3pot train")
    assert rc == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err and "worker process" not in err, err
    assert errors[0].startswith(f"e3pot train: error: store {store}: {os.path.join(store, 'positions.bin')} holds "
                                "non-finite positions (NaN or infinite) for frame ")
    assert not os.path.exists(tmp_path / "m.pt")


# -- the canary test --------------------------------------------------------------------------------

CANARIES = ["out.pt.tmp", ".out.pt.partial", "out.pt.partial-1", ".out.pt.tmp", "model.pt.tmp", ".model.pt.partial",
            f"out.store.partial-{os.getpid()}/keep", f"out.store.old-{os.getpid()}/keep", ".out.store.partial/keep",
            "in.extxyz.tmp", "sibling/keep.txt", "sibling/out.pt"]


def plant(folder) -> dict:
    for name in CANARIES:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"canary {name}")
    return snapshot(folder)


def test_canaries(tmp_path, model_file_64, monkeypatch, capsys):
    """Each command, once succeeding and once failing (before and while writing): every file next to its
    inputs and outputs stays as it was, the failed output keeps what it held, and no temporary file stays."""
    work = tmp_path
    model = str(work / "model.pt")
    with open(model_file_64, "rb") as src, open(model, "wb") as dst:
        dst.write(src.read())
    data = extxyz(work / "in.extxyz", ":4")
    bad = extxyz(work / "bad.extxyz", ":4", nan_frame=2)
    out_pt, out_store = str(work / "out.pt"), str(work / "out.store")
    os.makedirs(out_store)
    (work / "out.store" / "inside.txt").write_text("a folder of the user's where a store was asked for")
    base = plant(work)
    outputs = ("out.pt", "out.store")

    def unchanged(before):
        after = snapshot(work)
        for name, content in before.items():
            if name.split(os.sep)[0] not in outputs:
                assert after.get(name, "<gone>") == content, name
        new = [name for name in after if name not in before and name.split(os.sep)[0] not in outputs]
        assert not new, new  # no temporary file or folder left
        return after

    # export: succeeding, then failing before writing (exists, is the input, a folder) and while writing
    assert export_main([model, "-o", out_pt]) == 0 and is_torchscript(out_pt)
    state = unchanged(base)
    for argv, message in (([model, "-o", out_pt], "exists; pass --overwrite"),
                          ([model, "-o", model, "--overwrite"], "is also an input"),
                          ([model, "-o", str(work / "sibling"), "--overwrite"], "is a folder"),
                          ([out_pt, "-o", str(work / "again.pt")], "is a TorchScript export made by e3pot export")):
        assert export_main(argv) == 2
        assert message in one_line_error(capsys.readouterr().err, "export")
        state = unchanged(state)
        assert snapshot(work) == state

    def broken_save(module, path, _extra_files=None):
        with open(path, "wb") as fh:
            fh.write(b"half an archive")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    assert export_main([model, "-o", out_pt, "--overwrite"]) == 2
    assert "disk full" in one_line_error(capsys.readouterr().err, "export")
    monkeypatch.undo()
    assert snapshot(work) == state and is_torchscript(out_pt)  # the earlier export is still there

    # preprocess: an ordinary folder is refused, a store replaced; a bad input fails while writing
    assert preprocess_main([data, "-o", out_store, "--overwrite", "--no-progress"]) == 2
    assert "not an e3pot store" in one_line_error(capsys.readouterr().err, "preprocess")
    assert snapshot(work) == state
    store = str(work / "new.store")
    outputs = ("out.pt", "out.store", "new.store")
    assert preprocess_main([data, "-o", store, "--no-progress"]) == 0
    state = unchanged(state)
    assert preprocess_main([bad, "-o", store, "--overwrite", "--no-progress"]) == 2
    assert "frame 2" in one_line_error(capsys.readouterr().err, "preprocess")
    assert snapshot(work) == state and len(FrameStore(store)) == 4
    assert preprocess_main([data, data, "-o", store, "--overwrite", "--no-progress"]) == 0
    unchanged(state)
    assert len(FrameStore(store)) == 8
    assert (work / "out.store" / "inside.txt").read_text().startswith("a folder of the user's")
