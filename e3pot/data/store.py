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

FORMAT = "e3pot-store"
VERSION = 2
META = "meta.json"
_ATOM_ARRAYS = {"numbers": (np.int8, ()), "positions": (np.float64, (3,)), "forces": (np.float64, (3,))}
_FRAME_ARRAYS = {"n_atoms": (np.int64, ()), "cell": (np.float64, (3, 3)), "pbc": (np.bool_, (3,)),
                 "energy": (np.float64, ()), "stress": (np.float64, (3, 3)), "source_file": (np.int32, ()),
                 "source_frame": (np.int64, ()), "n_edges": (np.int64, ()), "force_sq": (np.float64, ()),
                 "has_forces": (np.bool_, ()), "has_stress": (np.bool_, ())}


def is_store(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META))


class StoreWriter:
    """Appends frames to a new store at ``path`` (written under a temporary name, renamed by
    :meth:`close`; :meth:`abort` removes it). Memory stays constant whatever the number of frames."""

    def __init__(self, path: str, r_max: float, overwrite: bool = False, info: Optional[dict] = None):
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; choose another name or pass --overwrite")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"the folder of the output {path} does not exist")
        self.path, self.r_max, self.info = path, float(r_max), dict(info or {})
        self.tmp = f"{path}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        self.files = {name: open(os.path.join(self.tmp, f"{name}.bin"), "wb")
                      for name in list(_ATOM_ARRAYS) + list(_FRAME_ARRAYS)}
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
        for fh in self.files.values():
            fh.close()
        if self.n_frames == 0:
            self.abort()
            raise DataError("no structures to write")
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
        if os.path.exists(self.path):  # --overwrite: the old store goes only once the new one is complete
            old = f"{self.path}.old-{os.getpid()}"
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
        else:
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        for fh in self.files.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class FrameStore:
    """Read access to a store: ``len(store)``, ``store.frame(k)``, per-frame columns for statistics."""

    def __init__(self, path: str):
        if not is_store(path):
            raise FileNotFoundError(f"no e3pot store at {path} (make one with: e3pot preprocess INPUT... -o {path})")
        with open(os.path.join(path, META)) as fh:
            self.meta = json.load(fh)
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise DataError(f"{path}: not an e3pot store of version {VERSION} (found {self.meta.get('format')} "
                            f"version {self.meta.get('version')}); preprocess the data again")
        self.path = path
        self.elements: List[int] = list(self.meta["elements"])
        self.r_max = float(self.meta["r_max"])
        self._maps: Dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.meta["n_frames"])

    def __getstate__(self):  # workers and pickles reopen the memory maps instead of copying them
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def array(self, name: str) -> np.ndarray:
        if name not in self._maps:
            n, f = int(self.meta["n_atoms"]), len(self)
            if name in _ATOM_ARRAYS:
                dtype, shape = _ATOM_ARRAYS[name][0], (n,) + _ATOM_ARRAYS[name][1]
            elif name == "offsets":
                dtype, shape = np.int64, (f + 1,)
            elif name == "counts":
                dtype, shape = np.int32, (f, len(self.elements))
            else:
                dtype, shape = _FRAME_ARRAYS[name][0], (f,) + _FRAME_ARRAYS[name][1]
            self._maps[name] = np.memmap(os.path.join(self.path, f"{name}.bin"), dtype=dtype, mode="r", shape=shape)
        return self._maps[name]

    def source(self, k: int) -> str:
        return f"{self.path}, frame {k} ({self.meta['sources'][int(self.array('source_file')[k])]}, " \
               f"frame {int(self.array('source_frame')[k])})"

    def frame(self, k: int) -> Frame:
        a, b = int(self.array("offsets")[k]), int(self.array("offsets")[k + 1])
        energy, forces, stress = float(self.array("energy")[k]), np.array(self.array("forces")[a:b]), np.array(self.array("stress")[k])
        return Frame(numbers=self.array("numbers")[a:b].astype(np.int64), positions=np.array(self.array("positions")[a:b]),
                     cell=np.array(self.array("cell")[k]), pbc=np.array(self.array("pbc")[k]),
                     energy=None if np.isnan(energy) else energy,
                     forces=None if np.isnan(forces).any() else forces,
                     stress=None if np.isnan(stress).any() else stress, source=self.source(k))


def write_store(inputs: Iterable[str], path: str, labels, r_max: float, overwrite: bool = False,
                progress: bool = True) -> str:
    """Stream the frames of ``inputs`` into a new store at ``path``; returns ``path``."""
    from tqdm.auto import tqdm

    from e3pot.data.io import iter_frames

    inputs = list(inputs)
    writer = StoreWriter(path, r_max, overwrite, info={"labels": {k: getattr(labels, k) for k in (
        "energy_key", "forces_key", "stress_key", "energy_unit", "length_unit", "stress_unit")}})
    try:
        with tqdm(unit="frame", desc="preprocessing", disable=not progress) as bar:
            for name in inputs:
                for k, frame in enumerate(iter_frames(name, labels)):
                    writer.add(frame, name, k)
                    bar.update(1)
    except BaseException:
        writer.abort()
        raise
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
