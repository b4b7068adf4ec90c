"""``e3pot predict MODEL INPUT [INPUT ...] -o OUTPUT``: batch predictions from the shell.

Reads ASE-readable files and rMD17-style npz one structure at a time, with the label and unit
options of training and ``e3pot preprocess``, predicts in batches, and appends each structure to the
output: an ASE trajectory (``.traj``, predictions as each frame's calculator results) or extended
XYZ (``.extxyz``/``.xyz``) with the predictions under ``e3pot_*`` keys: ``e3pot_energy`` (eV),
``e3pot_forces`` (eV/Å, per atom), ``e3pot_energies`` (eV, per atom) and ``e3pot_stress`` (eV/Å^3,
Voigt order xx yy zz yz xz xy, periodic structures only).

With ``--uncertainty`` (MODEL a committee, ``a.pt,b.pt,c.pt``, or a shallow ensemble trained with
``model.heads > 1``) the predicted spreads go into the output too: ``e3pot_energy_std`` (eV),
``e3pot_forces_std`` (per atom, eV/Å) and ``e3pot_stress_std``; with reference labels, ``--plot`` then
draws the calibration (observed error against predicted spread) and ``--metrics-json`` adds its numbers.

Reference labels in the inputs (an energy, forces) give error tables (see :mod:`e3pot.metrics`),
per ``config_type`` too when the structures have one in ``atoms.info``; ``--plot`` draws them as a
parity plot (PNG) and ``--metrics-json`` writes them as JSON (meV, meV/atom, meV/Å). Structures
whose reference energy or forces are NaN or infinite are left out of the error tables, the plot and
the metrics, and counted in the report.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

from tqdm.auto import tqdm

EPILOG = ("Units: everything written is in eV and Å. With label options other than the defaults (--energy-key ... "
          "--stress-unit), and for npz inputs, each structure in -o has its positions in Å and its reference labels, "
          "as read and converted, as its energy (eV), forces (eV/Å) and stress (eV/Å^3); the input's own label "
          "entries are not copied. Otherwise the structures are written as they were read. "
          "Outputs (-o, --csv, --plot, --metrics-json): an output is never one of the inputs, an output "
          "that exists already is replaced only with --overwrite, and every output is written to a temporary "
          "file in its own folder and moved into place only when the whole run has succeeded: a failed run "
          "leaves existing files as they were and removes nothing but its own temporary files.")


def _parser() -> argparse.ArgumentParser:
    from e3pot.data.units import ENERGY_UNITS, LENGTH_UNITS, PRESSURE_UNITS
    from e3pot.files import OVERWRITE_HELP

    p = argparse.ArgumentParser(prog="e3pot predict", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    p.add_argument("model", help="model file (model.pt) or export; or a committee of them, comma-separated "
                                 "(a.pt,b.pt,c.pt): their mean is the prediction, their spread the uncertainty")
    p.add_argument("inputs", nargs="+", help="ASE-readable structure files (extxyz, xyz, traj, db, ...) or "
                                             "rMD17-style npz (coords, nuclear_charges, energies, forces)")
    p.add_argument("-o", "--output", required=True,
                   help="output file: .extxyz/.xyz (predictions under e3pot_* keys) or .traj (as calculator results)")
    p.add_argument("--csv", help="also write per-structure energies (and config_type) to this CSV file")
    p.add_argument("--plot", metavar="PNG",
                   help="write a parity plot (predicted against reference energy per atom and force components, "
                        "coloured by config_type) to this PNG file; with --uncertainty, the calibration plot "
                        "(observed error against predicted std, binned, with the ideal line); needs reference labels "
                        "and matplotlib")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write the predicted spreads (e3pot_energy_std, e3pot_forces_std per atom, "
                        "e3pot_stress_std; CSV: energy_std_eV, max_forces_std_eV_A) of a committee (MODEL: "
                        "a.pt,b.pt,...) or a shallow ensemble; with reference labels, the calibration in the report, "
                        "--plot and --metrics-json (Spearman rank correlation, miscalibration area)")
    p.add_argument("--metrics-json", metavar="PATH",
                   help="write the error metrics (overall and per config_type) to this JSON file; "
                        "needs reference labels")
    p.add_argument("--group-by", default="config_type", metavar="KEY",
                   help="the per-structure info key whose values group the metrics, the plot's colours and the "
                        "CSV's last column (default config_type); another key must occur in the inputs")
    p.add_argument("--energy-key", metavar="KEY", help="the reference energy's info key or calculator result "
                                                       "(default energy; npz: energies or E)")
    p.add_argument("--forces-key", metavar="KEY", help="the reference forces' per-atom array or calculator result "
                                                       "(default forces; npz: forces or F)")
    p.add_argument("--stress-key", metavar="KEY", help="the reference stress's info key or calculator result "
                                                       "(default stress)")
    p.add_argument("--energy-unit", default="eV", help=f"unit of the reference energies (forces: per length unit) "
                                                       f"in the inputs: {', '.join(ENERGY_UNITS)} (default eV)")
    p.add_argument("--length-unit", default="Å", help=f"unit of the positions and cells in the inputs: "
                                                      f"{', '.join(LENGTH_UNITS)} (default Å)")
    p.add_argument("--stress-unit", help=f"unit of the reference stress in the inputs: {', '.join(PRESSURE_UNITS)} "
                                         "(default: the energy unit per length unit cubed)")
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
    p.add_argument("--kernels", default="auto", choices=["auto", "torch", "cueq"],
                   help="what runs the edge convolutions: torch, cueq (cuEquivariance; pip install 'e3pot[cueq]') or "
                        "auto (default: cueq on a GPU with cuEquivariance's CUDA kernels installed, else torch)")
    p.add_argument("--radial", default="exact", choices=["exact", "table"],
                   help="run the radial networks exactly (default) or as cubic Hermite tables (e3 model files; the "
                        "same function to about 1e-11 relative; on a CPU no faster so far)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def model_paths(model: str, option: str = "MODEL") -> List[str]:
    """The model files of MODEL: one path, or a committee's paths separated by commas.

    A path that exists is one model, commas and all, unless splitting it at the commas also gives paths that
    all exist: that is ambiguous, and refused. Otherwise a path with commas is a committee, whose parts must
    all exist (an error names the first that does not) and none be empty."""
    if "," not in model:
        return [model]
    parts = model.split(",")
    whole = os.path.exists(model)
    if whole and all(part and os.path.exists(part) for part in parts):
        raise ValueError(f"{option} {model}: ambiguous: a file of that name exists, and so do "
                         f"{', '.join(parts)}, which the commas would make a committee of; rename the file or give "
                         "the committee's members by other paths (./name)")
    if whole:
        return [model]
    if any(not part.strip() for part in parts):
        raise ValueError(f"{option} {model}: an empty committee member (commas separate committee members: "
                         "a.pt,b.pt,c.pt)")
    missing = [part for part in parts if not os.path.exists(part)]
    if missing:
        also = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{option} {model}: no such model file: {missing[0]}{also}; commas separate "
                                f"committee members, and there is no file named {model} either")
    return parts


def _use_radial(model, radial: str):
    """``model`` with its radial networks run as ``radial`` says (:func:`e3pot.model.tables.use_radial`); a
    committee's members each so."""
    from e3pot.model.ensemble import Committee
    from e3pot.model.tables import use_radial

    if not isinstance(model, Committee):
        return use_radial(model, radial)
    members = []
    for name, member in zip(model.names, model.members):
        try:
            members.append(use_radial(member, radial))
        except ValueError as exc:
            raise ValueError(f"--radial {radial}: committee member {name}: {exc}") from None
    if all(a is b for a, b in zip(members, model.members)):
        return model
    return Committee(members, device=str(model.device), calibration=model.calibration, names=model.names)


