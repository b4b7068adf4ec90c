"""``e3pot predict MODEL INPUT [INPUT ...] -o OUTPUT``: batch predictions from the shell.

Reads ASE-readable files one structure at a time, predicts in batches, and appends each
structure to the output: an ASE trajectory (``.traj``, predictions as each frame's calculator
results) or extended XYZ (``.extxyz``/``.xyz``) with the predictions under ``e3pot_*`` keys:
``e3pot_energy`` (eV), ``e3pot_forces`` (eV/Å, per atom), ``e3pot_energies`` (eV, per atom) and
``e3pot_stress`` (eV/Å^3, Voigt order xx yy zz yz xz xy, periodic structures only).

Reference labels in the inputs (an energy, forces) give error tables, per ``config_type`` too
when the structures have one in ``atoms.info``; ``--plot`` draws them as a parity plot (PNG) and
``--metrics-json`` writes them as JSON (meV, meV/atom, meV/Å). Structures whose reference energy
or forces are NaN or infinite are left out of the error tables, the plot and the metrics, and
counted in the report.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import itertools
import json
import os
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

PREFIX = "e3pot_"


EPILOG = ("Outputs (-o, --csv, --plot, --metrics-json): an output is never one of the inputs, an output "
          "that exists already is replaced only with --overwrite, and every output is written to a temporary "
          "file in its own folder and moved into place only when the whole run has succeeded: a failed run "
          "leaves existing files as they were and removes nothing but its own temporary files.")


def _parser() -> argparse.ArgumentParser:
    from e3pot.files import OVERWRITE_HELP

    p = argparse.ArgumentParser(prog="e3pot predict", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    p.add_argument("model", help="model file (model.pt) or TorchScript export")
    p.add_argument("inputs", nargs="+", help="ASE-readable structure files (extxyz, xyz, traj, db, ...)")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .extxyz/.xyz (predictions under e3pot_* keys) or .traj (as calculator results)")
    p.add_argument("--csv", help="also write per-structure energies (and config_type) to this CSV file")
    p.add_argument("--plot", metavar="PNG",
                   help="write a parity plot (predicted against reference energy per atom and force components, "
                        "coloured by config_type) to this PNG file; needs reference labels and matplotlib")
    p.add_argument("--metrics-json", metavar="PATH",
                   help="write the error metrics (overall and per config_type) to this JSON file; "
                        "needs reference labels")
    p.add_argument("--group-by", default="config_type", metavar="KEY",
                   help="the per-structure info key whose values group the metrics, the plot's colours and the "
                        "CSV's last column (default config_type); another key must occur in the inputs")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
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


def _nonfinite_labels(energy, forces) -> List[str]:
    """The reference labels (``energy``, ``forces``) that hold a NaN or an infinity."""
    bad = []
    if energy is not None and not np.all(np.isfinite(np.asarray(energy, dtype=float))):
        bad.append("energy")
    if forces is not None and not np.all(np.isfinite(np.asarray(forces, dtype=float))):
        bad.append("forces")
    return bad


def _config_type(atoms, key: str = "config_type") -> Optional[str]:
    value = atoms.info.get(key)
    return None if value is None else str(value)


def _scan_inputs(paths: List[str], references: bool, group_by: Optional[str]) -> Tuple[bool, bool, List[str]]:
    """Read the inputs until they are known to have a structure with finite reference labels (when
    ``references``) and one with the info key ``group_by`` (when given): labelled, keyed inputs cost
    one structure; only inputs that lack them are read through.

    Returns (has finite references, has the key, the info keys seen, in order of appearance).
    """
    has_refs, has_key, keys = not references, group_by is None, {}
    for _, atoms in _stream(paths):
        if not has_refs:
            energy, forces = _reference(atoms)
            has_refs = (energy is not None or forces is not None) and not _nonfinite_labels(energy, forces)
        if not has_key:
            has_key = group_by in atoms.info
            keys.update(dict.fromkeys(atoms.info))
        if has_refs and has_key:
            break
    return has_refs, has_key, list(keys)


NO_TYPE = "(none)"  # the config_type of structures without one, when others have one
QUANTITIES = {"energy": "meV", "energy_per_atom": "meV/atom", "forces": "meV/Å"}


class _Errors:
    """Predictions next to the inputs' reference labels (eV, eV/Å), with each structure's config_type.

    A structure whose reference energy or any force component is NaN or infinite is left out
    (both its energy and its forces) and counted in ``left_out``."""

    def __init__(self, group_by: str = "config_type"):
        self.group_by = group_by
        self.e_pred, self.e_ref, self.n_atoms, self.e_type = [], [], [], []
        self.f_pred, self.f_ref, self.f_type = [], [], []
        self.counts: collections.Counter = collections.Counter()  # structures with a label, per type
        self.typed = False
        self.left_out = 0  # structures with non-finite reference labels
        self.first_left_out: Optional[str] = None  # "file, frame k (energy)" of the first of them

    def add(self, pred: dict, atoms, name: str = "?") -> None:
        energy, forces = _reference(atoms)
        ctype = _config_type(atoms, self.group_by)
        self.typed |= ctype is not None
        ctype = NO_TYPE if ctype is None else ctype
        bad = _nonfinite_labels(energy, forces)
        if bad:
            self.left_out += 1
            if self.first_left_out is None:
                self.first_left_out = f"{name} ({' and '.join(bad)})"
            return
        if energy is not None:
            self.e_pred.append(pred["energy"])
            self.e_ref.append(float(energy))
            self.n_atoms.append(len(atoms))
            self.e_type.append(ctype)
        if forces is not None:
            self.f_pred.append(np.asarray(pred["forces"], dtype=float).reshape(-1))
            self.f_ref.append(np.asarray(forces, dtype=float).reshape(-1))
            self.f_type.append(np.full(len(self.f_ref[-1]), ctype, dtype=object))
        if energy is not None or forces is not None:
            self.counts[ctype] += 1

    def left_out_line(self) -> str:
        """The report's line on structures left out for non-finite labels ("" when there are none)."""
        if not self.left_out:
            return ""
        what = "structure" if self.left_out == 1 else "structures"
        return (f"left out of the error metrics: {self.left_out} {what} with a NaN or infinite reference energy or "
                f"forces (the first: {self.first_left_out})")

    def arrays(self) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(predicted, reference, config_type) per quantity: energy (eV), energy_per_atom (eV/atom)
        and force components (eV/Å)."""
        e_pred, e_ref, n = np.array(self.e_pred, float), np.array(self.e_ref, float), np.array(self.n_atoms)
        e_type = np.array(self.e_type, dtype=object)
        return {"energy": (e_pred, e_ref, e_type), "energy_per_atom": (e_pred / n, e_ref / n, e_type),
                "forces": (_concat(self.f_pred, float), _concat(self.f_ref, float), _concat(self.f_type, object))}

    def metrics(self, data: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
        """MAE, RMSE, mean signed error (prediction − reference) and count of :meth:`arrays`, overall
        and per config_type, in meV, meV/atom and meV/Å; ``None`` where there is no reference."""
        from e3pot.plots import error_stats, stats_by_type

        overall = {q: error_stats(pred, ref, 1000.0) for q, (pred, ref, _) in data.items()}
        by_type = {name: {"n_structures": n, **dict.fromkeys(QUANTITIES)} for name, n in self.counts.items()}
        for q, (pred, ref, types) in data.items():
            for name, stats in stats_by_type(pred, ref, types, 1000.0).items():
                by_type[name][q] = stats
        return {"units": QUANTITIES, "n_structures": sum(self.counts.values()), "overall": overall,
                "group_by": self.group_by, "by_config_type": by_type if self.typed else {},
                "n_left_out_nonfinite": self.left_out, "first_left_out_nonfinite": self.first_left_out}

    def table(self, metrics: dict) -> str:
        rows = []
        for key, name in (("energy", "energy"), ("energy_per_atom", "energy / atom"), ("forces", "forces")):
            s = metrics["overall"][key]
            if s:
                mean = "" if key == "forces" else f"{s['mean']:+10.3f}"
                rows.append(f"| {name:<13} | {s['mae']:10.3f} | {s['rmse']:10.3f} | {mean:>10} | "
                            f"{QUANTITIES[key]:<8} |")
        if not rows:
            return ""
        head = ("| quantity      |        MAE |       RMSE | mean error | unit     |\n"
                "|---|---:|---:|---:|---|")
        return head + "\n" + "\n".join(rows)


def _concat(parts: List[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _cell(stats: Optional[dict], key: str) -> str:
    return "-" if stats is None else f"{stats[key]:.3f}"


def _type_table(metrics: dict, group_by: str = "config_type") -> str:
    """Energy per atom (meV/atom) and force (meV/Å) MAE and RMSE per config_type and for all, aligned."""
    head = [group_by, "structures", "E/atom MAE", "E/atom RMSE", "forces MAE", "forces RMSE"]
    overall = {**metrics["overall"], "n_structures": metrics["n_structures"]}
    rows = [head]
    for name, m in [*metrics["by_config_type"].items(), ("(all)", overall)]:
        e, f = m["energy_per_atom"], m["forces"]
        rows.append([name, str(m["n_structures"]), *(_cell(s, key) for s in (e, f) for key in ("mae", "rmse"))])
    widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
    lines = ["| " + " | ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]) + " |"
             for row in rows]
    return "\n".join([lines[0], "|---|" + "---:|" * (len(head) - 1), *lines[1:]])


OUTPUT_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}


def _outputs(args) -> List[Tuple[str, str]]:
    """(option, path) of the outputs the command was given."""
    return [(option, path) for option, path in (("-o", args.output), ("--csv", args.csv), ("--plot", args.plot),
                                                ("--metrics-json", args.metrics_json)) if path]


def check_paths(args) -> str:
    """Refuse, before any work, output paths that would clash or fail at the end (see
    :func:`e3pot.files.check_output`); returns the output format."""
    from e3pot.data.io import DataError
    from e3pot.files import check_output

    ext = os.path.splitext(args.output)[1].lower()
    if ext not in OUTPUT_FORMATS and not os.path.isdir(args.output):
        raise ValueError(f"-o {args.output}: the extension {ext or '(none)'!r} names no format this command writes; "
                         "use .extxyz or .xyz (extended XYZ, predictions under e3pot_* keys) or .traj "
                         "(ASE trajectory, predictions as the frames' calculator results)")
    if args.plot and os.path.splitext(args.plot)[1].lower() != ".png":
        raise ValueError(f"--plot {args.plot}: the plot is a PNG image; give a file name ending in .png")
    outputs = _outputs(args)
    inputs = [args.model, *args.inputs]
    for option, path in outputs:
        others = [(o, p) for o, p in outputs if o != option]
        check_output(path, option, inputs=inputs, overwrite=args.overwrite, others=others)
    for path in args.inputs:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
    return OUTPUT_FORMATS[ext]


def _count_xyz(path: str) -> int:
    """Frames in an (extended) XYZ file, from its atom-count lines alone."""
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


def count_frames(paths: List[str]) -> Optional[int]:
    """The number of structures in ``paths`` when it is cheap to know (extended XYZ files are scanned
    for their atom-count lines, ASE trajectories and databases say), else ``None``."""
    total = 0
    try:
        for path in paths:
            ext = os.path.splitext(path)[1].lower()
            if ext in (".extxyz", ".xyz"):
                total += _count_xyz(path)
            elif ext == ".traj":
                from ase.io.trajectory import Trajectory

                with Trajectory(path) as traj:
                    total += len(traj)
            elif ext == ".db":
                import ase.db

                total += ase.db.connect(path).count()
            else:
                return None
    except Exception:  # the count only feeds the progress bar; reading the file reports real problems
        return None
    return total


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
    from e3pot.files import atomic_output
    from e3pot.model.runtime import load_any
    from e3pot.predict import iter_predictions

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise ValueError(f"--memory-budget must be a positive number of GiB, got {args.memory_budget}")
    fmt = check_paths(args)
    _check_inputs(args)
    total = None if args.no_progress else count_frames(args.inputs)
    pending: collections.deque = collections.deque()

    def source():
        for name, atoms in _stream(args.inputs):
            pending.append((name, atoms))
            yield name, atoms

    errors = _Errors(args.group_by)
    n = 0
    # Every output goes to a temporary file of its own; all of them replace their targets only
    # after the last one is complete, and a failure anywhere removes the temporary files alone.
    with contextlib.ExitStack() as stack:
        tmp = {option: stack.enter_context(atomic_output(path)) for option, path in _outputs(args)}
        out = _Writer(tmp["-o"], fmt)
        stack.callback(out.close)
        writer = None
        if args.csv:
            writer = csv.writer(stack.enter_context(open(tmp["--csv"], "w", newline="")))
            writer.writerow(["index", "source", "n_atoms", "energy_eV", "energy_per_atom_eV", args.group_by])
        model = load_any(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
        bar = stack.enter_context(tqdm(total=total, unit="structure", disable=args.no_progress, desc="predicting"))
        for pred in iter_predictions(model, source(), batch_size=args.batch_size, named=True,
                                     memory_budget=args.memory_budget):
            name, atoms = pending.popleft()
            errors.add(pred, atoms, name)
            out.write(atoms, pred)
            if writer:
                writer.writerow([n, name, len(atoms), f"{pred['energy']:.10f}",
                                 f"{pred['energy'] / len(atoms):.10f}", _config_type(atoms, args.group_by) or ""])
            n += 1
            bar.update(1)
        report = _report(args, errors, tmp)
    print(f"wrote {n} structures to {args.output}" + (f" and {args.csv}" if args.csv else ""))
    if report:
        print(report)
    return 0


def _check_inputs(args) -> None:
    """Refuse, before any prediction, --plot and --metrics-json when they cannot be made and a
    --group-by key that no input structure has."""
    wanted = [flag for flag, path in (("--plot", args.plot), ("--metrics-json", args.metrics_json)) if path]
    if args.plot:
        from e3pot.plots import require_matplotlib

        require_matplotlib()
    key = None if args.group_by == "config_type" else args.group_by  # the default may be absent
    if not wanted and key is None:
        return
    has_refs, has_key, keys = _scan_inputs(args.inputs, bool(wanted), key)
    if not has_refs:
        raise ValueError(f"{' and '.join(wanted)} {'needs' if len(wanted) == 1 else 'need'} reference labels, but no "
                         "structure in the inputs has a finite reference energy or forces (an 'energy' in info or "
                         "calculator results, a 'forces' array)")
    if not has_key:
        few = ", ".join(repr(k) for k in keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        have = f"the info keys they have: {few}" if keys else "they have no info keys"
        raise ValueError(f"--group-by {key}: no input structure has the info key {key!r} ({have})")


def _report(args, errors: _Errors, tmp: Dict[str, str]) -> str:
    """The error tables, as text; the parity plot and the metrics JSON, written to their temporary
    files ``tmp[option]``."""
    data = errors.arrays()
    metrics = errors.metrics(data)
    table = errors.table(metrics)
    lines = []
    if table:
        lines.append("\nErrors against the reference labels in the inputs:\n" + table)
    if table and errors.typed:
        lines.append(f"\nBy {args.group_by} (energy per atom in meV/atom, forces in meV/Å):\n"
                     + _type_table(metrics, args.group_by))
    if errors.left_out:
        lines.append(("\n" if table else "") + errors.left_out_line())
    if (args.plot or args.metrics_json) and not table:  # the inputs changed since _check_inputs
        raise ValueError("no structure had a finite reference energy or forces; no output, plot or metrics written")
    if args.metrics_json:
        _write_json(tmp["--metrics-json"], metrics)
        lines.append(f"wrote the metrics to {args.metrics_json}")
    if args.plot:
        from e3pot.plots import parity_plot

        (e_pred, e_ref, e_type), (f_pred, f_ref, f_type) = data["energy_per_atom"], data["forces"]
        if not errors.typed:
            e_type = f_type = None
        parity_plot(tmp["--plot"], e_pred, e_ref, f_pred, f_ref, e_type, f_type)
        lines.append(f"wrote the parity plot to {args.plot}")
    return "\n".join(lines)


def _write_json(path: str, payload: dict) -> None:
    """Write ``payload`` as strict JSON (no NaN or infinity: missing values are null)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from e3pot.allocator import tune_allocator

    tune_allocator()
    from e3pot.data.io import DataError
    from e3pot.files import OutputError
    from e3pot.plots import MissingMatplotlib

    try:
        return run(args)
    except (OutputError, DataError, OSError, ValueError, MemoryError, MissingMatplotlib) as exc:
        print(f"e3pot predict: error: {_one_line(exc)}", file=sys.stderr)
        return 2
