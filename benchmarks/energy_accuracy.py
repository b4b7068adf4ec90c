"""Energy accuracy at a fixed training budget: MAE, RMSE and the mean signed error (the offset).

    python benchmarks/energy_accuracy.py --dataset 3bpa --data ../shared/datasets --minutes 30
    python benchmarks/energy_accuracy.py --dataset aspirin --data ../shared/datasets --minutes 30

* ``3bpa``: trains on ``3bpa/train_300K.xyz`` (450 train / 50 validation frames, split_seed 0) with
  the isolated-atom energies of ``3bpa/iso_atoms.xyz`` as E0s, and tests on the 500 frames of
  ``3bpa/train_mixedT.xyz`` (MD at 300-1200 K, not seen in training) and on the validation frames.
  Hyperparameters of configs/rmd17.yaml with NequIP's default width and cutoff (32 features, 5 Å).
* ``aspirin``: ``configs/rmd17.yaml`` on ``rmd17/rmd17_aspirin_train_01.npz``, tested on the 1000
  frames of ``rmd17_aspirin_test_01.npz``.

Both use a per-atom energy : force loss of 1 : 1 unless ``--forces-weight`` says otherwise. The test
errors come from :mod:`e3pot.metrics` (as ``e3pot predict`` scores them), the validation energy MAE of
every epoch from the run's ``metrics.csv``. The results go to ``--out`` with their provenance
(``benchmarks/results.py``). Extra arguments after ``--`` go to the training command.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import results  # noqa: E402  (benchmarks/results.py)


def read(path: str, energy_unit: str = "eV", val_of_split: bool = False) -> list:
    """Frames of ``path``; with ``val_of_split``, the 50 validation frames of split_seed 0."""
    from e3pot.data.io import LabelSpec, read_frames

    frames = read_frames(path, LabelSpec(energy_unit=energy_unit), require=("energy", "forces"))
    if val_of_split:  # as E3PotDataModule(n_val=50, split_seed=0)
        frames = [frames[k] for k in np.random.default_rng(0).permutation(len(frames))[:50]]
    return frames


def errors(model_path: str, frames: list) -> dict:
    """Energy MAE, RMSE, mean signed error and standard deviation of the errors (meV per structure),
    force MAE (meV/Å), from :mod:`e3pot.metrics` (as ``e3pot predict`` scores them)."""
    import e3pot
    from e3pot.metrics import score

    s = score(e3pot.load_model(model_path), frames, batch_size=50).summary()
    return {"n": s["n_structures"], "energy_mae_meV": s["energy_mae_meV"], "energy_rmse_meV": s["energy_rmse_meV"],
            "energy_mean_meV": s["energy_mean_meV"], "energy_std_meV": s["energy_std_meV"],
            "forces_mae_meV_A": s["forces_mae_meV_A"]}


def val_curve(run_dir: str) -> list:
    """(epoch, validation energy MAE meV, validation force MAE meV/Å) from metrics.csv."""
    out = []
    with open(os.path.join(run_dir, "metrics.csv")) as fh:
        for row in csv.DictReader(fh):
            if row.get("val/energy_mae_meV"):
                out.append((int(row["epoch"]), float(row["val/energy_mae_meV"]), float(row["val/forces_mae_meV_A"])))
    return out


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["3bpa", "aspirin"], required=True)
    p.add_argument("--data", required=True, help="the datasets folder (with 3bpa/ and rmd17/)")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--forces-weight", type=float, default=1.0, help="per-atom energy weight is 1")
    p.add_argument("--tag", default="", help="added to the run name and the result file")
    p.add_argument("--out", default=results.FOLDER,
                   help="folder of the results (<name>.json with provenance, <name>.md); default benchmarks/results")
    args = p.parse_args(argv)

    from e3pot.train.cli import main as train_main

    if args.dataset == "3bpa":
        train_file = os.path.join(args.data, "3bpa", "train_300K.xyz")
        tests = {"validation (300 K, 50)": read(train_file, val_of_split=True),
                 "mixedT (300-1200 K, 500)": read(os.path.join(args.data, "3bpa", "train_mixedT.xyz"))}
        data_args = ["--data.n_val", "50", "--data.energy_unit", "eV", "--model.e0s",
                     os.path.join(args.data, "3bpa", "iso_atoms.xyz"), "--data.elements", "[H, C, N, O]",
                     "--model.num_features", "32", "--model.r_max", "5.0"]  # NequIP's defaults
    else:
        train_file = os.path.join(args.data, "rmd17", "rmd17_aspirin_train_01.npz")
        tests = {"test (1000)": read(os.path.join(args.data, "rmd17", "rmd17_aspirin_test_01.npz"), "kcal/mol")}
        data_args = []
    name = f"energy-{args.dataset}-{args.minutes:g}min{args.tag}"
    seconds = int(round(args.minutes * 60))
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    model_path = train_main([
        "--config", os.path.join(ROOT, "configs", "rmd17.yaml"), "--data.train_file", train_file, *data_args,
        "--model.energy_weight", "1", "--model.forces_weight", str(args.forces_weight),
        "--trainer.max_time", f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}",
        "--trainer.logger.init_args.name", name, "--trainer.enable_progress_bar", "false",
        "--output", os.path.join("runs", name, "model.pt"), *extra])
    wall = time.perf_counter() - t0
    run_dir = sorted(glob.glob(os.path.join("runs", name, "version_*")), key=os.path.getmtime)[-1]
    result = {"dataset": args.dataset, "minutes": args.minutes, "wall_s": wall, "model": model_path,
              "curve": val_curve(run_dir), "tests": {}}
    for label, frames in tests.items():
        result["tests"][label] = errors(model_path, frames)

    lines = [f"{args.dataset}: {args.minutes:g} min of training ({len(result['curve'])} epochs)", "",
             "| frames | energy MAE (meV) | energy RMSE (meV) | mean error (meV) | force MAE (meV/Å) |",
             "|---|---|---|---|---|"]
    for label, r in result["tests"].items():
        lines.append(f"| {label} | {r['energy_mae_meV']:.2f} | {r['energy_rmse_meV']:.2f} | "
                     f"{r['energy_mean_meV']:+.2f} | {r['forces_mae_meV_A']:.2f} |")
    curve = result["curve"]
    picks = sorted({curve[int(round(k * (len(curve) - 1) / 5))][0] for k in range(6)}) if curve else []
    lines += ["", "validation energy MAE (meV) / force MAE (meV/Å) by epoch: " +
              ", ".join(f"{e}: {em:.1f} / {fm:.1f}" for e, em, fm in curve if e in picks)]
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\nresults: {results.write(name, result, table, folder=args.out)} and .md")
    return result


if __name__ == "__main__":
    main()
