"""A ready LAMMPS input deck for a structure and a model: ``e3pot lammps deck``.

The deck is a folder with ``structure.data`` (LAMMPS's data file, atom_style atomic, with masses),
``in.lammps`` (units metal, the plugin, ``pair_style e3pot``, velocities, a thermostat, thermo output
and a trajectory dump) and, when the model given is a model file rather than an export, the
TorchScript export that the pair style reads (``deployed.pt``). Atom types are the elements of the
structure in order of atomic number; ``pair_coeff`` names them in that order.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from e3pot.files import check_output, write_text

ENSEMBLES = ("nvt", "nve", "npt")


def data_file_text(atoms, elements: List[str]) -> str:
    """LAMMPS's data file of ``atoms`` (types in the order of ``elements``), through ASE's writer."""
    import io

    from ase.io import write

    buffer = io.StringIO()
    write(buffer, atoms, format="lammps-data", specorder=elements, masses=True, atom_style="atomic", units="metal")
    return buffer.getvalue()


def boxed(atoms, margin: float):
    """A copy of ``atoms`` with a box: a molecule without a cell is centred in one with ``margin`` Å of vacuum."""
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
    """Write the deck (see the module's notes) and return its files by role. Raises ValueError for an
    element the model does not know, NPT without a periodic cell, or an output the file rule refuses."""
    from ase.data import atomic_numbers as numbers_of
    from ase.io import read

    from e3pot.lammps import plugin_path
    from e3pot.model.export import export_model, is_torchscript
    from e3pot.model.io import load_model
    from e3pot.model.runtime import load_any

    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble {ensemble!r}: use one of {', '.join(ENSEMBLES)}")
    atoms = read(structure, index=index)
    exported = is_torchscript(model) or model.endswith(".pt2")
    files = {"data": os.path.join(folder, "structure.data"), "input": os.path.join(folder, "in.lammps")}
    if not exported:
        files["model"] = os.path.join(folder, "deployed.pt")
    for role, path in files.items():
        check_output(path, "-o", inputs=[structure, model], overwrite=overwrite, missing_folder="make")

    loaded = load_any(model) if exported else load_model(model)
    known, r_max = loaded.atomic_numbers, loaded.r_max
    present = elements_of(atoms)
    unknown = [s for s in present if numbers_of[s] not in known]
    if unknown:
        from ase.data import chemical_symbols

        raise ValueError(f"{structure}: element{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not known to "
                         f"the model {model} (it knows {', '.join(chemical_symbols[z] for z in known)})")
    if ensemble == "npt" and not atoms.pbc.all():
        raise ValueError(f"{structure}: NPT needs a cell periodic in all three directions (pbc={atoms.pbc.tolist()})")
    atoms = boxed(atoms, margin=2 * r_max)

    if not exported:
        export_model(loaded, files["model"])
    model_used = os.path.abspath(files.get("model", model))
    write_text(files["data"], data_file_text(atoms, present))
    write_text(files["input"], input_text(
        data="structure.data", model=model_used, plugin=plugin or plugin_path(), elements=present,
        periodic=[bool(p) for p in atoms.pbc], steps=steps, temperature=temperature, timestep_fs=timestep_fs,
        ensemble=ensemble, seed=seed, thermo=thermo, dump=dump, source=os.path.basename(structure)))
    return files


def elements_of(atoms) -> List[str]:
    from ase.data import atomic_numbers as numbers_of

    return sorted(set(atoms.get_chemical_symbols()), key=lambda s: numbers_of[s])
