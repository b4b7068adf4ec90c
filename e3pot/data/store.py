"""An on-disk store of preprocessed structures and labels, read by index without loading it.

A store is a folder of flat binary arrays (numpy memory maps) and ``meta.json``:

    numbers (n_atoms_total,) int8 · positions, forces (n_atoms_total, 3) float64 Å, eV/Å (NaN: no label)
    offsets (n_frames + 1,) int64: the atoms of frame k are offsets[k]:offsets[k+1]
    cell (n_frames, 3, 3) float64 Å · pbc (n_frames, 3) bool · energy (n_frames,) float64 eV
    stress (n_frames, 3, 3) float64 eV/Å^3 · source_file (n_frames,) int32 · source_frame (n_frames,) int64
    counts (n_frames, n_elements) int32: atoms of each element (meta "elements") per frame
    n_edges (n_frames,) int64: edges within meta "r_max" · force_sq (n_frames,) float64: sum of squared forces
    has_forces, has_stress (n_frames,) bool: which frames have these labels

Units are converted on the way in (the label and unit options of training), so a store holds eV and Å.
The per-frame columns give the training statistics (E0 least squares, force RMS, average number of
neighbours) of any subset without reading a structure. Memory maps are opened lazily in each process,
so DataLoader workers and DDP ranks share the operating system's page cache instead of copies.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from e3pot.data.io import DataError, Frame
from e3pot.files import OutputError, same_file, temporary_path

FORMAT = "e3pot-store"
VERSION = 2
META = "meta.json"
_ATOM_ARRAYS = {"numbers": (np.int8, ()), "positions": (np.float64, (3,)), "forces": (np.float64, (3,))}
_FRAME_ARRAYS = {"n_atoms": (np.int64, ()), "cell": (np.float64, (3, 3)), "pbc": (np.bool_, (3,)),
                 "energy": (np.float64, ()), "stress": (np.float64, (3, 3)), "source_file": (np.int32, ()),
                 "source_frame": (np.int64, ()), "n_edges": (np.int64, ()), "force_sq": (np.float64, ()),
                 "has_forces": (np.bool_, ()), "has_stress": (np.bool_, ())}


def is_store(path: str) -> bool:
    """A folder with a ``meta.json``: meant as a store (:class:`FrameStore` says whether it is a sound one)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META))


