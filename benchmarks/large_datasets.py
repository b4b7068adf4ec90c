"""Training on a dataset larger than memory: an on-disk store, DataLoader workers and DDP.

    python benchmarks/large_datasets.py --workdir /tmp/e3pot-large --frames 200000

1. Generates ``--frames`` small periodic cells and clusters of Cu, Ni and Al with labels from ASE's
   EMT (a cheap real potential), in ``--workdir`` (never in the repository), in two processes.
2. ``e3pot preprocess`` to a store: time and size (and the size of the extxyz input).
3. Training throughput (structures/s over ``--steps`` steps, from the start of training, so data
   loading and worker start-up count) and peak RSS of the main process and of a worker, each in a
   fresh process: the full store and a store of ``--subset`` frames with 0, 1 and 2 workers, and the
   same subset read into memory (the in-memory path).
4. Two epochs of the subset through ``train.py`` in one process and in DDP with two processes (gloo),
   with the wall time and the time per step of each process.
Prints markdown tables and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dict(r_max=4.5, l_max=1, num_features=16, num_layers=2, radial_hidden=32, radial_layers=1, parity=False)


def generate(path: str, n: int, seed: int) -> None:
    """``n`` labelled structures: rattled fcc cells of 1-3 repeats and clusters of 6-40 atoms."""
    from ase import Atoms
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(seed)
    metals = {"Cu": 3.61, "Ni": 3.52, "Al": 4.05}
    out = []
    with open(path, "w") as fh:
        for k in range(n):
            if rng.random() < 0.6:
                el = rng.choice(list(metals))
                atoms = bulk(el, "fcc", a=metals[el] * rng.uniform(0.97, 1.03), cubic=rng.random() < 0.5)
                atoms = atoms.repeat([int(r) for r in rng.integers(1, 3, size=3)])
                swap = rng.random(len(atoms)) < 0.3
                atoms.numbers[swap] = [29, 28, 13][int(rng.integers(3))]
            else:
                m = int(rng.integers(6, 41))
                pos = rng.normal(size=(m, 3)) * (m ** (1 / 3)) * 0.9
                for _ in range(30):  # push atoms apart to at least 2.2 Å
                    d = pos[:, None] - pos[None]
                    r = np.linalg.norm(d, axis=-1) + np.eye(m) * 10
                    push = np.where(r < 2.2, (2.2 - r) / 2, 0)[..., None] * d / r[..., None]
                    pos += push.sum(axis=1)
                atoms = Atoms(numbers=rng.choice([29, 28, 13], size=m), positions=pos)
            atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
            atoms.calc = EMT()
            e, f = atoms.get_potential_energy(), atoms.get_forces()
            atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
            out.append(atoms)
            if len(out) == 2000:
                write(fh, out, format="extxyz")
                out = []
        if out:
            write(fh, out, format="extxyz")


def peak_rss_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def throughput_child(args) -> None:
    """Time ``--steps`` training steps of the real LightningModule on the store (or the file)."""
    import pytorch_lightning as pl
    import torch

    from e3pot.allocator import tune_allocator
    from e3pot.train.datamodule import E3PotDataModule
    from e3pot.train.module import E3PotModule

    tune_allocator()
    torch.set_num_threads(1)
    data = E3PotDataModule(args.source, n_val=64, n_train=args.n_train, r_max=MODEL["r_max"], batch_size=args.batch_size,
                           num_workers=int(args.workers))
    module = E3PotModule(**MODEL, lr=0.005)
    t_setup = time.perf_counter()
    wall = {}

    class Wall(pl.Callback):
        def on_train_start(self, *a):
            wall["start"] = time.perf_counter()

        def on_train_end(self, *a):
            wall["end"] = time.perf_counter()

    data.setup("fit")
    steps = min(args.steps, len(data.train_set) // args.batch_size)  # within one epoch: no validation needed
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                         inference_mode=False, callbacks=[Wall()], num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    seconds = wall["end"] - wall["start"]
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    print(json.dumps({"source": args.source, "n_train": len(data.train_set), "workers": int(args.workers),
                      "steps": steps, "batch_size": args.batch_size, "seconds": seconds,
                      "structures_per_s": steps * args.batch_size / seconds,
                      "setup_s": wall["start"] - t_setup, "peak_rss_gib": peak_rss_gib(),
                      "worker_peak_rss_gib": worker_peak if int(args.workers) else None}))


def run(argv, timeout=3600) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, capture_output=True, text=True,
                         timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ddp_epochs(workdir: str, train_file: str, n_train: int, devices: int, batch_size: int) -> dict:
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "example.yaml"),
            "--data.train_file", train_file, "--data.n_val", "64", "--data.n_train", str(n_train),
            "--data.batch_size", str(batch_size), "--trainer.max_epochs", "2", "--trainer.max_time", "null",
            "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.enable_progress_bar", "false",
            "--output", os.path.join(workdir, f"ddp{devices}.pt")]
    args += [f"--model.{k}={v}" for k, v in MODEL.items()]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    t0 = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=workdir,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode != 0:
        raise RuntimeError(f"train.py with {devices} devices failed:\n{out.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    steps = 2 * -(-n_train // (batch_size * devices))
    return {"devices": devices, "batch_size_per_process": batch_size, "wall_s": wall, "optimizer_steps": steps,
            "s_per_step": wall / steps}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="where the generated data and the store go (required)")
    p.add_argument("--frames", type=int, default=200_000)
    p.add_argument("--subset", type=int, default=2_000)
    p.add_argument("--steps", type=int, default=100, help="training steps per throughput row (at most one epoch)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", default="0,1,2")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "large_datasets.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--n-train", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return throughput_child(args)
    if not args.workdir:
        p.error("--workdir is required")

    os.makedirs(args.workdir, exist_ok=True)
    result = {"frames": args.frames, "subset": args.subset, "model": MODEL, "batch_size": args.batch_size}
    parts = [os.path.join(args.workdir, f"emt_{k}.extxyz") for k in range(2)]
    if not all(os.path.exists(f) for f in parts):
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                                   f"import large_datasets as b; b.generate({f!r}, {args.frames // 2}, {k})"])
                 for k, f in enumerate(parts)]
        if any(proc.wait() for proc in procs):
            raise RuntimeError("data generation failed")
        result["generate_s"] = time.perf_counter() - t0
    store = os.path.join(args.workdir, "emt.store")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "e3pot", "preprocess", *parts, "-o", store, "--overwrite",
                          "--r-max", str(MODEL["r_max"]), "--no-progress"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    result["preprocess_s"] = time.perf_counter() - t0
    result["store_gib"] = sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store)) / 2 ** 30
    result["extxyz_gib"] = sum(os.path.getsize(f) for f in parts) / 2 ** 30
    print(f"preprocess: {result['preprocess_s']:.0f} s, store {result['store_gib']:.2f} GiB "
          f"(extxyz {result['extxyz_gib']:.2f} GiB)", file=sys.stderr, flush=True)

    # the subset as an extxyz file and as a store: the in-memory path and the store on the same structures
    subset_file = os.path.join(args.workdir, f"subset_{args.subset}.extxyz")
    subset_store = os.path.join(args.workdir, f"subset_{args.subset}.store")
    if not os.path.exists(subset_file):
        from ase.io import iread, write

        write(subset_file, [a for _, a in zip(range(args.subset + 64), iread(parts[0]))], format="extxyz")
    subprocess.run([sys.executable, "-m", "e3pot", "preprocess", subset_file, "-o", subset_store, "--overwrite",
                    "--r-max", str(MODEL["r_max"]), "--no-progress"], check=True, capture_output=True)
    rows = []
    common = ["--child", "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    for label, source, n_train in (("store, all frames", store, None), ("store, subset", subset_store, None),
                                   ("in memory, subset", subset_file, None)):
        for w in [int(x) for x in args.workers.split(",")]:
            if label.startswith("in memory") and w:
                continue
            r = run(common + ["--source", source, "--workers", str(w)] + (["--n-train", str(n_train)] if n_train else []))
            r["label"] = label
            rows.append(r)
            print(f"  {label}, {w} workers: {r['structures_per_s']:.0f} structures/s, {r['peak_rss_gib']:.2f} GiB",
                  file=sys.stderr, flush=True)
    result["throughput"] = rows
    result["ddp"] = [ddp_epochs(args.workdir, subset_store, args.subset, d, args.batch_size // d) for d in (1, 2)]
    text = table(result)
    print(text)
    name, folder = bench_results.split_out(args.out)
    bench_results.write(name, result, text, folder=folder, merge=True)
    return result


def table(r: dict) -> str:
    lines = [f"{r['frames']:,} EMT structures (Cu/Ni/Al cells and clusters); model {r['model']}, batch {r['batch_size']}.",
             "", f"Preprocessing: {r['preprocess_s']:.0f} s; store {r['store_gib']:.2f} GiB (extxyz {r['extxyz_gib']:.2f} GiB).",
             "", "| data | training frames | workers | structures/s | main peak RSS GiB | worker peak RSS GiB | setup s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in r["throughput"]:
        worker = f"{t['worker_peak_rss_gib']:.2f}" if t["worker_peak_rss_gib"] else "—"
        lines.append(f"| {t['label']} | {t['n_train']:,} | {t['workers']} | {t['structures_per_s']:.0f} | "
                     f"{t['peak_rss_gib']:.2f} | {worker} | {t['setup_s']:.1f} |")
    lines += ["", "| two epochs of the subset through train.py | processes | batch per process | wall s | steps | s/step |",
              "|---|---:|---:|---:|---:|---:|"]
    for d in r["ddp"]:
        lines.append(f"| {'DDP (gloo)' if d['devices'] > 1 else 'one process'} | {d['devices']} | "
                     f"{d['batch_size_per_process']} | {d['wall_s']:.1f} | {d['optimizer_steps']} | {d['s_per_step']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
