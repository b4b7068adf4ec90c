"""Several e3pot jobs on one machine: how to set threads when they share the cores.

    python benchmarks/shared_machine.py --data-dir ../shared/peers/data

Runs the large-system evaluation of benchmarks/large_systems.py (a periodic water box, energy+forces, the
chunked path) as one job alone and then as several jobs started together, each with a given number of torch
threads and optionally ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads that sleep at a barrier instead of
spinning). Prints, per setting, each job's median ms/atom and the machine's throughput (atoms evaluated per
second, all jobs together). A job whose threads outnumber the cores left to it waits at every parallel
region for a thread that is not running; the table shows what that costs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402

LARGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "large_systems.py")


def run_jobs(jobs: int, threads: int, passive: bool, args) -> list:
    """Start ``jobs`` evaluation children at once; their JSON results."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    argv = [sys.executable, LARGE, "--child", "eval", "--size", str(args.size), "--mode", args.mode,
            "--threads", str(threads), "--reps", str(args.reps), "--preset", args.preset, "--dtype", args.dtype]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(jobs)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"job {' '.join(argv)} failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=3072, help="atoms (a multiple of the 768-atom water box)")
    p.add_argument("--mode", default="chunked", choices=["default", "direct", "chunked"])
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores of the machine")
    p.add_argument("--settings", nargs="+", default=["1x2", "2x2", "2x1", "2x2p"],
                   help="JOBSxTHREADS, with a trailing p for OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--preset", default="matched")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "shared_machine.json"))
    args = p.parse_args(argv)
    rows = []
    for setting in args.settings:
        passive = setting.endswith("p")
        jobs, threads = (int(x) for x in setting.rstrip("p").split("x"))
        print(f"{jobs} job(s) x {threads} thread(s){' (passive)' if passive else ''} ...", file=sys.stderr, flush=True)
        res = run_jobs(jobs, threads, passive, args)
        per_job = [r["us_per_atom"] / 1e3 for r in res]
        rows.append({"jobs": jobs, "threads": threads, "passive": passive, "ms_per_atom": per_job,
                     "throughput_atoms_per_s": sum(args.size / (r["step_s"]["median_s"]) for r in res)})
    base = rows[0]["throughput_atoms_per_s"]
    lines = [f"Water box of {args.size} atoms, {args.mode} path, e3pot {args.preset} {args.dtype}, energy+forces, "
             f"{args.cores} cores; medians of {args.reps} calls per job.", "",
             "| jobs × threads | OMP_WAIT_POLICY | ms/atom, each job | throughput, atoms/s | vs the first row |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['jobs']} × {r['threads']} | {'PASSIVE' if r['passive'] else 'default'} | "
                     f"{', '.join(f'{x:.2f}' for x in r['ms_per_atom'])} (median {statistics.median(r['ms_per_atom']):.2f}) | "
                     f"{r['throughput_atoms_per_s']:.0f} | {r['throughput_atoms_per_s'] / base:.2f}× |")
    result = {"size": args.size, "mode": args.mode, "preset": args.preset, "dtype": args.dtype, "rows": rows}
    bench_results.write_out(args.out, result, "\n".join(lines))
    return result


if __name__ == "__main__":
    main()