def has_store_marker(path: str) -> bool:
    """A folder that is recognisably an e3pot store: its ``meta.json`` names the store format (any version).
    Only such a folder is ever replaced by ``e3pot preprocess --overwrite``."""
    if not is_store(path) or os.path.islink(path):
        return False
    try:
        with open(os.path.join(path, META), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


class StoreError(DataError):
    """A damaged store. The message stays one line when the error is raised in a DataLoader worker:
    PyTorch raises it again in the main process as ``StoreError(<the worker's whole traceback>)``, and
    this keeps the last line of that traceback, the original message."""

    def __init__(self, message: str = ""):
        if isinstance(message, str) and message.startswith("Caught ") and "Traceback" in message:
            for name in (f"{type(self).__module__}.{type(self).__qualname__}: ", f"{type(self).__qualname__}: "):
                lines = [line for line in message.splitlines() if line.startswith(name)]
                if lines:
                    message = lines[-1][len(name):]
                    break
        super().__init__(message)


def check_store_output(path: str, inputs: Sequence[str] = (), overwrite: bool = False, option: str = "-o") -> str:
    """The rule of :mod:`e3pot.files` for a store: the store is never an input and holds none, and
    ``--overwrite`` replaces only a folder that is recognisably an e3pot store."""
    if not path:
        raise OutputError(f"{option}: an empty name")
    real = os.path.realpath(path)
    for source in inputs:
        if not source:
            continue
        if same_file(path, source):
            raise OutputError(f"{option} {path} is also an input ({source}); write the store to another folder")
        if os.path.realpath(source).startswith(real.rstrip(os.sep) + os.sep):
            raise OutputError(f"{option} {path} holds the input {source}; replacing the store would delete it: "
                              "write the store to another folder")
    if os.path.lexists(path):
        if not overwrite:
            raise OutputError(f"{option} {path} exists; pass --overwrite to replace it, or choose another name")
        if os.path.islink(path):
            raise OutputError(f"{option} {path} is a symbolic link; give the store's own folder "
                              f"({os.path.realpath(path)}) or another name")
        if not has_store_marker(path):
            what = "a folder" if os.path.isdir(path) else "a file"
            raise OutputError(f"{option} {path} exists and is {what}, not an e3pot store (no {META} of an e3pot "
                              "store in it); --overwrite replaces only a store made by e3pot preprocess: remove it "
                              "yourself or choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{option} {path}: cannot write in the folder {folder} (permission denied)")
    return path


class StoreWriter:
    """Appends frames to a new store at ``path``. The store is written in a new folder next to ``path``
    with a name no other file has, and moved into place by :meth:`close` (an existing store, replaced only
    with ``overwrite``, goes once the new one is complete); :meth:`abort` removes that folder. Nothing but
    the writer's own folders is ever removed. Memory stays constant whatever the number of frames."""

    def __init__(self, path: str, r_max: float, overwrite: bool = False, info: Optional[dict] = None,
                 inputs: Sequence[str] = ()):
        self.inputs = [str(name) for name in inputs]
        check_store_output(path, self.inputs, overwrite)
        self.path, self.r_max, self.info, self.overwrite = path, float(r_max), dict(info or {}), overwrite
        self.files = {}
        self.tmp = temporary_path(path, directory=True)
        try:
            self.files = {name: open(os.path.join(self.tmp, f"{name}.bin"), "wb")
                          for name in list(_ATOM_ARRAYS) + list(_FRAME_ARRAYS)}
        except BaseException:
            self.abort()
            raise
        self.sources: List[str] = []
        self.n_frames = 0
        self.n_atoms = 0

    def add(self, frame: Frame, source_file: str, source_frame: int) -> None:
        from e3pot.data.neighbors import check_distances, neighbor_list

        pos = np.ascontiguousarray(frame.positions, dtype=np.float64)
        pbc = np.asarray(frame.pbc, dtype=bool)
        cell = np.asarray(frame.cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        if np.any(frame.numbers > 127) or np.any(frame.numbers < 1):
            raise DataError(f"{frame.source}: atomic numbers must be 1..127")
        i, j, _, dist = neighbor_list(pos, cell, pbc, self.r_max)
        check_distances(i, j, dist, frame.source)
        forces = np.full((frame.n_atoms, 3), np.nan) if frame.forces is None else np.asarray(frame.forces, float)
        if source_file not in self.sources:
            self.sources.append(source_file)
        columns = {
            "numbers": np.asarray(frame.numbers, dtype=np.int8), "positions": pos, "forces": forces,
            "n_atoms": np.int64(frame.n_atoms), "cell": cell, "pbc": pbc,
            "energy": np.float64(np.nan if frame.energy is None else frame.energy),
            "stress": np.full((3, 3), np.nan) if frame.stress is None else np.asarray(frame.stress, float),
            "source_file": np.int32(self.sources.index(source_file)), "source_frame": np.int64(source_frame),
            "n_edges": np.int64(len(i)), "force_sq": np.float64(np.square(forces).sum() if frame.forces is not None else 0.0),
            "has_forces": np.bool_(frame.forces is not None), "has_stress": np.bool_(frame.stress is not None),
        }
        for name, value in columns.items():
            dtype = (_ATOM_ARRAYS.get(name) or _FRAME_ARRAYS[name])[0]
            self.files[name].write(np.ascontiguousarray(value, dtype=dtype).tobytes())
        self.n_frames += 1
        self.n_atoms += frame.n_atoms

    def close(self) -> str:
        """Complete the store and move it into place; on any failure remove the writer's own folder."""
        for fh in self.files.values():
            fh.close()
        if self.n_frames == 0:
            self.abort()
            raise DataError("no structures to write")
        try:
            self._complete()
            check_store_output(self.path, self.inputs, self.overwrite)  # the path may have changed meanwhile
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        return self.path

    def _complete(self) -> None:
        n_atoms = np.fromfile(os.path.join(self.tmp, "n_atoms.bin"), dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
        offsets.tofile(os.path.join(self.tmp, "offsets.bin"))
        # per-frame element counts, from the atomic numbers in chunks of frames (bounded memory)
        numbers = np.memmap(os.path.join(self.tmp, "numbers.bin"), dtype=np.int8, mode="r")
        present = np.zeros(128, dtype=bool)
        step = 1 << 24
        for start in range(0, len(numbers), step):
            present[np.unique(numbers[start:start + step])] = True
        elements = np.flatnonzero(present).tolist()
        column = np.full(128, -1)
        column[elements] = np.arange(len(elements))
        with open(os.path.join(self.tmp, "counts.bin"), "wb") as fh:
            for f0 in range(0, self.n_frames, 65536):
                f1 = min(f0 + 65536, self.n_frames)
                block = numbers[offsets[f0]:offsets[f1]].astype(np.int64)
                frame_of = np.repeat(np.arange(f1 - f0), n_atoms[f0:f1])
                counts = np.zeros((f1 - f0, len(elements)), dtype=np.int32)
                np.add.at(counts, (frame_of, column[block]), 1)
                fh.write(counts.tobytes())
        del numbers
        meta = {"format": FORMAT, "version": VERSION, "n_frames": self.n_frames, "n_atoms": self.n_atoms,
                "elements": elements, "r_max": self.r_max, "sources": self.sources,
                "units": {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å^3"}, **self.info}
        with open(os.path.join(self.tmp, META), "w") as fh:
            json.dump(meta, fh, indent=1)

    def _move_into_place(self) -> None:
        if not os.path.lexists(self.path):
            os.replace(self.tmp, self.path)
            return
        # --overwrite: the old store goes only once the new one is complete. It is first moved to a
        # folder of the writer's own (an empty one with a unique name, renamed over), then removed.
        old = temporary_path(self.path, directory=True)
        try:
            os.replace(self.path, old)
        except BaseException:
            os.rmdir(old)
            raise
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            os.replace(old, self.path)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        for fh in self.files.values():
            fh.close()
        if os.path.isdir(self.tmp) and not os.path.islink(self.tmp):  # the writer's own folder only
            shutil.rmtree(self.tmp, ignore_errors=True)


class FrameStore:
    """Read access to a store: ``len(store)``, ``store.frame(k)``, per-frame columns for statistics."""

    def __init__(self, path: str):
        if not is_store(path):
            raise FileNotFoundError(f"no e3pot store at {path} (make one with: e3pot preprocess INPUT... -o {path})")
        meta_file = os.path.join(path, META)
        try:
            with open(meta_file, encoding="utf-8") as fh:
                self.meta = json.load(fh)
        except ValueError as exc:  # JSON or text encoding
            raise StoreError(f"store {path}: {meta_file} is damaged ({exc}); preprocess the data again") from None
        except OSError as exc:
            raise StoreError(f"store {path}: cannot read {meta_file} ({exc.strerror or exc})") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            found = self.meta if isinstance(self.meta, dict) else {}
            raise DataError(f"{path}: not an e3pot store of version {VERSION} (found {found.get('format')} "
                            f"version {found.get('version')}); preprocess the data again")
        self.path = path
        try:
            self.elements: List[int] = [int(z) for z in self.meta["elements"]]
            self.r_max = float(self.meta["r_max"])
            n_frames, n_atoms = int(self.meta["n_frames"]), int(self.meta["n_atoms"])
            list(self.meta["sources"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"store {path}: {meta_file} is damaged (its entry {exc} is missing or not valid); "
                             "preprocess the data again") from None
        self._maps: Dict[str, np.ndarray] = {}
        self._check_sizes(n_frames, n_atoms)

    def _layout(self, name: str):
        """dtype and shape of the array ``name``, as meta.json implies."""
        n, f = int(self.meta["n_atoms"]), int(self.meta["n_frames"])
        if name in _ATOM_ARRAYS:
            return _ATOM_ARRAYS[name][0], (n,) + _ATOM_ARRAYS[name][1]
        if name == "offsets":
            return np.int64, (f + 1,)
        if name == "counts":
            return np.int32, (f, len(self.elements))
        return _FRAME_ARRAYS[name][0], (f,) + _FRAME_ARRAYS[name][1]

    def _check_sizes(self, n_frames: int, n_atoms: int) -> None:
        """Every array file has the size meta.json implies (a truncated or stray file is a damaged store)."""
        for name in list(_ATOM_ARRAYS) + list(_FRAME_ARRAYS) + ["offsets", "counts"]:
            dtype, shape = self._layout(name)
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            file = os.path.join(self.path, f"{name}.bin")
            try:
                actual = os.path.getsize(file)
            except OSError:
                raise StoreError(f"store {self.path}: {file} is missing; the store is incomplete, preprocess the "
                                 "data again") from None
            if actual != expected:
                raise StoreError(f"store {self.path}: {file} has {actual} bytes, but {META} ({n_frames} frames, "
                                 f"{n_atoms} atoms) implies {expected} bytes; the store is damaged or incomplete, "
                                 "preprocess the data again")

    def __len__(self) -> int:
        return int(self.meta["n_frames"])

    def __getstate__(self):  # workers and pickles reopen the memory maps instead of copying them
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def array(self, name: str) -> np.ndarray:
        if name not in self._maps:
            dtype, shape = self._layout(name)
            self._maps[name] = np.memmap(os.path.join(self.path, f"{name}.bin"), dtype=dtype, mode="r", shape=shape)
        return self._maps[name]

    def source(self, k: int) -> str:
        return f"{self.path}, frame {k} ({self._origin(k)})"

    def _origin(self, k: int) -> str:
        """The input file and frame that frame ``k`` was made from."""
        try:
            name = self.meta["sources"][int(self.array("source_file")[k])]
            return f"{name}, frame {int(self.array('source_frame')[k])}"
        except (IndexError, TypeError, ValueError):
            return "source unknown"

    def frame(self, k: int) -> Frame:
        offsets = self.array("offsets")
        a, b = int(offsets[k]), int(offsets[k + 1])
        if not 0 <= a <= b <= int(self.meta["n_atoms"]):
            raise StoreError(f"store {self.path}: {os.path.join(self.path, 'offsets.bin')} gives atoms {a}..{b} to "
                             f"frame {k} (from {self._origin(k)}) of {self.meta['n_atoms']}; the store is damaged, "
                             "preprocess the data again")
        positions, cell = np.array(self.array("positions")[a:b]), np.array(self.array("cell")[k])
        for name, values in (("positions", positions), ("cell", cell)):
            if not np.isfinite(values).all():
                raise StoreError(f"store {self.path}: {os.path.join(self.path, name + '.bin')} holds non-finite "
                                 f"{name} (NaN or infinite) for frame {k} (from {self._origin(k)}); the store is "
                                 "damaged, preprocess the data again")
        energy, forces, stress = float(self.array("energy")[k]), np.array(self.array("forces")[a:b]), np.array(self.array("stress")[k])
        return Frame(numbers=self.array("numbers")[a:b].astype(np.int64), positions=positions,
                     cell=cell, pbc=np.array(self.array("pbc")[k]),
                     energy=None if np.isnan(energy) else energy,
                     forces=None if np.isnan(forces).any() else forces,
                     stress=None if np.isnan(stress).any() else stress, source=self.source(k))


def write_store(inputs: Iterable[str], path: str, labels, r_max: float, overwrite: bool = False,
                progress: bool = True) -> str:
    """Stream the frames of ``inputs`` into a new store at ``path``; returns ``path``."""
    from tqdm.auto import tqdm

    from e3pot.data.io import iter_frames

    inputs = [str(name) for name in inputs]
    writer = StoreWriter(path, r_max, overwrite, info={"labels": {k: getattr(labels, k) for k in (
        "energy_key", "forces_key", "stress_key", "energy_unit", "length_unit", "stress_unit")}}, inputs=inputs)
    bar = None  # drawn from the first frame on: an input without frames shows no bar, only its error
    try:
        for name in inputs:
            for k, frame in enumerate(iter_frames(name, labels)):
                writer.add(frame, name, k)
                if bar is not None:
                    bar.update(1)
                elif progress:
                    bar = tqdm(unit="frame", desc="preprocessing", initial=1)
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return writer.close()


def frame_columns(store: FrameStore, indices: Sequence[int], elements: Sequence[int]) -> Dict[str, np.ndarray]:
    """Per-frame statistics columns of ``store[indices]``, with element counts in ``elements`` order."""
    idx = np.asarray(indices, dtype=np.int64)
    counts = np.zeros((len(idx), len(elements)), dtype=np.int64)
    store_counts = store.array("counts")
    for c, z in enumerate(store.elements):
        if z in elements:
            counts[:, list(elements).index(z)] = store_counts[idx, c]
    # only per-frame columns are read: statistics touch no per-atom array
    offsets = store.array("offsets")
    n_atoms = offsets[idx + 1] - offsets[idx]
    energy = np.asarray(store.array("energy")[idx])
    return {"counts": counts, "n_atoms": n_atoms, "energy": energy, "force_sq": np.asarray(store.array("force_sq")[idx]),
            "has_energy": ~np.isnan(energy), "has_forces": np.asarray(store.array("has_forces")[idx]),
            "has_stress": np.asarray(store.array("has_stress")[idx]), "n_edges": np.asarray(store.array("n_edges")[idx])}
