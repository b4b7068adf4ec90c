"""Reading structures and their labels from ASE-readable files and rMD17-style npz.

Every frame is checked on read, and errors name the file, the frame and what is wrong.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from e3pot.data.units import energy_factor, length_factor, stress_factor


class DataError(ValueError):
    """Bad input data; the message names the file and the frame."""


@dataclass
class Frame:
    numbers: np.ndarray  # (n_atoms,) int atomic numbers
    positions: np.ndarray  # (n_atoms, 3) Å
    cell: np.ndarray  # (3, 3) Å
    pbc: np.ndarray  # (3,) bool
    energy: Optional[float] = None  # eV
    forces: Optional[np.ndarray] = None  # (n_atoms, 3) eV/Å
    stress: Optional[np.ndarray] = None  # (3, 3) eV/Å^3, ASE sign convention
    source: str = "?"  # "file, frame k" for error messages

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


@dataclass(frozen=True)
class LabelSpec:
    """Where labels are found and in which units. ``None`` keys mean the format's default."""

    energy_key: Optional[str] = None
    forces_key: Optional[str] = None
    stress_key: Optional[str] = None
    energy_unit: str = "eV"
    length_unit: str = "Å"
    stress_unit: Optional[str] = None  # None: energy_unit / length_unit^3


def check_frame(frame: Frame, require: Sequence[str] = ()) -> Frame:
    """Raise :class:`DataError` for non-finite values, missing labels or a periodic zero cell."""
    where = frame.source
    if frame.n_atoms == 0:
        raise DataError(f"{where}: structure has no atoms")
    for name in ("positions", "energy", "forces", "stress"):
        value = getattr(frame, name)
        if value is not None and not np.all(np.isfinite(value)):
            raise DataError(f"{where}: {name} contain NaN or inf")
    if np.any(frame.pbc):
        # Only the periodic directions need cell vectors, and those must be independent: a slab or
        # a 2D material may have a zero vector along its non-periodic direction.
        periodic_vectors = np.asarray(frame.cell)[frame.pbc]
        lengths = np.linalg.norm(frame.cell, axis=1)
        if np.any(lengths[frame.pbc] < 1e-8) or np.linalg.matrix_rank(periodic_vectors, tol=1e-6) < len(periodic_vectors):
            raise DataError(
                f"{where}: periodic boundaries pbc={frame.pbc.tolist()} but the periodic cell vectors are zero "
                f"or linearly dependent (cell lengths {np.round(lengths, 4).tolist()} Å)"
            )
    for name in require:
        if getattr(frame, name) is None:
            raise DataError(f"{where}: no {name} label, but the loss needs it (see the data *_key options)")
    if frame.forces is not None and frame.forces.shape != (frame.n_atoms, 3):
        raise DataError(f"{where}: forces have shape {frame.forces.shape}, expected ({frame.n_atoms}, 3)")
    return frame


