"""A ready LAMMPS input deck for a structure and a model: ``e3pot lammps deck``.

The deck is a folder with ``structure.data`` (LAMMPS's data file, atom_style atomic, with masses),
``in.lammps`` (units metal, the plugin, ``pair_style e3pot``, velocities, a thermostat, thermo output
and a trajectory dump) and, when the model given is a model file rather than an export, the
TorchScript export that the pair style reads (``deployed.pt``). Atom types are the elements of the
structure in order of atomic number; ``pair_coeff`` names them in that order.

Everything that can be refused is refused before a file is written or the folder is made: settings
LAMMPS would refuse or misread (:func:`check_settings`), a frame the structure file does not have or
cannot give (:func:`read_structure`), outputs the file rule of :mod:`e3pot.files` forbids
(:func:`check_outputs`), and elements the model does not know.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Dict, List, Optional

from e3pot.files import OutputError, atomic_output, check_output

ENSEMBLES = ("nvt", "nve", "npt")
# LAMMPS reads the counts of run, thermo and dump as 32-bit signed integers.
MAX_COUNT = 2**31 - 1
# velocity create seeds a Park-Miller generator (modulus 2^31 - 1): the seed must be positive, and a
# seed of 2^31 - 1 leaves the generator at 0, where drawing Gaussian velocities never ends.
MAX_SEED = 2**31 - 2


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_settings(*, steps: int, temperature: float, timestep_fs: float, ensemble: str, seed: int = 12345,
                   thermo: int = 10, dump: int = 100) -> None:
    """Raise ValueError, naming the option, for a setting of the deck that LAMMPS would refuse with a
    message about something else, or accept and misuse (a zero or negative timestep, a negative
    temperature, a seed that hangs ``velocity create``). The command's options are named as such
    (``--steps``); ``seed``, ``thermo`` and ``dump`` are arguments of :func:`write_deck` only."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"--ensemble {ensemble!r}: use one of {', '.join(ENSEMBLES)}")
    if not _is_int(steps) or not 0 <= steps <= MAX_COUNT:
        raise ValueError(f"--steps must be a whole number of steps from 0 to {MAX_COUNT}, got {steps!r}")
    if not _is_number(timestep_fs) or timestep_fs <= 0:
        raise ValueError(f"--timestep must be a positive number of fs, got {timestep_fs!r}")
    if not _is_number(temperature) or temperature < 0:
        raise ValueError(f"--temperature must be a number of K, 0 or more, got {temperature!r}")
    if temperature == 0 and ensemble != "nve":
        raise ValueError(f"--temperature must be above 0 K with --ensemble {ensemble}: LAMMPS's thermostat cannot "
                         "target 0 K (--ensemble nve starts from 0 K: atoms at rest)")
    if not _is_int(seed) or not 1 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 1 to {MAX_SEED} (LAMMPS's velocity create), got {seed!r}")
    if not _is_int(thermo) or not 0 <= thermo <= MAX_COUNT:
        raise ValueError(f"thermo must be a whole number of steps from 0 (the first and last step only) to "
                         f"{MAX_COUNT}, got {thermo!r}")
    if not _is_int(dump) or not 1 <= dump <= MAX_COUNT:
        raise ValueError(f"dump must be a whole number of steps from 1 to {MAX_COUNT}, got {dump!r}")


LAMMPS_DATA = ("{path} is a LAMMPS data file, which gives atom types rather than elements; give the structure in "
               "a format that names them (extended XYZ, an ASE trajectory, CIF, POSCAR, ...)")


def _is_lammps_data(path: str) -> bool:
    """Whether ``path`` starts like a LAMMPS data file: after its title line, the header's counts
    ``N atoms`` and ``N atom types`` (within the first 40 lines)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = [next(fh, "").split("#")[0].split() for _ in range(40)][1:]
    except OSError:
        return False
    return all(any(len(words) == 1 + len(name) and words[0].isdigit() and words[1:] == name for words in head)
               for name in (["atoms"], ["atom", "types"]))


def read_structure(path: str, index: int = -1):
    """Frame ``index`` of the structure file ``path`` (negative: counted from the end) as ``ase.Atoms``,
    read with e3pot's reader (:func:`e3pot.data.io.iter_labelled`: ASE-readable files and rMD17-style
    npz) and checked like training data (its labels are not looked at).

    Raises FileNotFoundError for a missing file, and :class:`~e3pot.data.io.DataError` naming the file
    (and the frame) for an unreadable or empty file, an index outside the file, and a structure
    without atoms, with positions that are not finite or with a periodic cell of no volume. Frames
    after a non-negative ``index`` are not read; a negative one needs the whole file, of which only the
    last ``-index`` frames are kept."""
    import collections

    import numpy as np

    from e3pot.data.io import DataError, Frame, check_frame, iter_labelled

    if not _is_int(index):
        raise ValueError(f"--index must be a whole number (a frame; negative: from the end), got {index!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such structure file: {path}")
    frames = iter_labelled(path)
    kept: collections.deque = collections.deque(maxlen=max(-index, 1))
    n, atoms = 0, None
    try:
        for _, atoms, _ in frames:
            if index >= 0 and n == index:
                break
            kept.append(atoms)
            n += 1
        else:
            atoms = None
    except DataError as exc:
        if _is_lammps_data(path):
            raise DataError(LAMMPS_DATA.format(path=path)) from exc
        raise
    finally:
        frames.close()
    if atoms is not None:  # frame `index` (non-negative) was reached
        k = index
    elif index < 0 and n >= -index:
        atoms, k = kept[0], n + index
    elif n == 0:
        raise DataError(LAMMPS_DATA.format(path=path) if _is_lammps_data(path) else f"{path}: contains no structures")
    else:
        valid = "0 or -1" if n == 1 else f"0 to {n - 1}, or -{n} to -1 counting from the end"
        raise DataError(f"{path}: --index {index} is out of range: the file has {n} frame{'s' if n != 1 else ''} "
                        f"({valid})")
    check_frame(Frame(numbers=np.asarray(atoms.numbers, dtype=np.int64), positions=np.asarray(atoms.positions),
                      cell=np.asarray(atoms.cell.array), pbc=np.asarray(atoms.pbc, dtype=bool),
                      source=f"{path}, frame {k}"))
    return atoms


def deck_files(folder: str, exported: bool) -> Dict[str, str]:
    """The files of a deck in ``folder`` by role; ``model`` only when the model must be exported."""
    files = {"data": os.path.join(folder, "structure.data"), "input": os.path.join(folder, "in.lammps")}
    if not exported:
        files["model"] = os.path.join(folder, "deployed.pt")
    return files


def check_outputs(folder: str, files: Dict[str, str], inputs: List[str], overwrite: bool = False) -> None:
    """Refuse, before anything is written, a deck the file rule (:mod:`e3pot.files`) forbids: ``-o`` that
    is not a folder, a new folder whose parent does not exist or cannot be written, and in an existing
    folder a deck file that is one of the inputs, or that exists already (without ``overwrite``)."""
    if not folder:
        raise OutputError("-o: an empty folder name")
    if os.path.isdir(folder):
        for path in files.values():
            check_output(path, "-o", inputs=inputs, overwrite=overwrite)
        return
    if os.path.lexists(folder):
        raise OutputError(f"-o {folder} exists and is not a folder; the deck is a folder of files: give a new "
                          "folder or an existing one")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise OutputError(f"-o {folder}: the folder {parent} does not exist (the deck's own folder is made, not "
                          "the folders above it)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"-o {folder}: cannot make a folder in {parent} (permission denied)")


def data_file_text(atoms, elements: List[str]) -> str:
    """LAMMPS's data file of ``atoms`` (types in the order of ``elements``), through ASE's writer."""
    import io

    from ase.io import write

    buffer = io.StringIO()
    write(buffer, atoms, format="lammps-data", specorder=elements, masses=True, atom_style="atomic", units="metal")
    return buffer.getvalue()


def boxed(atoms, margin: float):
    """A copy of ``atoms`` with a box: a molecule without a cell is centred in one with ``margin`` Å of vacuum."""
    if not _is_number(margin) or margin < 0:
        raise ValueError(f"margin must be a number of Å, 0 or more, got {margin!r}")
    atoms = atoms.copy()
    if not atoms.pbc.any() and abs(atoms.cell.volume) < 1e-9:
        atoms.center(vacuum=margin)
    return atoms


def input_text(*, data: str, model: str, plugin: str, elements: List[str], periodic: List[bool], steps: int,
               temperature: float, timestep_fs: float, ensemble: str, seed: int, thermo: int, dump: int,
               source: str) -> str:
    boundary = " ".join("p" if p else "s" for p in periodic)
    lines = [
        f"# e3pot: {source} with {os.path.basename(model)}",
        "# run: lmp -in in.lammps   or, on N processes: OMP_NUM_THREADS=1 mpirun -np N lmp -in in.lammps",
        "units           metal",
        "atom_style      atomic",
        f"boundary        {boundary}",
        f"read_data       {data}",
        "",
        f"plugin load     {plugin}",
        "pair_style      e3pot",
        f"pair_coeff      * * {model} {' '.join(elements)}",
        "",
        f"velocity        all create {temperature:g} {seed} mom yes rot {'no' if all(periodic) else 'yes'} dist gaussian",
        f"timestep        {timestep_fs / 1000:g}",
    ]
    damp = 100 * timestep_fs / 1000
    if ensemble == "nve":
        lines.append("fix             md all nve")
    elif ensemble == "nvt":
        lines.append(f"fix             md all nvt temp {temperature:g} {temperature:g} {damp:g}")
    else:
        lines.append(f"fix             md all npt temp {temperature:g} {temperature:g} {damp:g} "
                     f"iso 1.0 1.0 {10 * damp:g}")
    lines += [
        "thermo_style    custom step time temp pe ke etotal press vol",
        f"thermo          {thermo}",
        f"dump            traj all custom {dump} trajectory.lammpstrj id type element x y z fx fy fz",
        f"dump_modify     traj element {' '.join(elements)} sort id",
        f"run             {steps}",
        "",
    ]
    return "\n".join(lines)


def write_deck(structure: str, model: str, folder: str, *, index: int = -1, steps: int = 1000,
               temperature: float = 300.0, timestep_fs: float = 0.5, ensemble: str = "nvt", seed: int = 12345,
               thermo: int = 10, dump: int = 100, overwrite: bool = False,
               plugin: Optional[str] = None) -> Dict[str, str]:
    """Write the deck (see the module's notes) and return its files by role.

    Raises ValueError (:class:`~e3pot.data.io.DataError`, :class:`~e3pot.files.OutputError`) for a bad
    setting, a frame the structure file cannot give, an output the file rule refuses, an element the
    model does not know, or NPT without a periodic cell, and FileNotFoundError for a missing input; all
    before any file is written. The deck's files are written to temporary names and moved into place
    together at the end; the folder, when it is new, is made only then (and removed again, if still
    empty, when writing fails)."""
    from ase.data import atomic_numbers as numbers_of

    from e3pot.lammps import plugin_path
    from e3pot.model.export import export_model, is_torchscript
    from e3pot.model.io import load_model
    from e3pot.model.runtime import load_any

    check_settings(steps=steps, temperature=temperature, timestep_fs=timestep_fs, ensemble=ensemble, seed=seed,
                   thermo=thermo, dump=dump)
    if not os.path.exists(model):
        raise FileNotFoundError(f"no such model file: {model}")
    exported = is_torchscript(model) or model.endswith(".pt2")
    files = deck_files(folder, exported)
    check_outputs(folder, files, [structure, model], overwrite=overwrite)
    atoms = read_structure(structure, index)
    if ensemble == "npt" and not atoms.pbc.all():
        raise ValueError(f"{structure}: NPT needs a cell periodic in all three directions (pbc={atoms.pbc.tolist()})")
    if len(atoms) == 1 and temperature > 0:  # velocity create removes the momentum, then scales a temperature of 0
        raise ValueError(f"{structure}: a structure of one atom has no temperature to start from (LAMMPS removes its "
                         "momentum); use --ensemble nve --temperature 0, or a structure of more atoms")

    loaded = load_any(model) if exported else load_model(model)
    known, r_max = loaded.atomic_numbers, loaded.r_max
    present = elements_of(atoms)
    unknown = [s for s in present if numbers_of[s] not in known]
    if unknown:
        from ase.data import chemical_symbols

        raise ValueError(f"{structure}: element{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not known to "
                         f"the model {model} (it knows {', '.join(chemical_symbols[z] for z in known)})")
    atoms = boxed(atoms, margin=2 * r_max)
    model_used = os.path.abspath(files.get("model", model))
    texts = {"data": data_file_text(atoms, present), "input": input_text(
        data="structure.data", model=model_used, plugin=plugin or plugin_path(), elements=present,
        periodic=[bool(p) for p in atoms.pbc], steps=steps, temperature=temperature, timestep_fs=timestep_fs,
        ensemble=ensemble, seed=seed, thermo=thermo, dump=dump, source=os.path.basename(structure))}

    made = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"-o {folder}: cannot make the folder ({exc.strerror or exc})") from None
    try:
        with contextlib.ExitStack() as stack:  # each file is moved into place when the block ends without error
            tmp = {role: stack.enter_context(atomic_output(path)) for role, path in files.items()}
            if not exported:
                export_model(loaded, tmp["model"])
            for role, text in texts.items():
                with open(tmp[role], "w", encoding="utf-8", newline="") as fh:
                    fh.write(text)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only while it is empty: nothing but this command's own folder goes
        raise
    return files


def elements_of(atoms) -> List[str]:
    from ase.data import atomic_numbers as numbers_of

    return sorted(set(atoms.get_chemical_symbols()), key=lambda s: numbers_of[s])
