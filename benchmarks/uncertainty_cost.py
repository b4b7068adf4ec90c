"""What an uncertainty costs: one model against a committee of K (one after the other, and in one pass with
stacked weights) and a shallow ensemble of K heads, per energy+forces call, in one run.

    python benchmarks/uncertainty_cost.py --members 3 --heads 4 --threads 2 --repeats 30 \
        --out benchmarks/results/uncertainty_cost

Models: the example config's sizes (l_max 2, 32 features, 3 layers, r_max 4 Å), random weights, float32.
Structures: ethanol (9 atoms), a batch of 32 ethanol molecules, and a periodic box of 96 water molecules.
Each case is timed ``--repeats`` times after two warm-up calls; the table gives medians in ms and the ratio to
one model measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from ase.build import molecule

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import results  # noqa: E402  (benchmarks/results.py)

SIZES = dict(r_max=4.0, l_max=2, num_features=32, num_layers=3, num_basis=8, radial_hidden=64, radial_layers=2,
             parity=False, avg_num_neighbors=8.0)


def structures():
    from ase import Atoms

    ethanol = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    water = molecule("H2O")
    box = 14.2  # 96 molecules: about 1 g/cm^3
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)[:96]
    atoms = Atoms(cell=[box] * 3, pbc=True)
    for k, site in enumerate(grid):
        w = water.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3))
        w.positions += (site + 0.5) * box / 5
        atoms += w
    return {"ethanol": [ethanol], "32 ethanol": [ethanol.copy() for _ in range(32)], "water 288 atoms": [atoms]}


def timed(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", default=os.path.join(HERE, "results", "uncertainty_cost.json"),
                   help="the results' JSON path (the table goes next to it as .md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from e3pot.data.graph import collate
    from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
    from e3pot.model.ensemble import Committee, head_spread
    from e3pot.model.runtime import run_model
    from e3pot.testing.models import random_model

    def model(seed, heads=1):
        return random_model("e3", atomic_numbers=(1, 6, 8), seed=seed, dtype=torch.float32, heads=heads, **SIZES)

    one = model(0)
    members = [model(s) for s in range(args.members)]
    stacked = Committee(members, stacked=True)
    sequential = Committee(members, stacked=False)
    shallow = model(0, heads=args.heads)
    species = SpeciesMap(one.atomic_numbers)
    rows = []
    for name, atoms_list in structures().items():
        graph = collate([atoms_to_graph(a, species, one.r_max, source=name) for a in atoms_list])
        stress = bool(atoms_list[0].pbc.any())
        cases = {
            "one model": lambda: run_model(one, graph, stress),
            f"committee of {args.members}, one after the other": lambda: sequential.spread(graph, stress),
            f"committee of {args.members}, stacked weights": lambda: stacked.spread(graph, stress),
            f"shallow ensemble of {args.heads} heads: mean only": lambda: run_model(shallow, graph, stress),
            f"shallow ensemble of {args.heads} heads: mean and spread": lambda: head_spread(shallow, graph, stress),
        }
        base = None
        for case, fn in cases.items():
            ms = timed(fn, args.repeats)
            base = ms if base is None else base
            rows.append({"structure": name, "n_atoms": int(graph.positions.shape[0]), "case": case, "ms": ms,
                         "ratio": ms / base})
            print(f"{name:>16} | {case:<48} | {ms:9.2f} ms | {ms / base:5.2f}x", file=sys.stderr)
    lines = ["| structure | atoms | case | ms per call (median) | × one model |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['structure']} | {r['n_atoms']} | {r['case']} | {r['ms']:.2f} | {r['ratio']:.2f} |" for r in rows]
    settings = {"members": args.members, "heads": args.heads, "threads": args.threads, "repeats": args.repeats,
                "sizes": SIZES, "dtype": "float32"}
    name, folder = results.split_out(args.out)
    path = results.write(name, {"settings": settings, "rows": rows}, "\n".join(lines) + "\n", folder=folder,
                         command=" ".join(["python", *sys.argv]), merge=True)
    print("\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
