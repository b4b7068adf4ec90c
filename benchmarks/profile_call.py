"""Where the time of one energy+forces call goes (torch.profiler): on a GPU, wall time against the GPU's own
kernel time, kernel launches per call and the host-side operators that cost most; on the CPU, the operators
that cost most by their own time.

    python benchmarks/profile_call.py --data-dir ../shared/peers/data          # on a GPU: aspirin, batch 1
    python benchmarks/profile_call.py --structure water --kernels torch cueq   # the 768-atom water box
    python benchmarks/profile_call.py --device cpu --structure water --kernels torch --threads 2

A GPU call whose kernel time is a small part of its wall time is bound by the host (Python, autograd and one
launch per kernel), not by the GPU: fewer, larger kernels or a captured graph would help it, faster kernels
would not. Writes a markdown report (--out; benchmarks/gpu.sh writes benchmarks/results/gpu_profile.md).
"""
from __future__ import annotations

import argparse
import io
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import speed  # noqa: E402
import structures  # noqa: E402

from e3pot.model.forces import evaluate  # noqa: E402

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def profile_case(model, graph, reps: int, device: str, n: int = 5) -> dict:
    """Wall ms/call (median of ``reps`` timed calls), GPU kernel ms/call, launches/call and the operator table
    of ``n`` profiled calls."""
    cuda = device.startswith("cuda")
    call = speed.synced(lambda: evaluate(model, graph), device)
    wall_ms = speed.timeit(call, reps, min(5, reps))["median_s"] * 1e3
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(n):
            call()
    events = prof.key_averages()
    if not cuda:
        return {"wall_ms": wall_ms,
                "table": events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=45)}
    gpu_us = sum(e.self_device_time_total for e in events  # the kernels themselves, as the table's footer counts them
                 if e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation)
    return {"wall_ms": wall_ms, "gpu_ms": gpu_us / n / 1e3,
            "launches": sum(e.count for e in events if e.key in LAUNCHES) / n,
            "table": events.table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=45)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--preset", default="matched", choices=list(speed.PRESETS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--kernels", nargs="+", default=["torch", "cueq"], choices=["torch", "cueq"])
    p.add_argument("--structure", default="aspirin", choices=["aspirin", "water"])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--calls", type=int, default=5, help="calls under the profiler")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "peers", "data"))
    p.add_argument("--out", help="JSON path (default: benchmarks/results/gpu_profile[_water].json on a GPU, "
                                 "profile_cpu_<structure>.json on the CPU, so that a CPU run never replaces GPU results)")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.out is None:
        name = ("gpu_profile" + ("_water" if args.structure == "water" else "")) if cuda else f"profile_cpu_{args.structure}"
        args.out = os.path.join("benchmarks", "results", name + ".json")
    if cuda and not torch.cuda.is_available():
        sys.exit(f"profile_call.py: --device {args.device}: torch sees no CUDA GPU here (a CPU build of torch, or no "
                 f"GPU); use --device cpu to profile on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    aspirin, water, described = structures.load(args.data_dir)
    atoms = aspirin if args.structure == "aspirin" else water
    report, rows = io.StringIO(), []
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.structure} ({len(atoms)} atoms), e3pot {args.preset} {args.dtype}, energy+forces, one structure; "
          f"{where}, torch {torch.__version__}\n", file=report)
    if cuda:
        print("| kernels | wall ms/call | GPU kernel ms/call | GPU busy | kernel launches/call |\n|---|---|---|---|---|",
              file=report)
    else:
        print("| kernels | wall ms/call |\n|---|---|", file=report)
    tables = []
    for kernels in args.kernels:
        model = speed.prepared(speed.build(args.preset, getattr(torch, args.dtype)), args.device, kernels)
        r = profile_case(model, speed.graph_of([atoms], model), args.reps, args.device, args.calls)
        rows.append({"kernels": kernels, **{k: v for k, v in r.items() if k != "table"}})
        if cuda:
            print(f"| {kernels} | {r['wall_ms']:.2f} | {r['gpu_ms']:.2f} | {r['gpu_ms'] / r['wall_ms']:.0%} | "
                  f"{r['launches']:.0f} |", file=report)
        else:
            print(f"| {kernels} | {r['wall_ms']:.1f} |", file=report)
        order = "CPU total" if cuda else "self CPU time"
        tables.append(f"\n{'Host-side operators' if cuda else 'Operators'}, {kernels} kernels "
                      f"({args.calls} calls, by {order}):\n\n```\n{r['table']}```")
    print("".join(tables), file=report)
    print(report.getvalue())
    name, folder = bench_results.split_out(args.out)
    bench_results.write(name, {"structure": args.structure, "preset": args.preset, "dtype": args.dtype,
                               "device": args.device, "rows": rows}, report.getvalue(), folder=folder)


if __name__ == "__main__":
    main()
