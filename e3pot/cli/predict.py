"""``e3pot predict MODEL INPUT [INPUT ...] -o OUTPUT``: batch predictions from the shell.

Reads ASE-readable files one structure at a time, predicts in batches, and appends each
structure to the output: an ASE trajectory (``.traj``, predictions as each frame's calculator
results) or extended XYZ (``.extxyz``/``.xyz``) with the predictions under ``e3pot_*`` keys:
``e3pot_energy`` (eV), ``e3pot_forces`` (eV/Å, per atom), ``e3pot_energies`` (eV, per atom) and
``e3pot_stress`` (eV/Å^3, Voigt order xx yy zz yz xz xy, periodic structures only).
"""
from __future__ import annotations

import argparse
import collections
import csv
import os
import sys
from typing import Iterator, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

PREFIX = "e3pot_"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e3pot predict", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model file (model.pt) or TorchScript export")
    p.add_argument("inputs", nargs="+", help="ASE-readable structure files (extxyz, xyz, traj, db, ...)")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .extxyz/.xyz (predictions under e3pot_* keys) or .traj (as calculator results)")
    p.add_argument("--csv", help="also write per-structure energies to this CSV file")
    p.add_argument("--batch-size", type=int, default=32, help="structures per batch (default 32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's own")
    p.add_argument("--memory-budget", type=float, metavar="GIB",
                   help="GiB one batch may use; larger structures are evaluated in chunks (default: 6 on the "
                        "CPU, at most 60%% of free memory; 60%% of free GPU memory on CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="run the compiled path (a model file only): faster per structure after a compilation of "
                        "tens of seconds to minutes at the start")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _stream(paths: List[str]) -> Iterator[Tuple[str, object]]:
    from e3pot.data.io import iter_atoms

    for path in paths:  # check_paths has made sure that they exist
        for k, atoms in enumerate(iter_atoms(path)):
            yield f"{path}, frame {k}", atoms


def _reference(atoms) -> Tuple[Optional[float], Optional[np.ndarray]]:
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    return results.get("energy", atoms.info.get("energy")), results.get("forces", atoms.arrays.get("forces"))


class _Errors:
    def __init__(self):
        self.e, self.e_atom, self.f = [], [], []

    def add(self, pred: dict, atoms) -> None:
        energy, forces = _reference(atoms)
        if energy is not None:
            self.e.append(pred["energy"] - float(energy))
            self.e_atom.append(self.e[-1] / len(atoms))
        if forces is not None:
            self.f.append((pred["forces"] - np.asarray(forces)).reshape(-1))

    def table(self) -> str:
        rows = []
        for name, unit, values in (("energy", "meV", self.e), ("energy / atom", "meV/atom", self.e_atom),
                                   ("forces", "meV/Å", self.f)):
            if len(values):
                err = 1000 * (np.concatenate(values) if name == "forces" else np.array(values))
                mean = "" if name == "forces" else f"{err.mean():+10.3f}"
                rows.append(f"| {name:<13} | {np.abs(err).mean():10.3f} | {np.sqrt((err ** 2).mean()):10.3f} | "
                            f"{mean:>10} | {unit:<8} |")
        if not rows:
            return ""
        head = ("| quantity      |        MAE |       RMSE | mean error | unit     |\n"
                "|---|---:|---:|---:|---|")
        return head + "\n" + "\n".join(rows)


OUTPUT_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}


def check_paths(args) -> str:
    """Refuse, before any work, output paths that would clash or fail at the end; returns the output format."""
    from e3pot.data.io import DataError

    if os.path.isdir(args.output):
        raise ValueError(f"-o {args.output}: is a directory; give a file name")
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"-o {args.output}: the extension {ext or '(none)'!r} names no format this command writes; "
                         "use .extxyz or .xyz (extended XYZ, predictions under e3pot_* keys) or .traj "
                         "(ASE trajectory, predictions as the frames' calculator results)")
    real = {name: os.path.realpath(path) for name, path in (("-o", args.output), ("--csv", args.csv)) if path}
    for name, path in real.items():
        given = args.output if name == "-o" else args.csv
        if os.path.isdir(path):
            raise ValueError(f"{name} {given}: is a directory; give a file name")
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise ValueError(f"{name} {given}: the folder {parent} does not exist")
        if any(os.path.realpath(p) == path for p in args.inputs):
            raise ValueError(f"{name} {given}: is also an input file; write the predictions to another file")
    if len(real) == 2 and real["-o"] == real["--csv"]:
        raise ValueError(f"--csv {args.csv} is the same file as -o {args.output}; give them different names")
    for path in args.inputs:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
    return OUTPUT_FORMATS[ext]


