"""Large periodic water boxes: time, memory and the neighbour list, from 768 to 110,592 atoms.

    python benchmarks/large_systems.py --data-dir /path/to/structures

Each size is the 768-atom water box (1 g/cm^3, ``water_box.xyz`` from --data-dir; otherwise a
generated one) repeated along the cell vectors. Each row runs in a fresh child process, so its peak
RSS (VmHWM) is its own: build the model (NequIP-matched hyperparameters by default, float32), build
the graph (timed: the neighbour list), then energy+forces (or energy+forces+stress) calls through
:func:`e3pot.evaluate` with the default memory budget, or --budget GiB. ``direct`` rows
force the one-piece path and ``chunked`` rows the chunked one, for comparison at equal size. A last part times ASE MD steps through the calculator at
12k atoms with and without the Verlet skin (--md-size, --md-steps).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import structures  # noqa: E402
from speed import PRESETS, build, peak_rss_mb, timeit  # noqa: E402

from e3pot.allocator import tune_allocator  # noqa: E402

REPEATS = {1: (1, 1, 1), 4: (1, 2, 2), 16: (2, 2, 4), 64: (4, 4, 4), 128: (4, 4, 8), 144: (4, 6, 6)}


def water(n_atoms: int, data_dir):
    _, box, _ = structures.load(data_dir)
    if n_atoms % len(box):
        raise SystemExit(f"--sizes: {n_atoms} is not a multiple of the {len(box)}-atom water box")
    k = n_atoms // len(box)
    return box.repeat(REPEATS.get(k, (1, 1, k)))


def child(args) -> None:
    from e3pot.data.graph import collate
    from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
    from e3pot.model.chunked import CHUNK_GIB, GIB, default_budget, footprint, plan
    from e3pot import evaluate

    tune_allocator()
    torch.set_num_threads(args.threads)
    model = build(args.preset, getattr(torch, args.dtype), avg_num_neighbors=50.0)
    atoms = water(args.size, args.data_dir)
    t0 = time.perf_counter()
    # float64 geometry, as the calculator and predict pass it (edge vectors are cast after the subtraction)
    graph = collate([atoms_to_graph(atoms, SpeciesMap(model.atomic_numbers), model.r_max)])
    nl_s = time.perf_counter() - t0
    n, e = len(atoms), int(graph.edge_index.shape[1])
    fp = footprint(model, model.energy_scale.element_size())
    if args.mode == "direct":
        budget = 1e6
    elif args.mode == "chunked":  # forced, with chunks of the default size
        kept, direct = fp.kept(n, e), fp.direct(n, e)
        budget = (kept + min(CHUNK_GIB["cpu"] * GIB, 0.5 * max(direct - kept, 0.0))) / GIB
    else:
        budget = args.budget or default_budget(graph.positions.device)
    chunk = plan(model, graph, args.stress, budget)
    reps = args.reps if args.reps else max(1, min(5, 20000 // n))
    r = timeit(lambda: evaluate(model, graph, compute_stress=args.stress, memory_budget=budget), reps,
               1 if n <= 12288 else 0)
    print(json.dumps({"n_atoms": n, "n_edges": e, "mode": args.mode, "stress": args.stress, "neighbor_list_s": nl_s,
                      "chunk_edges": chunk, "budget_gib": budget, "step_s": r,
                      "us_per_atom": r["median_s"] / n * 1e6, "peak_rss_gib": peak_rss_mb() / 1024,
                      "estimate_direct_gib": fp.direct(n, e) / GIB,
                      "estimate_chunked_gib": (fp.kept(n, e) + fp.chunk_per_edge * (chunk or 0)) / GIB}))


def md_child(args) -> None:
    from ase.md.verlet import VelocityVerlet
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase import units

    from e3pot.calculator import E3PotCalculator

    torch.set_num_threads(args.threads)
    model = build(args.preset, getattr(torch, args.dtype), avg_num_neighbors=50.0)
    atoms = water(args.size, args.data_dir)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = E3PotCalculator(model, skin=args.skin)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.run(1)  # first call: neighbour list and warm-up
    t0 = time.perf_counter()
    dyn.run(args.md_steps)
    dt = time.perf_counter() - t0
    print(json.dumps({"n_atoms": len(atoms), "skin": args.skin, "steps": args.md_steps, "s_per_step": dt / args.md_steps,
                      "steps_per_s": args.md_steps / dt, "neighbor_list_builds": atoms.calc.neighbor_list_builds,
                      "peak_rss_gib": peak_rss_mb() / 1024}))


def run_child(argv) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="768,3072,12288,49152,110592", help="numbers of atoms (multiples of the box: 768 atoms)")
    p.add_argument("--direct-sizes", default="3072", help="sizes also run on the one-piece path")
    p.add_argument("--chunked-sizes", default="768", help="sizes also run on the chunked path")
    p.add_argument("--stress-sizes", default=None, help="sizes also run with stress (default: all)")
    p.add_argument("--preset", default="matched", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=None, help="memory budget in GiB (default: e3pot's default)")
    p.add_argument("--reps", type=int, default=0, help="calls per row (default: 5 at 768 atoms, fewer above)")
    p.add_argument("--data-dir", default=None, help="folder with water_box.xyz (else a generated box)")
    p.add_argument("--md-size", type=int, default=12288)
    p.add_argument("--md-steps", type=int, default=3, help="MD steps per variant (0: skip MD)")
    p.add_argument("--md-skin", type=float, default=1.0)
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "large_systems.json"),
                   help="write the results as JSON here")
    p.add_argument("--child", choices=["eval", "md"], help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    p.add_argument("--stress", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skin", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "eval":
        return child(args)
    if args.child == "md":
        return md_child(args)

    common = ["--preset", args.preset, "--dtype", args.dtype, "--threads", str(args.threads), "--reps", str(args.reps)]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if args.budget:
        common += ["--budget", str(args.budget)]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    direct = [int(s) for s in args.direct_sizes.split(",") if s]
    chunked = [int(s) for s in args.chunked_sizes.split(",") if s]
    stress_sizes = sizes if args.stress_sizes is None else [int(s) for s in args.stress_sizes.split(",") if s]
    rows = []
    for n in sizes:
        for mode in (["direct"] if n in direct else []) + ["default"] + (["chunked"] if n in chunked else []):
            for stress in [False] + ([True] if n in stress_sizes else []):
                r = run_child(["--child", "eval", "--size", str(n), "--mode", mode] + (["--stress"] if stress else []) + common)
                rows.append(r)
                print(f"  {n} atoms, {mode}, stress={stress}: {r['step_s']['median_s']:.3f} s, "
                      f"{r['peak_rss_gib']:.2f} GiB", file=sys.stderr, flush=True)
    md = []
    if args.md_steps > 0:
        for skin in (0.0, args.md_skin):
            md.append(run_child(["--child", "md", "--size", str(args.md_size), "--skin", str(skin),
                                 "--md-steps", str(args.md_steps)] + common))
    text = table(rows, md, args)
    print(text)
    result = {"preset": args.preset, "dtype": args.dtype, "threads": args.threads, "rows": rows, "md": md}
    if args.out:
        name, folder = bench_results.split_out(args.out)
        bench_results.write(name, result, text, folder=folder, merge=True)
    return result


def table(rows, md, args) -> str:
    lines = [f"Water at 1 g/cm^3, preset {args.preset}, {args.dtype}, {args.threads} threads; median s per call.", "",
             "| atoms | edges | path | chunk edges | neighbour list s | E+F s/call | E+F µs/atom | E+F peak GiB | "
             "E+F+S s/call | E+F+S peak GiB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["n_atoms"], r["mode"]), {})[r["stress"]] = r
    for (n, mode), pair in keyed.items():
        f, s = pair.get(False), pair.get(True)
        path = ("direct" if f["chunk_edges"] is None else "chunked") + (" (default)" if mode == "default" else "")
        stress = (f"{s['step_s']['median_s']:.3f} | {s['peak_rss_gib']:.2f}" if s else "— | —")
        lines.append(f"| {n:,} | {f['n_edges']:,} | {path} | {f['chunk_edges'] or '—'} | {f['neighbor_list_s']:.2f} | "
                     f"{f['step_s']['median_s']:.3f} | {f['us_per_atom']:.0f} | {f['peak_rss_gib']:.2f} | {stress} |")
    if md:
        lines += ["", "| MD through the calculator | atoms | skin Å | s/step | steps/s | list builds | peak GiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m in md:
            lines.append(f"| VelocityVerlet 0.5 fs | {m['n_atoms']:,} | {m['skin']:.1f} | {m['s_per_step']:.3f} | "
                         f"{m['steps_per_s']:.3f} | {m['neighbor_list_builds']} | {m['peak_rss_gib']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