def _outputs(args) -> List[Tuple[str, str]]:
    """(option, path) of the outputs the command was given."""
    return [(option, path) for option, path in (("-o", args.output), ("--csv", args.csv), ("--plot", args.plot),
                                                ("--metrics-json", args.metrics_json)) if path]


def check_args(args):
    """Refuse, before any work, bad numbers, unknown units and output paths that would clash or fail
    at the end (see :func:`e3pot.files.check_output`); returns the output format and the labels."""
    from e3pot.data.io import DataError, LabelSpec
    from e3pot.data.units import energy_factor, length_factor, stress_factor
    from e3pot.files import check_output
    from e3pot.model.kernels import check_kernels
    from e3pot.predict import OUTPUT_FORMATS

    check_kernels(args.kernels, args.compile)
    if args.uncertainty and args.compile:
        raise ValueError("--uncertainty with --compile: the compiled path runs one model's mean prediction only (a "
                         "shallow ensemble's heads' mean, and never a committee); leave out --compile for the "
                         "uncertainty")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.memory_budget is not None and not args.memory_budget > 0:
        raise ValueError(f"--memory-budget must be a positive number of GiB, got {args.memory_budget}")
    for option, check in (("--energy-unit", lambda: energy_factor(args.energy_unit)),
                          ("--length-unit", lambda: length_factor(args.length_unit)),
                          ("--stress-unit", lambda: stress_factor(args.stress_unit, "eV", "Å"))):
        try:
            check()
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in OUTPUT_FORMATS and not os.path.isdir(args.output):
        raise ValueError(f"-o {args.output}: the extension {ext or '(none)'!r} names no format this command writes; "
                         "use .extxyz or .xyz (extended XYZ, predictions under e3pot_* keys) or .traj "
                         "(ASE trajectory, predictions as the frames' calculator results)")
    if args.plot and os.path.splitext(args.plot)[1].lower() != ".png":
        raise ValueError(f"--plot {args.plot}: the plot is a PNG image; give a file name ending in .png")
    outputs = _outputs(args)
    for option, path in outputs:
        others = [(o, p) for o, p in outputs if o != option]
        check_output(path, option, inputs=[*model_paths(args.model), *args.inputs], overwrite=args.overwrite,
                     others=others)
    for path in args.inputs:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
    labels = LabelSpec(args.energy_key, args.forces_key, args.stress_key, args.energy_unit, args.length_unit,
                       args.stress_unit)
    return OUTPUT_FORMATS[ext], labels


