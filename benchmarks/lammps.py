"""MD in LAMMPS (pair_style e3pot) against MD through the ASE calculator, and LAMMPS on 1 and 2 MPI ranks.

    python benchmarks/lammps.py                      # aspirin and the 768-atom water box, then 12,288 atoms
    python benchmarks/lammps.py --cases aspirin water --steps 20

Columns: ms per MD step (NVE, velocity Verlet, 0.5 fs) after a warm-up, for the ASE calculator (eager and
compiled) and for LAMMPS with the TorchScript (.pt) and AOTInductor (.pt2) exports, all with the same
model (``--preset``, as in benchmarks/speed.py) and dtype. Single-process cases use ``--threads`` torch
threads; MPI cases one thread per rank. For LAMMPS it also reports what process 0 evaluated per step
(nodes of its graph against its own atoms: the ghost shell that message passing needs), and the peak
resident memory of rank 0 (``info memory``). The 12,288-atom box is the 768-atom box repeated 2 x 2 x 4
(``--big-repeat``).

Results go to benchmarks/results/lammps.{json,md} (benchmarks/results.py).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import structures  # noqa: E402
from speed import PRESETS, build  # noqa: E402

from e3pot.lammps import build as build_plugin  # noqa: E402
from e3pot.lammps import lmp_command, mpirun_command, run_env  # noqa: E402
from e3pot.lammps.deck import boxed, data_file_text, elements_of  # noqa: E402
from e3pot.model.export import export_model  # noqa: E402
from e3pot.model.io import save_model  # noqa: E402


def ase_ms_per_step(model_file: str, atoms, steps: int, compile: bool, threads: int) -> dict:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from e3pot.calculator import E3PotCalculator

    atoms = atoms.copy()
    atoms.calc = E3PotCalculator(model_file, compile=compile, threads=threads)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    t0 = time.perf_counter()
    md.run(3)  # warm-up (the compiled path compiles here)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    md.run(steps)
    return {"ms_per_step": 1000 * (time.perf_counter() - t0) / steps, "warmup_s": first}


def lammps_ms_per_step(folder: str, model: str, atoms, steps: int, ranks: int, threads: int, plugin: str) -> dict:
    os.makedirs(folder, exist_ok=True)
    elements = elements_of(atoms)
    with open(os.path.join(folder, "structure.data"), "w") as fh:
        fh.write(data_file_text(boxed(atoms, margin=10.0), elements))
    boundary = " ".join("p" if p else "s" for p in atoms.pbc)
    with open(os.path.join(folder, "in.lammps"), "w") as fh:
        fh.write(f"""units metal
