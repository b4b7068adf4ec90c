"""Learning curves on revised MD17: test MAE against training-set size for several model kinds, every
point trained for the same wall-clock time.

    python benchmarks/learning_curves.py --data ../shared/datasets/rmd17 --molecules aspirin ethanol \
        --sizes 25 50 100 250 500 950 --seconds 60 \
        --models e3-l2 e3-l1 invariant egnn cartesian cartesian-aug --jobs 2 --threads 1 \
        --out benchmarks/results/learning_curves

A point (molecule, model, N) trains configs/rmd17.yaml plus the model's overrides (``MODELS``) on the
first N training frames of ``rmd17_<molecule>_train_01.npz`` (50 frames held out for validation, as in
rmd17.py) for ``--seconds`` of wall time, then evaluates the saved model on the 1000 frames of
``rmd17_<molecule>_test_01.npz``. Points run as separate processes, ``--jobs`` at a time with
``--threads`` torch threads each; the test errors come from :mod:`e3pot.metrics` (rmd17.py's
``evaluate_test``, as ``e3pot predict --energy-unit kcal/mol`` scores them). Each writes
``<out>/points/<point>.json``; a point whose file exists is not run again, so an interrupted run
resumes. Runs, models and logs go under ``--out``; the summary is ``learning_curves.{json,md,png}``
there, the JSON and the table with the run's provenance (``benchmarks/results.py``). Extra arguments
after ``--`` go to every training command.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import results  # noqa: E402  (benchmarks/results.py)

# Every model starts from configs/rmd17.yaml; these overrides make the kinds differ.
MODELS = {
    "e3-l2": {"label": "e3pot l=2", "args": ["--model.l_max", "2"]},
    "e3-l1": {"label": "e3pot l=1", "args": ["--model.l_max", "1"]},
    "invariant": {"label": "invariant l=0 (distances only)", "args": ["--model.l_max", "0"]},
    "egnn": {"label": "EGNN", "args": ["--model.kind", "egnn"]},
    "cartesian": {"label": "Cartesian, no augmentation", "args": ["--model.kind", "cartesian"]},
    "cartesian-aug": {"label": "Cartesian + rotation augmentation",
                      "args": ["--model.kind", "cartesian", "--data.augment", "true"]},
}
MAX_EPOCHS = 10_000_000  # the wall-clock budget is what stops a run
SETTINGS = ("seconds", "threads", "args")  # a stored point counts as done only if these match


def point_file(out: str, name: str) -> str:
    return os.path.join(out, "points", name + ".json")


def read_progress(metrics_csv: str) -> tuple[int, int]:
    """Epochs (the last may be partial) and optimiser steps of a run, from its CSVLogger metrics."""
    with open(metrics_csv) as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/loss")]  # one row per finished training epoch
    return len({r["epoch"] for r in rows}), max((int(r["step"]) + 1 for r in rows), default=0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_point(spec: dict) -> dict:
    """Train and evaluate one point (in a child process whose working directory is ``--out``)."""
    import torch

    torch.set_num_threads(spec["threads"])
    from rmd17 import evaluate_test, train  # puts the repository first on sys.path

    import e3pot
    from e3pot.files import write_text

    shutil.rmtree(os.path.join("runs", spec["name"]), ignore_errors=True)  # a failed earlier try
    model_path, wall = train(spec["train_file"], spec["seconds"] / 60, spec["n_train"], spec["name"], spec["args"])
    t0 = time.perf_counter()
    res = evaluate_test(model_path, spec["test_file"])
    eval_s = time.perf_counter() - t0
    (metrics_csv,) = glob.glob(os.path.join("runs", spec["name"], "version_*", "metrics.csv"))
    epochs, steps = read_progress(metrics_csv)
    model = e3pot.load_model(model_path)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    res.update(spec, train_wall_s=wall, eval_s=eval_s, epochs=epochs, steps=steps,
               n_params=sum(p.numel() for p in model.parameters()), model_config=dict(model.config),
               model_file=os.path.abspath(model_path),
               device=device, torch_threads=torch.get_num_threads())
    path = point_file(".", spec["name"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, json.dumps(res, indent=1, default=float))  # a point file exists only once the point is complete
    return res


def launch(spec: dict, out: str) -> tuple[int | str, str]:
    """Run one point in a child process; returns its exit code (or "timeout") and its log file."""
    log = os.path.join(out, "logs", spec["name"] + ".log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with open(log, "w") as fh:
        try:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--point", json.dumps(spec)],
                                  stdout=fh, stderr=subprocess.STDOUT, cwd=out, env=env,
                                  timeout=3 * spec["seconds"] + 1800)
        except subprocess.TimeoutExpired:
            return "timeout", log
    return proc.returncode, log


def slope(points: list, key: str) -> float | None:
    """Least-squares slope of log10 MAE against log10 N."""
    xy = [(math.log10(p["n_train"]), math.log10(p[key])) for p in points if p[key] > 0 and math.isfinite(p[key])]
    if len({x for x, _ in xy}) < 2:
        return None
    mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
    return sum((x - mx) * (y - my) for x, y in xy) / sum((x - mx) ** 2 for x, _ in xy)


def fmt_slope(s: float | None) -> str:
    return "–" if s is None else f"{s:.2f}".replace("-", "−")


def curves(points: list, molecules: list, models: list) -> list:
    """(molecule, model, its points sorted by N) for every molecule and model asked for."""
    out = []
    for mol in molecules:
        for model in models:
            mine = [p for p in points if p["molecule"] == mol and p["model"] == model]
            out.append((mol, model, sorted(mine, key=lambda p: p["n_train"])))
    return out


def markdown(points: list, args, failed: list, extra: list) -> str:
    sizes = args.sizes
    devices = sorted({p["device"] for p in points})
    lines = [f"## Learning curves on rMD17 (test split 01, {points[0]['n_test'] if points else '?'} frames)", "",
             f"Every point: configs/rmd17.yaml plus the model's overrides, trained for {args.seconds} s of wall time "
             f"on the first N training frames (50 frames held out for validation), {args.jobs} point(s) at a time "
             f"with {args.threads} torch thread(s) each, on {', '.join(devices) or '?'}."
             + (f" Extra training arguments: `{' '.join(extra)}`." if extra else ""),
             "Slope: least squares of log10 MAE against log10 N.", "",
             "| molecule | model | " + " | ".join(f"forces N={n}" for n in sizes) + " | "
             + " | ".join(f"energy N={n}" for n in sizes) + " | slope forces | slope energy |",
             "|---|---|" + "---:|" * (2 * len(sizes) + 2)]
    table = curves(points, args.molecules, args.models)
    for mol, model, mine in table:
        by_n = {p["n_train"]: p for p in mine}
        cell = [f"{by_n[n][key]:.2f}" if n in by_n else "–"
                for key in ("forces_mae_meV_A", "energy_mae_meV") for n in sizes]
        lines.append(f"| {mol} | {MODELS[model]['label']} | " + " | ".join(cell) + f" | "
                     f"{fmt_slope(slope(mine, 'forces_mae_meV_A'))} | {fmt_slope(slope(mine, 'energy_mae_meV'))} |")
    lines += ["", "Force MAE in meV/Å, energy MAE in meV per structure, on the test frames.", "",
              "Training progress within the budget (epochs; the last may be partial):", "",
              "| molecule | model | parameters | " + " | ".join(f"epochs N={n}" for n in sizes) + " | mean wall (s) |",
              "|---|---|---:|" + "---:|" * (len(sizes) + 1)]
    for mol, model, mine in table:
        by_n = {p["n_train"]: p for p in mine}
        params = f"{mine[0]['n_params']:,}" if mine else "–"
        wall = f"{sum(p['train_wall_s'] for p in mine) / len(mine):.0f}" if mine else "–"
        lines.append(f"| {mol} | {MODELS[model]['label']} | {params} | "
                     + " | ".join(str(by_n[n]["epochs"]) if n in by_n else "–" for n in sizes) + f" | {wall} |")
    if failed:
        lines += ["", "Failed points: " + ", ".join(f"{name} (log: {log})" for name, log in failed) + "."]
    return "\n".join(lines) + "\n"


def plot(points: list, args, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogFormatter, NullFormatter, ScalarFormatter
    except ImportError:
        print("matplotlib is not installed (pip install e3pot[bench]); no plot written", file=sys.stderr)
        return None
    n_mol = len(args.molecules)
    fig, axes = plt.subplots(2, n_mol, figsize=(5 * n_mol, 8), squeeze=False)
    rows = (("forces_mae_meV_A", "force MAE on test (meV/Å)"), ("energy_mae_meV", "energy MAE on test (meV)"))
    for mol, model, mine in curves(points, args.molecules, args.models):
        if not mine:
            continue
        col = args.molecules.index(mol)
        for row, (key, ylabel) in enumerate(rows):
            ax = axes[row, col]
            ax.loglog([p["n_train"] for p in mine], [p[key] for p in mine], "o-",
                      label=f"{MODELS[model]['label']} (slope {fmt_slope(slope(mine, key))})")
    for col, mol in enumerate(args.molecules):
        for row, (_, ylabel) in enumerate(rows):
            ax = axes[row, col]
            ax.set_ylabel(ylabel)
            ax.set_xscale("log")
            ax.set_xticks(args.sizes)
            ax.xaxis.set_major_formatter(ScalarFormatter())  # plain numbers, not powers of ten
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
            ax.set_xlabel("training frames")
            ax.set_title(f"rMD17 {mol}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(f"{args.seconds} s of training per point, {args.jobs} at a time, {args.threads} torch thread(s) each")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--point"]:  # the child process of one point
        return run_point(json.loads(argv[1]))
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with rmd17_<molecule>_{train,test}_01.npz")
    p.add_argument("--molecules", nargs="+", default=["aspirin"])
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 250, 500, 950], help="training-set sizes")
    p.add_argument("--seconds", type=int, default=60, help="training wall time per point (whole seconds)")
    p.add_argument("--models", nargs="+", default=list(MODELS), help=f"any of {', '.join(MODELS)}")
    p.add_argument("--jobs", type=int, default=1, help="points trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per point")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "learning_curves"))
    args = p.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    for name, value in (("--seconds", args.seconds), ("--jobs", args.jobs), ("--threads", args.threads),
                        ("--sizes", min(args.sizes))):
        if value < 1:
            p.error(f"{name} must be at least 1")
    args.sizes = sorted(set(args.sizes))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    specs = []
    for mol in args.molecules:
        files = [os.path.abspath(os.path.join(args.data, f"rmd17_{mol}_{part}_01.npz")) for part in ("train", "test")]
        for path in files:
            if not os.path.exists(path):
                p.error(f"no such file: {path}")
        for model in args.models:
            for n in args.sizes:
                specs.append({"name": f"{mol}-{model}-n{n}", "molecule": mol, "model": model,
                              "label": MODELS[model]["label"], "n_train": n, "seconds": args.seconds,
                              "threads": args.threads, "train_file": files[0], "test_file": files[1],
                              "args": MODELS[model]["args"] + ["--trainer.max_epochs", str(MAX_EPOCHS)] + extra})

    done = {}
    for spec in specs:
        if os.path.exists(point_file(out, spec["name"])):
            with open(point_file(out, spec["name"])) as fh:
                done[spec["name"]] = json.load(fh)
    stale = [f"{s['name']} ({k}: {done[s['name']].get(k)!r} there, {s[k]!r} now)"
             for s in specs if s["name"] in done for k in SETTINGS if done[s["name"]].get(k) != s[k]]
    if stale:
        p.error(f"points in {os.path.join(out, 'points')} were run with other settings: {'; '.join(stale[:5])}"
                + (" ..." if len(stale) > 5 else "") + "; use another --out, or delete those files to rerun them")
    todo = [s for s in specs if s["name"] not in done]
    print(f"{len(specs)} points, {len(done)} already done in {os.path.join(out, 'points')}; running {len(todo)}, "
          f"{args.jobs} at a time, {args.seconds} s each", flush=True)

    failed = []
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = {pool.submit(launch, spec, out): spec for spec in todo}
        for k, future in enumerate(as_completed(futures), 1):
            spec = futures[future]
            rc, log = future.result()
            head = f"[{k}/{len(todo)}] {spec['molecule']} {spec['model']} N={spec['n_train']}:"
            if rc != 0 or not os.path.exists(point_file(out, spec["name"])):
                failed.append((spec["name"], log))
                print(f"{head} FAILED (exit {rc}), log: {log}", flush=True)
                continue
            with open(point_file(out, spec["name"])) as fh:
                r = done[spec["name"]] = json.load(fh)
            print(f"{head} force MAE {r['forces_mae_meV_A']:.2f} meV/Å, energy MAE {r['energy_mae_meV']:.2f} meV, "
                  f"{r['epochs']} epochs in {r['train_wall_s']:.0f} s, {r['n_params']:,} parameters", flush=True)
    finally:  # on Ctrl-C the points not yet started are not started
        pool.shutdown(wait=True, cancel_futures=True)

    points = [done[s["name"]] for s in specs if s["name"] in done]
    result = {"molecules": args.molecules, "models": {m: MODELS[m] for m in args.models}, "sizes": args.sizes,
              "seconds": args.seconds, "jobs": args.jobs, "threads": args.threads, "extra": extra,
              "points": points, "failed": [{"name": n, "log": log} for n, log in failed]}
    text = markdown(points, args, failed, extra)
    results.write("learning_curves", result, text, folder=out)  # with the run's provenance
    print("\n" + text)
    png = plot(points, args, os.path.join(out, "learning_curves.png")) if points else None
    print(f"written: {os.path.join(out, 'learning_curves.json')}, .md" + (", .png" if png else ""))
    if failed:
        print(f"{len(failed)} point(s) failed: " + ", ".join(n for n, _ in failed), file=sys.stderr)
    return result


if __name__ == "__main__":
    try:
        sys.exit(1 if main().get("failed") else 0)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to go on with the points not yet done", file=sys.stderr)
        sys.exit(130)