def iter_atoms(path: str, index: str = ":") -> Iterator:
    """Yield ``ase.Atoms`` from an ASE-readable file one at a time; unreadable files raise
    :class:`DataError` naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such data file: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DataError(f"{path}: contains no structures (the file is empty)")
    import ase.io

    k = 0
    try:
        for atoms in ase.io.iread(path, index=index):
            yield atoms
            k += 1
    except DataError:
        raise
    except Exception as exc:  # ASE raises many types for unreadable files
        where = f"{path}, frame {k}" if index == ":" else f"{path} (index {index!r}), frame {k}"
        raise DataError(f"{where}: cannot read the structure ({type(exc).__name__}: {exc})") from exc


def iter_frames(path: str, labels: LabelSpec = LabelSpec(), index: str = ":",
                require: Sequence[str] = ()) -> Iterator[Frame]:
    """Yield checked frames from ``path`` one at a time, converted to eV and Å."""
    if path.endswith(".npz"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such data file: {path}")
        yield from _iter_npz(path, labels, require)
        return
    for k, atoms in enumerate(iter_atoms(path, index)):
        yield check_frame(frame_from_atoms(atoms, labels, source=f"{path}, frame {k}"), require)


def read_frames(path: str, labels: LabelSpec = LabelSpec(), index: str = ":",
                require: Sequence[str] = ()) -> list[Frame]:
    frames = list(iter_frames(path, labels, index, require))
    if not frames:
        raise DataError(f"{path}: contains no structures")
    return frames


def _result(atoms, key: str, per_atom: bool):
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    table = atoms.arrays if per_atom else atoms.info
    return table.get(key)


def frame_from_atoms(atoms, labels: LabelSpec = LabelSpec(), source: str = "?") -> Frame:
    """Convert an ``ase.Atoms`` (with labels in its calculator, ``info`` or ``arrays``)."""
    e_f = energy_factor(labels.energy_unit)
    l_f = length_factor(labels.length_unit)
    energy = _result(atoms, labels.energy_key or "energy", per_atom=False)
    forces = _result(atoms, labels.forces_key or "forces", per_atom=True)
    stress = _result(atoms, labels.stress_key or "stress", per_atom=False)
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            stress = voigt_6_to_full_3x3_stress(stress)
        elif stress.size == 9:
            stress = stress.reshape(3, 3)
        else:
            raise DataError(f"{source}: stress has shape {stress.shape}, expected (6,) or (3, 3)")
        stress = stress * stress_factor(labels.stress_unit, labels.energy_unit, labels.length_unit)
    return Frame(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=float) * l_f,
        cell=np.asarray(atoms.cell.array, dtype=float) * l_f,
        pbc=np.asarray(atoms.pbc, dtype=bool),
        energy=None if energy is None else float(np.asarray(energy).reshape(())) * e_f,
        forces=None if forces is None else np.asarray(forces, dtype=float) * (e_f / l_f),
        stress=stress,
        source=source,
    )


def _npz_get(data, path: str, keys: Sequence[str], what: str, required: bool):
    for key in keys:
        if key in data.files:
            return data[key]
    if required:
        raise DataError(f"{path}: no {what} array (looked for {', '.join(map(repr, keys))}; "
                        f"the file has {', '.join(data.files)})")
    return None


def _iter_npz(path: str, labels: LabelSpec, require: Sequence[str], check: bool = True) -> Iterator[Frame]:
    """rMD17-style npz: ``coords`` (n_frames, n_atoms, 3), ``nuclear_charges``, ``energies``, ``forces``.

    With ``check=False`` the frames are not passed through :func:`check_frame`."""
    e_f = energy_factor(labels.energy_unit)
    l_f = length_factor(labels.length_unit)
    with np.load(path) as data:
        coords = _npz_get(data, path, ["coords", "R"], "coordinates", True)
        numbers = _npz_get(data, path, ["nuclear_charges", "z"], "atomic numbers", True)
        energies = _npz_get(data, path, [labels.energy_key] if labels.energy_key else ["energies", "E"],
                            "energy", "energy" in require)
        forces = _npz_get(data, path, [labels.forces_key] if labels.forces_key else ["forces", "F"],
                          "forces", "forces" in require)
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise DataError(f"{path}: coordinates have shape {coords.shape}, expected (n_frames, {len(numbers)}, 3)")
    for name, values in (("energies", energies), ("forces", forces)):
        if values is not None and len(values) != coords.shape[0]:
            raise DataError(f"{path}: {len(values)} {name} for {coords.shape[0]} frames of coordinates")
    for k in range(coords.shape[0]):
        frame = Frame(
            numbers=numbers,
            positions=coords[k].astype(float) * l_f,
            cell=np.zeros((3, 3)),
            pbc=np.zeros(3, dtype=bool),
            energy=None if energies is None else float(np.asarray(energies[k]).reshape(())) * e_f,
            forces=None if forces is None else forces[k].astype(float) * (e_f / l_f),
            source=f"{path}, frame {k}",
        )
        yield check_frame(frame, require) if check else frame


# -- structures with their labels, for prediction and scoring ------------------------------------

def labelled_atoms(frame: Frame, like=None, labels: LabelSpec = LabelSpec()):
    """An ``ase.Atoms`` of ``frame`` (Å) whose calculator results are its labels: ``energy`` (eV),
    ``forces`` (eV/Å) and ``stress`` (eV/Å^3, Voigt order). With ``like``, the ``ase.Atoms`` the frame
    was read with ``labels``, its ``info`` and ``arrays`` are kept, less the entries the labels came
    from (and its calculator, whose results are in the input's units)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    if like is None:
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    else:
        atoms = like.copy()
        atoms.positions, atoms.cell = frame.positions, frame.cell
        for key in {labels.energy_key, labels.stress_key, "energy", "stress"} - {None}:
            atoms.info.pop(key, None)
        for key in {labels.forces_key, "forces"} - {None, "numbers", "positions"}:
            atoms.arrays.pop(key, None)
    results = {"energy": frame.energy, "forces": frame.forces,
               "stress": None if frame.stress is None else full_3x3_to_voigt_6_stress(frame.stress)}
    results = {key: value for key, value in results.items() if value is not None}
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def iter_labelled(path: str, labels: LabelSpec = LabelSpec()) -> Iterator[tuple]:
    """Yield ``(source, atoms, frame)`` from an ASE-readable file or an rMD17-style npz, one at a time.

    ``frame`` holds the labels found where ``labels`` says, converted to eV, eV/Å and eV/Å^3, and not
    checked for NaN or infinity (the caller decides what to do with those); the positions are
    checked when the structure becomes a graph. ``atoms`` is the structure to predict for: an ASE
    input read with the default label options as it was read; otherwise (other keys or units, and
    every npz) a structure in Å whose calculator results are the converted labels, the input's own
    label entries left out (see :func:`labelled_atoms`).
    """
    if path.endswith(".npz"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such data file: {path}")
        for frame in _iter_npz(path, labels, require=(), check=False):
            yield frame.source, labelled_atoms(frame), frame
        return
    as_read = labels == LabelSpec()
    for k, atoms in enumerate(iter_atoms(path)):
        source = f"{path}, frame {k}"
        frame = frame_from_atoms(atoms, labels, source=source)
        if frame.forces is not None and frame.forces.shape != (frame.n_atoms, 3):
            raise DataError(f"{source}: forces have shape {frame.forces.shape}, expected ({frame.n_atoms}, 3)")
        yield source, atoms if as_read else labelled_atoms(frame, like=atoms, labels=labels), frame


def _npz_frames(path: str) -> int:
    """The number of frames of an npz file, from the header of its coordinates array."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in ("coords.npy", "R.npy") if n in archive.namelist())
        with archive.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            return int(read_header(fh)[0][0])


def _xyz_frames(path: str) -> int:
    """Frames in an (extended) XYZ file, from its atom-count lines alone."""
    import itertools

    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue  # blank lines between or after the frames
            natoms = int(line)
            skipped = sum(1 for _ in itertools.islice(fh, natoms + 1))  # the comment line and the atoms
            if skipped < natoms + 1:
                raise ValueError(f"{path}: the last frame is cut short")
            n += 1
    return n


def count_frames(paths: Sequence[str]) -> Optional[int]:
    """The number of structures in ``paths`` when it is cheap to know (extended XYZ files are scanned
    for their atom-count lines, npz files, ASE trajectories and databases say), else ``None``."""
    total = 0
    try:
        for path in paths:
            ext = os.path.splitext(path)[1].lower()
            if ext in (".extxyz", ".xyz"):
                total += _xyz_frames(path)
            elif ext == ".npz":
                total += _npz_frames(path)
            elif ext == ".traj":
                from ase.io.trajectory import Trajectory

                with Trajectory(path) as traj:
                    total += len(traj)
            elif ext == ".db":
                import ase.db

                total += ase.db.connect(path).count()
            else:
                return None
    except Exception:  # the count only feeds progress bars; reading the file reports real problems
        return None
    return total