def _items(paths: List[str], labels):
    """(source, atoms, frame) of every structure of the inputs, in order, one at a time (see iter_labelled)."""
    from e3pot.data.io import iter_labelled

    return itertools.chain.from_iterable(iter_labelled(path, labels) for path in paths)


def _check_inputs(args, labels) -> None:
    """Refuse, before any prediction, --plot and --metrics-json when they cannot be made and a
    --group-by key that no input structure has."""
    from e3pot.metrics import scan

    wanted = [flag for flag, path in (("--plot", args.plot), ("--metrics-json", args.metrics_json)) if path]
    if args.plot:
        from e3pot.plots import require_matplotlib

        require_matplotlib()
    key = None if args.group_by == "config_type" else args.group_by  # the default may be absent
    if not wanted and key is None:
        return
    has_refs, has_key, keys = scan(_items(args.inputs, labels), bool(wanted), key)
    if not has_refs:
        raise ValueError(f"{' and '.join(wanted)} {'needs' if len(wanted) == 1 else 'need'} reference labels, but no "
                         "structure in the inputs has a finite reference energy or forces (an 'energy' in info or "
                         "calculator results, a 'forces' array, or where --energy-key and --forces-key say)")
    if not has_key:
        few = ", ".join(repr(k) for k in keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        have = f"the info keys they have: {few}" if keys else "they have no info keys"
        raise ValueError(f"--group-by {key}: no input structure has the info key {key!r} ({have})")


def run(args) -> int:
    from e3pot.data.io import count_frames
    from e3pot.files import atomic_output
    from e3pot.metrics import Errors, group_of, iter_scored
    from e3pot.model.kernels import use_kernels
    from e3pot.model.runtime import load_any
    from e3pot.predict import PredictionWriter

    fmt, labels = check_args(args)
    paths = model_paths(args.model)
    if len(paths) > 1 and args.compile:
        raise ValueError("--compile runs one model file, not a committee")
    _check_inputs(args, labels)
    total = None if args.no_progress else count_frames(args.inputs)
    errors, n = Errors(args.group_by), 0
    uncertainty = None
    if args.uncertainty:
        from e3pot.calibration import UncertaintyErrors

        uncertainty = UncertaintyErrors()
    # Every output goes to a temporary file of its own; all of them replace their targets only
    # after the last one is complete, and a failure anywhere removes the temporary files alone.
    with contextlib.ExitStack() as stack:
        tmp = {option: stack.enter_context(atomic_output(path)) for option, path in _outputs(args)}
        out = stack.enter_context(PredictionWriter(tmp["-o"], fmt))
        rows = csv.writer(stack.enter_context(open(tmp["--csv"], "w", newline=""))) if args.csv else None
        if rows:
            rows.writerow(["index", "source", "n_atoms", "energy_eV", "energy_per_atom_eV", args.group_by]
                          + (["energy_std_eV", "max_forces_std_eV_A"] if args.uncertainty else []))
        from e3pot.model.tables import check_radial

        check_radial(args.radial, args.compile)
        model = _use_radial(use_kernels(load_any(paths if len(paths) > 1 else paths[0], device=args.device,
                                                 dtype=args.dtype, compile=args.compile), args.kernels), args.radial)
        if args.uncertainty:
            from e3pot.model.ensemble import describe, has_uncertainty, stored_heads

            if not has_uncertainty(model):
                why = "" if stored_heads(model) > 1 else ", which has no uncertainty"
                raise ValueError(f"--uncertainty needs a committee (MODEL: a.pt,b.pt,c.pt) or a shallow ensemble (a "
                                 f"model trained with model.heads > 1); {args.model} is {describe(model)}{why}")
        largest_spread = 0.0  # all spreads exactly 0: the members (or heads) predict the same
        bar = stack.enter_context(tqdm(total=total, unit="structure", disable=args.no_progress, desc="predicting"))
        for name, atoms, pred in iter_scored(model, _items(args.inputs, labels), errors, args.batch_size,
                                             args.memory_budget, uncertainty):
            out.write(atoms, pred)
            if rows:
                rows.writerow([n, name, len(atoms), f"{pred['energy']:.10f}", f"{pred['energy'] / len(atoms):.10f}",
                               group_of(atoms, args.group_by) or ""]
                              + ([f"{pred['energy_std']:.10f}", f"{float(pred['forces_std'].max()):.10f}"]
                                 if args.uncertainty else []))
            if args.uncertainty and largest_spread == 0:  # NaN counts as a spread: it is no agreement
                spreads = [abs(pred["energy_std"]), *abs(pred["forces_std"]).tolist()]
                largest_spread = max(float("inf") if v != v else v for v in spreads)
            n += 1
            bar.update(1)
        report = _report(args, errors, tmp, uncertainty)
    print(f"wrote {n} structures to {args.output}" + (f" and {args.csv}" if args.csv else ""))
    if args.uncertainty and n and largest_spread == 0:
        from e3pot.model.ensemble import identical_predictions_message

        print(f"e3pot predict: warning: {identical_predictions_message(model, 'every structure')}", file=sys.stderr)
    if report:
        print(report)
    return 0


def _report(args, errors, tmp: Dict[str, str], uncertainty=None) -> str:
    """The error tables, as text; the metrics JSON and the parity (or calibration) plot, written to their
    temporary files ``tmp[option]``."""
    metrics = errors.metrics()
    lines = [errors.report(metrics)]
    if (args.plot or args.metrics_json) and not errors.table(metrics):  # the inputs changed since _check_inputs
        raise ValueError("no structure had a finite reference energy or forces; no output, plot or metrics written")
    if uncertainty is not None and uncertainty.arrays():
        metrics["uncertainty"] = uncertainty.metrics()
        lines.append("Uncertainty against the errors (Spearman rank correlation of the spread and the absolute error; "
                     "miscalibration area, 0 when calibrated):\n" + uncertainty.report(metrics["uncertainty"]))
    if args.metrics_json:
        with open(tmp["--metrics-json"], "w", encoding="utf-8") as fh:  # strict JSON: missing values are null
            fh.write(json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        lines.append(f"wrote the metrics to {args.metrics_json}")
    if args.plot and uncertainty is not None:
        from e3pot.calibration import plot_calibration

        plot_calibration(tmp["--plot"], uncertainty)
        lines.append(f"wrote the calibration plot to {args.plot}")
    elif args.plot:
        from e3pot.plots import plot_errors

        plot_errors(tmp["--plot"], errors)
        lines.append(f"wrote the parity plot to {args.plot}")
    return "\n".join(line for line in lines if line)


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