class _Writer:
    """Appends predicted structures to an extxyz text file or an ASE trajectory."""

    def __init__(self, path: str, fmt: str):
        self.fmt = fmt
        if fmt == "traj":
            from ase.io.trajectory import Trajectory

            self.handle = Trajectory(path, "w")
        else:
            self.handle = open(path, "w")

    def write(self, atoms, pred: dict) -> None:
        from ase.stress import full_3x3_to_voigt_6_stress

        stress = full_3x3_to_voigt_6_stress(pred["stress"]) if "stress" in pred else None
        if self.fmt == "traj":
            from ase.calculators.singlepoint import SinglePointCalculator

            atoms = atoms.copy()  # the input's own labels stay with the input
            results = {"energy": pred["energy"], "forces": pred["forces"], "energies": pred["energies"]}
            if stress is not None:
                results["stress"] = stress
            atoms.calc = SinglePointCalculator(atoms, **results)
            self.handle.write(atoms)
            return
        import ase.io

        atoms.info[PREFIX + "energy"] = pred["energy"]
        atoms.arrays[PREFIX + "forces"] = pred["forces"]
        atoms.arrays[PREFIX + "energies"] = pred["energies"]
        if stress is not None:
            atoms.info[PREFIX + "stress"] = stress
        ase.io.write(self.handle, atoms, format="extxyz")

    def close(self) -> None:
        self.handle.close()


def run(args) -> int:
    from e3pot.model.runtime import load_any
    from e3pot.predict import iter_predictions

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise ValueError(f"--memory-budget must be a positive number of GiB, got {args.memory_budget}")
    fmt = check_paths(args)
    model = load_any(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    pending: collections.deque = collections.deque()

    def source():
        for name, atoms in _stream(args.inputs):
            pending.append((name, atoms))
            yield name, atoms

    errors = _Errors()
    tmp = f"{args.output}.partial"
    csv_tmp = f"{args.csv}.partial" if args.csv else None  # like the output: complete or absent
    csv_fh = open(csv_tmp, "w", newline="") if csv_tmp else None
    writer = csv.writer(csv_fh) if csv_fh else None
    if writer:
        writer.writerow(["index", "source", "n_atoms", "energy_eV", "energy_per_atom_eV"])
    n = 0
    try:
        out = _Writer(tmp, fmt)
        try:
            bar = tqdm(unit="structure", disable=args.no_progress, desc="predicting")
            for pred in iter_predictions(model, source(), batch_size=args.batch_size, named=True,
                                         memory_budget=args.memory_budget):
                name, atoms = pending.popleft()
                errors.add(pred, atoms)
                out.write(atoms, pred)
                if writer:
                    writer.writerow([n, name, len(atoms), f"{pred['energy']:.10f}", f"{pred['energy'] / len(atoms):.10f}"])
                n += 1
                bar.update(1)
            bar.close()
        finally:
            out.close()
        os.replace(tmp, args.output)
        if csv_fh:
            csv_fh.close()
            os.replace(csv_tmp, args.csv)
    finally:
        if csv_fh:
            csv_fh.close()
        for path in (tmp, csv_tmp):
            if path and os.path.exists(path):
                os.remove(path)
    print(f"wrote {n} structures to {args.output}" + (f" and {args.csv}" if args.csv else ""))
    table = errors.table()
    if table:
        print("\nErrors against the reference labels in the inputs:\n" + table)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from e3pot.allocator import tune_allocator

    tune_allocator()
    from e3pot.data.io import DataError

    try:
        return run(args)
    except (DataError, FileNotFoundError, ValueError, MemoryError) as exc:
        print(f"e3pot predict: error: {exc}", file=sys.stderr)
        return 2
