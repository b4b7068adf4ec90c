"""Where the time of one energy+forces call goes on a GPU: wall time against the GPU's own kernel time,
kernel launches per call, and the host-side operators that cost most (torch.profiler).

    python benchmarks/gpu_profile.py --data-dir ../shared/peers/data          # aspirin, batch 1
    python benchmarks/gpu_profile.py --structure water --kernels torch cueq   # the 768-atom water box

A call whose GPU time is a small part of its wall time is bound by the host (Python, autograd and one launch
per kernel), not by the GPU: fewer, larger kernels or a captured graph would help it, faster kernels would not.
Writes a markdown report (--out; benchmarks/gpu.sh writes benchmarks/results/gpu_profile.md).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import speed  # noqa: E402
import structures  # noqa: E402

from e3pot.model.forces import evaluate  # noqa: E402

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def profile_case(model, graph, reps: int) -> dict:
    """Wall ms/call (median of ``reps`` timed calls), GPU kernel ms/call, launches/call and the operator table."""
    for _ in range(5):
        evaluate(model, graph)
    torch.cuda.synchronize()
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        evaluate(model, graph)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
    n = 5
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            evaluate(model, graph)
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events  # the kernels themselves, as the table's footer counts them
                 if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)
    return {"wall_ms": sorted(walls)[len(walls) // 2] * 1e3, "gpu_ms": gpu_us / n / 1e3,
            "launches": sum(e.count for e in events if e.key in LAUNCHES) / n,
            "table": events.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=45)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="matched", choices=list(speed.PRESETS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--kernels", nargs="+", default=["torch", "cueq"], choices=["torch", "cueq"])
    p.add_argument("--structure", default="aspirin", choices=["aspirin", "water"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "peers", "data"))
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "gpu_profile.json"))
    args = p.parse_args(argv)
    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        sys.exit(f"gpu_profile.py: --device {args.device} is not a usable CUDA device (torch.cuda.is_available() "
                 f"is {torch.cuda.is_available()}); this profile is for a GPU")
    aspirin, water, described = structures.load(args.data_dir)
    atoms = aspirin if args.structure == "aspirin" else water
    report, rows = io.StringIO(), []
    print(f"{args.structure} ({len(atoms)} atoms), e3pot {args.preset} {args.dtype}, energy+forces, one structure; "
          f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}\n", file=report)
    print("| kernels | wall ms/call | GPU kernel ms/call | GPU busy | kernel launches/call |\n|---|---|---|---|---|",
          file=report)
    tables = []
    for kernels in args.kernels:
        model = speed.prepared(speed.build(args.preset, getattr(torch, args.dtype)), args.device, kernels)
        r = profile_case(model, speed.graph_of([atoms], model), args.reps)
        rows.append({"kernels": kernels, **{k: v for k, v in r.items() if k != "table"}})
        print(f"| {kernels} | {r['wall_ms']:.2f} | {r['gpu_ms']:.2f} | {r['gpu_ms'] / r['wall_ms']:.0%} | "
              f"{r['launches']:.0f} |", file=report)
        tables.append(f"\nHost-side operators, {kernels} kernels (5 calls, by CPU total):\n\n```\n{r['table']}```")
    print("".join(tables), file=report)
    print(report.getvalue())
    name, folder = bench_results.split_out(args.out)
    bench_results.write(name, {"structure": args.structure, "preset": args.preset, "dtype": args.dtype,
                               "rows": rows}, report.getvalue(), folder=folder)


if __name__ == "__main__":
    main()
