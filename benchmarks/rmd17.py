"""Accuracy on revised MD17 at a fixed training budget, next to published numbers.

    python benchmarks/rmd17.py --data /path/to/rmd17 --molecule aspirin --minutes 30
    python benchmarks/rmd17.py --data /path/to/rmd17 --molecule aspirin --minutes 5 \
        --learning-curve 50 100 250 500 950

Trains with configs/rmd17.yaml on ``rmd17_<molecule>_train_01.npz`` (950 train / 50 validation
frames, or the first N training frames for a learning curve), evaluates the saved model on the
1000 frames of ``rmd17_<molecule>_test_01.npz`` with :mod:`e3pot.metrics` (as ``e3pot predict
--energy-unit kcal/mol`` does), prints energy and force MAE and writes them with their provenance
(``benchmarks/results.py``) to ``--out``. Extra arguments after ``--`` go to the training command
(e.g. ``-- --model.num_layers 3``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import results  # noqa: E402  (benchmarks/results.py)

# MAE at 1000 training frames, energy meV / forces meV/Å, from Batatia et al., "MACE", NeurIPS 2022, Table 1.
PUBLISHED = {
    "aspirin": {"NequIP (l=3)": (2.3, 8.2), "Allegro": (2.3, 7.3), "MACE": (2.2, 6.6)},
    "ethanol": {"NequIP (l=3)": (0.4, 2.8), "Allegro": (0.4, 2.1), "MACE": (0.4, 2.1)},
    "malonaldehyde": {"NequIP (l=3)": (0.8, 5.1), "Allegro": (0.6, 3.6), "MACE": (0.8, 4.1)},
    "naphthalene": {"NequIP (l=3)": (0.9, 1.3), "Allegro": (0.2, 0.9), "MACE": (0.5, 1.6)},
    "paracetamol": {"NequIP (l=3)": (1.4, 5.9), "Allegro": (1.5, 4.9), "MACE": (1.3, 4.8)},
    "salicylic": {"NequIP (l=3)": (0.7, 4.0), "Allegro": (0.9, 2.9), "MACE": (0.9, 3.1)},
    "toluene": {"NequIP (l=3)": (0.3, 1.6), "Allegro": (0.4, 1.8), "MACE": (0.5, 1.5)},
    "uracil": {"NequIP (l=3)": (0.4, 3.1), "Allegro": (0.6, 1.8), "MACE": (0.5, 2.1)},
    "azobenzene": {"NequIP (l=3)": (0.7, 2.9), "Allegro": (1.2, 2.6), "MACE": (1.2, 3.0)},
    "benzene": {"NequIP (l=3)": (0.04, 0.3), "Allegro": (0.3, 0.2), "MACE": (0.4, 0.3)},
}


def evaluate_test(model_path: str, test_file: str, batch_size: int = 50) -> dict:
    """Energy MAE, RMSE and mean signed error (meV per structure), force MAE and RMSE (meV/Å) on an
    rMD17 test file (labels in kcal/mol), as ``e3pot predict --energy-unit kcal/mol`` scores it."""
    import e3pot
    from e3pot.data.io import LabelSpec, iter_labelled
    from e3pot.metrics import score

    errors = score(e3pot.load_model(model_path), iter_labelled(test_file, LabelSpec(energy_unit="kcal/mol")),
                   batch_size=batch_size)
    s = errors.summary()
    return {"n_test": s["n_structures"], "energy_mae_meV": s["energy_mae_meV"],
            "energy_rmse_meV": s["energy_rmse_meV"], "energy_mean_meV": s["energy_mean_meV"],
            "forces_mae_meV_A": s["forces_mae_meV_A"], "forces_rmse_meV_A": s["forces_rmse_meV_A"],
            "n_left_out_nonfinite": s["n_left_out_nonfinite"]}


def train(train_file: str, minutes: float, n_train: int | None, run_name: str, extra: list) -> tuple[str, float]:
    from e3pot.train.cli import main as train_main

    seconds = int(round(minutes * 60))
    args = ["--config", os.path.join(ROOT, "configs", "rmd17.yaml"), "--data.train_file", train_file,
            "--trainer.max_time", f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}",
            "--trainer.logger.init_args.name", run_name, "--trainer.enable_progress_bar", "false",
            "--output", os.path.join("runs", run_name, "model.pt")]
    if n_train is not None:
        args += ["--data.n_train", str(n_train)]
    t0 = time.perf_counter()
    path = train_main(args + extra)
    return path, time.perf_counter() - t0


def plot_curve(points: list, path: str, molecule: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install e3pot[bench]); no plot written", file=sys.stderr)
        return None
    n = [p["n_train"] for p in points]
    f = [p["forces_mae_meV_A"] for p in points]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.loglog(n, f, "o-", label="e3pot")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xticks(n)
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_yticks(sorted({round(v, -1) for v in f} | {round(min(f) * 0.9, -1)}))
    ax.set_xlabel("training frames")
    ax.set_ylabel("force MAE on test (meV/Å)")
    ax.set_title(f"rMD17 {molecule}, {points[0]['minutes']:g} min per point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with rmd17_<molecule>_{train,test}_01.npz")
    p.add_argument("--molecule", default="aspirin")
    p.add_argument("--minutes", type=float, default=30.0, help="training wall time per run")
    p.add_argument("--learning-curve", type=int, nargs="*", help="training-set sizes (e.g. 50 100 250 500 950)")
    p.add_argument("--out", default=results.FOLDER,
                   help="folder of the results (<name>.json with provenance, <name>.md, the learning curve's PNG); "
                        "default benchmarks/results")
    args = p.parse_args(argv)

    train_file = os.path.join(args.data, f"rmd17_{args.molecule}_train_01.npz")
    test_file = os.path.join(args.data, f"rmd17_{args.molecule}_test_01.npz")
    for path in (train_file, test_file):
        if not os.path.exists(path):
            p.error(f"no such file: {path}")
    os.makedirs(args.out, exist_ok=True)
    sizes = args.learning_curve or [None]
    points = []
    for n in sizes:
        name = f"rmd17-{args.molecule}-{n or 950}-{args.minutes:g}min"
        model_path, wall = train(train_file, args.minutes, n, name, extra)
        res = evaluate_test(model_path, test_file)
        res.update(n_train=n or 950, minutes=args.minutes, wall_s=wall, model=model_path)
        points.append(res)
        print(f"n_train={res['n_train']}: energy MAE {res['energy_mae_meV']:.2f} meV, "
              f"force MAE {res['forces_mae_meV_A']:.2f} meV/Å ({wall / 60:.1f} min)", flush=True)

    lines = ["| model | training frames | budget | energy MAE (meV) | force MAE (meV/Å) | source |",
             "|---|---|---|---|---|---|"]
    for r in points:
        lines.append(f"| e3pot | {r['n_train']} | {args.minutes:g} min CPU | {r['energy_mae_meV']:.2f} | "
                     f"{r['forces_mae_meV_A']:.2f} | this run |")
    for name, (e, f) in PUBLISHED.get(args.molecule, {}).items():
        lines.append(f"| {name} | 950 (+50 val) | days, GPU | {e} | {f} | Batatia et al. 2022, Table 1 |")
    title = (f"rMD17 {args.molecule}, test split 01 ({points[0]['n_test']} frames), "
             f"{args.minutes:g} min of training per run on this machine")
    table = title + "\n\n" + "\n".join(lines)
    print("\n" + table)
    out = {"molecule": args.molecule, "minutes": args.minutes, "points": points}
    tag = f"rmd17_{args.molecule}_{args.minutes:g}min" + ("_curve" if args.learning_curve else "")
    print(f"\nresults: {results.write(tag, out, table, folder=args.out)} and .md")
    if args.learning_curve:
        png = plot_curve(points, os.path.join(args.out, tag + ".png"), args.molecule)
        if png:
            print(f"\nlearning curve: {png}")
    return out


if __name__ == "__main__":
    main()
