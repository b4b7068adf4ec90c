"""Eager and compiled energy+forces on a machine shared with other work: 32 aspirins, 2 threads.

    python benchmarks/contention.py --data-dir ../shared/peers/data
    python benchmarks/contention.py --src old=/path/to/an/older/clone --data-dir ../shared/peers/data

Each case runs in a child process that times the eager path and the compiled path (``CompiledModel``) on the
same batch, call after call in alternation. A case is a source tree (``--src LABEL=PATH``: another clone of
e3pot, put first on ``PYTHONPATH``; default: this one) and an OpenMP setting (``--settings``): ``default``,
``spinN`` (``GOMP_SPINCOUNT=N``: a thread waiting at a barrier spins N times before it sleeps) or ``passive``
(``OMP_WAIT_POLICY=PASSIVE``: it sleeps at once). Every case runs once quiet and once beside a load
(``--loads``): ``torch``, another process running torch operations on as many threads; ``busy``, as many
single-threaded busy loops. Rounds alternate the cases, so that a change of the machine's own load hits all
of them alike. Prints the median molecules per second and the slowest call of each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADS = {
    "busy": "while True: pass",
    "torch": ("import torch\ntorch.set_num_threads({threads})\nx = torch.randn(20000, 64)\nw = torch.randn(64, 64)\n"
              "index = torch.randint(0, 2000, (20000,))\nwhile True:\n"
              "    torch.zeros(2000, 64).index_add(0, index, (x @ w).relu())"),
}


def setting_env(setting: str) -> dict:
    if setting == "default":
        return {}
    if setting == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    if setting.startswith("spin") and setting[4:].isdigit():
        return {"GOMP_SPINCOUNT": setting[4:]}
    raise ValueError(f"unknown setting {setting!r}: default, passive or spinN")


def child(args) -> None:
    """Time eager and compiled calls on one batch; print one JSON line of per-call seconds."""
    import torch

    # the timed tree's own benchmark helpers (model presets, graphs), whichever e3pot that is
    sys.path.insert(0, os.path.join(os.environ.get("PYTHONPATH", ROOT).split(os.pathsep)[0], "benchmarks"))
    import speed
    import structures
    from e3pot.allocator import tune_allocator
    from e3pot.model.compiled import CompiledModel
    from e3pot.model.forces import evaluate

    torch.set_num_threads(args.threads)
    tune_allocator()
    model = speed.build(args.preset, torch.float32)
    aspirin = structures.load(args.data_dir)[0]
    graph = speed.graph_of(structures.perturbed(aspirin, args.batch, seed=1) if args.batch > 1 else [aspirin], model)
    compiled = CompiledModel(model)
    calls = {"eager": lambda: evaluate(model, graph), "compiled": lambda: compiled(graph, False)}
    for call in calls.values():  # compile, warm up
        call()
        call()
    times = {name: [] for name in calls}
    for _ in range(args.reps):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    print(json.dumps(times))


def run_case(src: str, setting: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": src, **setting_env(setting)}
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--threads", str(args.threads), "--reps",
            str(args.reps), "--batch", str(args.batch), "--preset", args.preset]
    if args.data_dir:
        argv += ["--data-dir", os.path.abspath(args.data_dir)]
    done = subprocess.run(argv, cwd=os.path.dirname(os.path.abspath(__file__)), env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"case {src} {setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_load(load: str, threads: int) -> list:
    if load == "none":
        return []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = LOADS[load].format(threads=threads)
    count = threads if load == "busy" else 1
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(count)]
    time.sleep(2)
    return procs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--src", nargs="+", default=[f"this={ROOT}"], help="LABEL=PATH of e3pot source trees")
    p.add_argument("--settings", nargs="+", default=["default", "spin10000", "passive"])
    p.add_argument("--old-settings", nargs="+", default=["default"],
                   help="the settings run for sources other than the first")
    p.add_argument("--loads", nargs="+", default=["none", "torch"], choices=["none", "torch", "busy"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--preset", default="matched")
    p.add_argument("--data-dir", default=None, help="folder with aspirin.xyz and water_box.xyz (else ethanol stands in)")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "contention.json"))
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return {}
    sources = [s.split("=", 1) for s in args.src]
    cases = [(label, path, setting) for k, (label, path) in enumerate(sources)
             for setting in (args.settings if k == 0 else args.old_settings)]
    rows = []
    for load in args.loads:
        times = {(label, setting): {"eager": [], "compiled": []} for label, _, setting in cases}
        for r in range(args.rounds):
            for label, path, setting in cases:
                print(f"load {load}, round {r + 1}: {label} {setting} ...", file=sys.stderr, flush=True)
                procs = start_load(load, args.threads)
                try:
                    out = run_case(path, setting, args)
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
                for name in ("eager", "compiled"):
                    times[(label, setting)][name] += out[name]
        for (label, setting), t in times.items():
            rows.append({"load": load, "source": label, "setting": setting,
                         **{f"{n}_mol_per_s": args.batch / statistics.median(t[n]) for n in t},
                         **{f"{n}_slowest_s": max(t[n]) for n in t}})
    lines = [f"{args.batch} aspirins, e3pot {args.preset} float32, energy+forces, {args.threads} threads; medians of "
             f"{args.rounds} x {args.reps} calls per path, the paths in alternation. Load: none (quiet), torch (a "
             f"process running torch operations on {args.threads} threads beside), busy ({args.threads} busy loops).",
             "", "| load | source | OpenMP setting | eager mol/s | compiled mol/s | compiled / eager | slowest call, eager / "
             "compiled (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['source']} | {r['setting']} | {r['eager_mol_per_s']:.1f} | "
                     f"{r['compiled_mol_per_s']:.1f} | {r['compiled_mol_per_s'] / r['eager_mol_per_s']:.2f} | "
                     f"{r['eager_slowest_s']:.2f} / {r['compiled_slowest_s']:.2f} |")
    result = {"batch": args.batch, "preset": args.preset, "threads": args.threads, "sources": dict(sources),
              "rows": rows}
    bench_results.write_out(args.out, result, "\n".join(lines))
    return result


if __name__ == "__main__":
    main()