atom_style atomic
boundary {boundary}
read_data structure.data
plugin load {plugin}
pair_style e3pot
pair_coeff * * {model} {' '.join(elements)}
velocity all create 300 4928459 mom yes dist gaussian
timestep 0.0005
fix md all nve
thermo 1000
run 3
run {steps}
info memory out log
""")
    cmd = [mpirun_command(), "-np", str(ranks), lmp_command(), "-in", "in.lammps", "-log", "log.lammps"]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=run_env(threads=threads))
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"LAMMPS failed in {folder}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    log = open(os.path.join(folder, "log.lammps")).read()
    loops = re.findall(r"Loop time of ([0-9.e+-]+) on (\d+) procs for (\d+) steps", log)
    seconds, _, n = loops[-1]
    stats = re.findall(r"evaluated per call, on average, (\d+) nodes for (\d+) local atoms \((\d+) ghosts as nodes, "
                       r"(\d+) folded onto local atoms\) and (\d+) edges", log)[-1]
    rss = re.search(r"Maximum resident set size: ([0-9.]+) Mbyte", log)
    nodes, n_local, ghost_nodes, folded, edges = map(int, stats)
    return {"ms_per_step": 1000 * float(seconds) / int(n), "wall_s": wall, "nodes_rank0": nodes,
            "local_rank0": n_local, "ghost_nodes_rank0": ghost_nodes, "folded_rank0": folded, "edges_rank0": edges,
            "peak_rss_mb_rank0": float(rss.group(1)) if rss else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peers", "data"),
                   help="folder with aspirin.xyz and water_box.xyz (default: ../shared/peers/data)")
    p.add_argument("--preset", default="matched", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--cases", nargs="+", default=["aspirin", "water", "big"], choices=["aspirin", "water", "big"])
    p.add_argument("--paths", nargs="+", default=["ase-eager", "ase-compiled", "lammps-torchscript", "lammps-aoti"],
                   choices=["ase-eager", "ase-compiled", "lammps-torchscript", "lammps-aoti"])
    p.add_argument("--steps", type=int, default=20, help="MD steps timed for aspirin (the water box: a quarter)")
    p.add_argument("--big-steps", type=int, default=2)
    p.add_argument("--big-repeat", type=int, nargs=3, default=[2, 2, 4],
                   help="repeats of the water box for the scaling case (default 2 2 4: 12,288 atoms)")
    p.add_argument("--big-ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--big-preset", default="small", choices=sorted(PRESETS),
                   help="model of the 12,288-atom case (default small: the pair style evaluates each process's graph "
                        "in one piece, and at the matched preset 12,288 atoms need more memory than 24 GiB)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(bench_results.FOLDER, "lammps.json"))
    args = p.parse_args(argv)

    aspirin, water, described = structures.load(args.data_dir)
    dtype = getattr(torch, args.dtype)
    model = build(args.preset, dtype)
    work = tempfile.mkdtemp(prefix="e3pot-lammps-bench-")
    model_file = os.path.join(work, "model.pt")
    save_model(model, model_file)
    exports = {"lammps-torchscript": os.path.join(work, "model-ts.pt")}
    export_model(model, exports["lammps-torchscript"])
    load_times = {}
    if "lammps-aoti" in args.paths:
        from e3pot.model.aoti import export_aoti

        t0 = time.perf_counter()
        exports["lammps-aoti"] = export_aoti(model, os.path.join(work, "model.pt2")) or os.path.join(work, "model.pt2")
        load_times["aoti_export_s"] = time.perf_counter() - t0
    plugin = build_plugin(install=False, quiet=True)

    rows, results = [], {"structures": described, "preset": args.preset, "dtype": args.dtype, "threads": args.threads,
                         "cases": {}}
    cases = {"aspirin": (aspirin, args.steps), "water": (water, max(2, args.steps // 4))}
    for case in [c for c in args.cases if c in cases]:
        atoms, steps = cases[case]
        out = {}
        for path in args.paths:
            print(f"[{case}] {path} ...", file=sys.stderr, flush=True)
            if path.startswith("ase"):
                out[path] = ase_ms_per_step(model_file, atoms, steps, path == "ase-compiled", args.threads)
            else:
                out[path] = lammps_ms_per_step(os.path.join(work, f"{case}-{path}"), exports[path], atoms, steps, 1,
                                               args.threads, plugin)
        results["cases"][case] = out
        cells = [f"{out[pth]['ms_per_step']:.1f}" if pth in out else "—" for pth in
                 ("ase-eager", "ase-compiled", "lammps-torchscript", "lammps-aoti")]
        best_ase = min(out[pth]["ms_per_step"] for pth in out if pth.startswith("ase"))
        best_lmp = min(out[pth]["ms_per_step"] for pth in out if pth.startswith("lammps"))
        rows.append(f"| {case} ({len(atoms)} atoms) | " + " | ".join(cells) + f" | {best_ase / best_lmp:.2f}× |")
    table = ["| MD, ms/step (1 process) | ASE eager | ASE compiled | LAMMPS TorchScript | LAMMPS AOTI | ASE best / LAMMPS best |",
             "|---|---|---|---|---|---|", *rows] if rows else []

    if "big" in args.cases:
        big = water.repeat(tuple(args.big_repeat))
        scaling = {}
        path = "lammps-torchscript"
        if args.big_preset != args.preset:
            exports = {path: os.path.join(work, f"model-{args.big_preset}.pt")}
            export_model(build(args.big_preset, dtype), exports[path])
        for ranks in args.big_ranks:
            print(f"[{len(big)} atoms] {path} on {ranks} ranks ...", file=sys.stderr, flush=True)
            threads = max(1, args.threads // ranks)
            scaling[ranks] = lammps_ms_per_step(os.path.join(work, f"big-{ranks}"), exports[path], big,
                                                args.big_steps, ranks, threads, plugin)
        results["scaling"] = {"atoms": len(big), "export": path, "preset": args.big_preset, "by_ranks": scaling}
        base = scaling[args.big_ranks[0]]["ms_per_step"]
        table += ["", f"| {len(big)}-atom water box, {args.big_preset} preset, TorchScript | s/step | speed-up | rank 0: own atoms | rank 0: graph nodes "
                      "| nodes / own atoms | rank 0: peak RSS, GB |", "|---|---|---|---|---|---|---|"]
        for ranks, r in scaling.items():
            table.append(f"| {ranks} rank{'s' if ranks > 1 else ''} × {max(1, args.threads // ranks)} thread"
                         f"{'s' if args.threads // ranks > 1 else ''} | {r['ms_per_step'] / 1000:.2f} | "
                         f"{base / r['ms_per_step']:.2f}× | {r['local_rank0']} | {r['nodes_rank0']} | "
                         f"{r['nodes_rank0'] / r['local_rank0']:.2f} | "
                         f"{(r['peak_rss_mb_rank0'] or float('nan')) / 1024:.2f} |")
    results.update(load_times)
    text = "\n".join(table)
    print(text)
    name, folder = bench_results.split_out(args.out)
    bench_results.write(name, results, text + "\n", folder=folder)
    return results


if __name__ == "__main__":
    main()
