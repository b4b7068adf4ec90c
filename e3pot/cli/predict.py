"""``e3pot predict MODEL INPUT [INPUT ...] -o OUTPUT``: batch predictions from the shell.

Reads ASE-readable files one structure at a time, predicts in batches, and appends each
structure to the output extxyz with the predictions under ``e3pot_*`` keys:
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
    p.add_argument("-o", "--output", required=True, help="output extxyz file")
    p.add_argument("--csv", help="also write per-structure energies to this CSV file")
    p.add_argument("--batch-size", type=int, default=32, help="structures per batch (default 32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's own")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _stream(paths: List[str]) -> Iterator[Tuple[str, object]]:
    from e3pot.data.io import DataError, iter_atoms

    for path in paths:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
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


def run(args) -> int:
    import ase.io

    from e3pot.model.runtime import load_any
    from e3pot.predict import iter_predictions

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = load_any(args.model, device=args.device, dtype=args.dtype)
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
        with open(tmp, "w") as out:
            bar = tqdm(unit="structure", disable=args.no_progress, desc="predicting")
            for pred in iter_predictions(model, source(), batch_size=args.batch_size, named=True):
                name, atoms = pending.popleft()
                errors.add(pred, atoms)
                atoms.info[PREFIX + "energy"] = pred["energy"]
                atoms.arrays[PREFIX + "forces"] = pred["forces"]
                atoms.arrays[PREFIX + "energies"] = pred["energies"]
                if "stress" in pred:
                    from ase.stress import full_3x3_to_voigt_6_stress

                    atoms.info[PREFIX + "stress"] = full_3x3_to_voigt_6_stress(pred["stress"])
                ase.io.write(out, atoms, format="extxyz")
                if writer:
                    writer.writerow([n, name, len(atoms), f"{pred['energy']:.10f}", f"{pred['energy'] / len(atoms):.10f}"])
                n += 1
                bar.update(1)
            bar.close()
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
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"e3pot predict: error: {exc}", file=sys.stderr)
        return 2
