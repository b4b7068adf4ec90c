"""The radial networks of all layers in one pass (``E3Potential.fuse_radial``, the default) against the networks
one layer at a time: energy+forces of aspirin (batch 1) and of the 768-atom water box, the two settings
alternated call by call so that both see the same machine.

    python benchmarks/radial_fusion.py --data-dir ../shared/peers/data --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import speed  # noqa: E402
import structures  # noqa: E402

from e3pot.allocator import tune_allocator  # noqa: E402
from e3pot.model.forces import evaluate  # noqa: E402


def alternate(model, graph, reps: int) -> dict:
    """Median seconds per energy+forces call with the fused and the separate radial networks, alternated."""
    times = {True: [], False: []}
    for fuse in (True, False):  # warm-up
        model.fuse_radial = fuse
        evaluate(model, graph)
    for _ in range(reps):
        for fuse in (True, False):
            model.fuse_radial = fuse
            t0 = time.perf_counter()
            evaluate(model, graph)
            times[fuse].append(time.perf_counter() - t0)
    model.fuse_radial = True
    return {"fused_s": statistics.median(times[True]), "separate_s": statistics.median(times[False])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="matched", choices=list(speed.PRESETS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20, help="calls of each setting on aspirin (a quarter on the water box)")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "peers", "data"))
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "radial_fusion.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_allocator()
    aspirin, water, described = structures.load(args.data_dir)
    model = speed.build(args.preset, getattr(torch, args.dtype))
    rows = []
    for name, atoms, reps in (("aspirin, batch 1", aspirin, args.reps), ("water box", water, max(2, args.reps // 4))):
        r = alternate(model, speed.graph_of([atoms], model), reps)
        rows.append({"case": name, "atoms": len(atoms), "reps": reps, **r})
    lines = [f"e3pot {args.preset} {args.dtype}, energy+forces, {args.threads} threads; {described}; medians of "
             f"alternated calls.", "", "| case | atoms | fused ms/call | separate ms/call | separate / fused |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['atoms']} | {r['fused_s'] * 1e3:.1f} | {r['separate_s'] * 1e3:.1f} | "
              f"{r['separate_s'] / r['fused_s']:.3f} |" for r in rows]
    result = {"preset": args.preset, "dtype": args.dtype, "threads": args.threads, "rows": rows}
    bench_results.write_out(args.out, result, "\n".join(lines))
    return result


if __name__ == "__main__":
    main()
