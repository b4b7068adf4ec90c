"""Speed of e3pot on the four standard cases, with peer results side by side.

    python benchmarks/speed.py --data-dir ../shared/peers/data --peers /path/to/peers/results

Cases: (a) energy+forces for an aspirin-sized molecule at batch 1 and 32; (b) a periodic
768-atom water box at 1 g/cm^3, r_max 5 Å (in a child process, for its peak memory); (c) one
training step on 5 aspirin frames (energy+force loss, double backward, Adam); (d) ASE MD steps
through the calculator. Each figure is the median of --reps repetitions after warm-up. (a)-(c)
time the model on a prepared graph, as the peer scripts do; (d) includes the neighbour list.
Prints markdown tables and writes JSON (--out).

``--paths eager compiled`` times each case on the eager model and on the compiled one
(:mod:`e3pot.model.compiled`: ``CompiledModel`` for (a), (b), (d) and (e),
``CompiledTrainingLoss`` for (c)). Part (e) is the time to first
result: a fresh process imports e3pot, loads a model file and evaluates aspirin once, for each path
(the compiled one with an empty and then with a filled Inductor cache).

``--paths table`` times (a), (b), (d) and (e) with the radial networks tabulated (``radial="table"``,
:mod:`e3pot.model.tables`); (c) needs the networks themselves and is left out.

``--device cuda`` runs every case on the GPU (timings end with a CUDA synchronisation; part (b) also
reports the peak GPU memory), and ``--kernels torch cueq`` times each case once per kernel backend of the
edge convolution (:mod:`e3pot.model.kernels`), one row each; ``cueq`` is not combined with the compiled
path. benchmarks/gpu.sh runs both on a machine with a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import structures  # noqa: E402

from e3pot.allocator import tune_allocator  # noqa: E402
from e3pot.data.graph import collate  # noqa: E402
from e3pot.data.neighbors import SpeciesMap, atoms_to_graph  # noqa: E402
from e3pot.model.forces import evaluate  # noqa: E402
from e3pot.model.kernels import use_kernels  # noqa: E402
from e3pot.model.potential import E3Potential  # noqa: E402

# Hyperparameters. "matched" equals the NequIP peer model (r_max 5, l_max 2, parity, 32 features,
# 4 layers, 8 Bessel, p = 6, radial MLP 2 x 64); "paper" has the NequIP-paper width.
PRESETS = {
    "small": dict(r_max=5.0, l_max=1, num_features=16, num_layers=3, num_basis=8, radial_hidden=32,
                  radial_layers=2, parity=False),
    "matched": dict(r_max=5.0, l_max=2, num_features=32, num_layers=4, num_basis=8, radial_hidden=64,
                    radial_layers=2, parity=True),
    "paper": dict(r_max=5.0, l_max=2, num_features=64, num_layers=4, num_basis=8, radial_hidden=64,
                  radial_layers=2, parity=True),
    "tiny": dict(r_max=3.0, l_max=1, num_features=4, num_layers=1, num_basis=4, radial_hidden=8,
                 radial_layers=1, parity=False),
}
SPECIES = [1, 6, 8]


def timeit(fn, reps: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_s": statistics.median(times), "q1_s": times[len(times) // 4],
            "q3_s": times[(3 * len(times)) // 4], "reps": reps}


def build(preset: str, dtype: torch.dtype, avg_num_neighbors: float = 14.6) -> E3Potential:
    torch.manual_seed(0)
    return E3Potential(SPECIES, avg_num_neighbors=avg_num_neighbors, **PRESETS[preset]).to(dtype).eval()


def prepared(model: E3Potential, device: str, kernels: str) -> E3Potential:
    """``model`` on ``device`` with its edge convolutions run by ``kernels`` (in place)."""
    return use_kernels(model.to(device), kernels, inplace=True)


def synced(fn, device: str):
    """``fn``, followed on a GPU by a synchronisation, so that a timing covers the kernels it launched."""
    if not device.startswith("cuda"):
        return fn

    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out

    return run


def graph_of(structs, model):
    species = SpeciesMap(model.atomic_numbers)
    device = next(model.parameters()).device
    return collate([atoms_to_graph(a, species, model.r_max) for a in structs]).to(device=device, dtype=model.dtype)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def evaluator(model, path: str):
    """``graph -> prediction`` for the eager model or its compiled form, and the compiled model (or None)."""
    device = str(next(model.parameters()).device)
    if path == "eager":
        return synced(lambda graph: evaluate(model, graph), device), None
    if path == "table":
        from e3pot.model.tables import use_radial

        table = use_radial(model, "table")
        return synced(lambda graph: evaluate(table, graph), device), None
    from e3pot.model.compiled import CompiledModel

    compiled = CompiledModel(model)
    return synced(lambda graph: compiled(graph, False), device), compiled


def water_child(args) -> None:
    tune_allocator()  # unless the parent set E3POT_MALLOC=off
    torch.set_num_threads(args.threads)
    model = prepared(build(args.preset, getattr(torch, args.dtype)), args.device, args.kernel)
    _, water, _ = structures.load(args.data_dir)
    t0 = time.perf_counter()
    graph = graph_of([water], model)
    nl_s = time.perf_counter() - t0
    fn, _ = evaluator(model, args.path)
    t0 = time.perf_counter()
    fn(graph)
    first_s = time.perf_counter() - t0
    r = timeit(lambda: fn(graph), args.water_reps, 2)
    gpu = {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20} if args.device.startswith("cuda") else {}
    print(json.dumps({"n_atoms": len(water), "n_edges": int(graph.edge_index.shape[1]), "neighbor_list_s": nl_s,
                      "first_call_s": first_s, "step_s": r, "us_per_atom_step": r["median_s"] / len(water) * 1e6,
                      "peak_rss_mb": peak_rss_mb(), **gpu}))


def first_result_child(args) -> None:
    """Import, load a model file and evaluate aspirin once, in a fresh process: the time to first result."""
    t0 = time.perf_counter()
    from e3pot.model.runtime import load_any, run_model
    t_import = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = use_kernels(load_any(args.model_file, device=args.device, compile=args.path == "compiled"), args.kernel)
    if args.path == "table":
        from e3pot.model.tables import use_radial

        model = use_radial(model, "table")
    t_load = time.perf_counter() - t0
    aspirin, _, _ = structures.load(args.data_dir)
    t0 = time.perf_counter()
    graph = collate([atoms_to_graph(aspirin, SpeciesMap(model.atomic_numbers), model.r_max)]).to(device=args.device)
    synced(run_model, args.device)(model, graph, False)
    t_first = time.perf_counter() - t0
    print(json.dumps({"import_s": t_import, "load_s": t_load, "first_call_s": t_first,
                      "total_s": t_import + t_load + t_first}))


def run_case(args, preset: str, dtype_name: str, path: str = "eager", kernels: str = "torch") -> dict:
    dtype = getattr(torch, dtype_name)
    model = prepared(build(preset, dtype), args.device, kernels)
    aspirin, _, _ = structures.load(args.data_dir)
    n = len(aspirin)
    res = {"preset": preset, "dtype": dtype_name, "path": path, "kernels": kernels, "device": args.device,
           "n_params": sum(p.numel() for p in model.parameters()), "hyperparams": PRESETS[preset]}
    child = ["--threads", str(args.threads), "--device", args.device, "--kernel", kernels]
    fn, compiled = evaluator(model, path)
    if "a" in args.parts:
        for batch in (1, 32):
            graph = graph_of(structures.perturbed(aspirin, batch, seed=1) if batch > 1 else [aspirin], model)
            t0 = time.perf_counter()
            fn(graph)
            first_s = time.perf_counter() - t0
            r = timeit(lambda: fn(graph), args.reps, 5)
            res[f"a_B{batch}"] = {"step_s": r, "molecules_per_s": batch / r["median_s"], "first_call_s": first_s,
                                  "us_per_atom_step": r["median_s"] / (batch * n) * 1e6}
    if "b" in args.parts:
        argv = [sys.executable, os.path.abspath(__file__), "--water-child", "--preset", preset, "--dtypes", dtype_name,
                "--water-reps", str(args.water_reps), "--path", path, *child]
        if args.data_dir:
            argv += ["--data-dir", args.data_dir]
        out = subprocess.run(argv, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"water benchmark failed:\n{out.stderr[-3000:]}")
        res["b_water"] = json.loads(out.stdout.strip().splitlines()[-1])
    if "c" in args.parts and path != "table":  # tables are for inference: training needs the networks
        from e3pot.data.graph import Labels
        from e3pot.train.loss import weighted_loss

        train_model = prepared(build(preset, dtype), args.device, kernels).train()
        graph = graph_of(structures.perturbed(aspirin, 5, seed=2), train_model)
        rng = np.random.default_rng(0)
        labels = Labels(torch.tensor(rng.normal(size=5), dtype=torch.float64),
                        torch.tensor(rng.normal(size=(5 * n, 3)), dtype=dtype),
                        torch.full((5, 3, 3), float("nan"), dtype=dtype), torch.full((5,), n)).to(device=args.device)
        opt = torch.optim.Adam(train_model.parameters(), lr=1e-4)

        def loss_fn(pred, lab):  # the energy+force loss of training (per-atom energy MSE + force MSE)
            return weighted_loss(pred, lab, 1.0, 1.0, 0.0)

        if path == "compiled":
            from e3pot.model.compiled import CompiledTrainingLoss

            compiled_loss = CompiledTrainingLoss(train_model, loss_fn, compute_stress=False)

            def loss():
                return compiled_loss(graph, labels)[0]["loss"]
        else:
            def loss():
                return loss_fn(evaluate(train_model, graph, training=True), labels)["loss"]

        def step():
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()

        step = synced(step, args.device)

        t0 = time.perf_counter()
        step()
        first_s = time.perf_counter() - t0
        res["c_train_B5"] = {"step_s": timeit(step, args.reps, 3), "first_call_s": first_s}
    if "d" in args.parts:
        from ase import units
        try:  # the ASE >= 3.29 name
            from ase.md.velocitydistribution import thermalize_momenta as MaxwellBoltzmannDistribution
        except ImportError:
            from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from ase.md.verlet import VelocityVerlet

        from e3pot.calculator import E3PotCalculator

        atoms = aspirin.copy()
        atoms.calc = E3PotCalculator(compiled if compiled is not None else model, device=args.device,
                                     kernels=kernels if compiled is None else "torch",
                                     radial="table" if path == "table" else "exact")
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
        dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
        dyn.run(5)
        t0 = time.perf_counter()
        dyn.run(args.md_steps)
        dt = (time.perf_counter() - t0) / args.md_steps
        res["d_md"] = {"steps": args.md_steps, "s_per_step": dt, "us_per_atom_step": dt / n * 1e6}
    if "e" in args.parts:
        import tempfile

        from e3pot.model.io import save_model

        with tempfile.TemporaryDirectory() as tmp:
            model_file = os.path.join(tmp, "model.pt")
            save_model(model, model_file)
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, "inductor-cache"))
            runs = [("cold", path)] + ([("warm", path)] if path == "compiled" else [])
            for label, p in runs:
                argv = [sys.executable, os.path.abspath(__file__), "--first-result-child", "--model-file", model_file,
                        "--path", p, *child]
                if args.data_dir:
                    argv += ["--data-dir", args.data_dir]
                out = subprocess.run(argv, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise RuntimeError(f"first-result benchmark failed:\n{out.stderr[-3000:]}")
                res[f"e_first_{label}"] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def run_label(r: dict) -> str:
    """How a row of ours ran: the path, and the kernels and device where they are not the defaults."""
    parts = [r.get("path", "eager")] + [r[k] for k, default in (("kernels", "torch"), ("device", "cpu"))
                                        if r.get(k, default) != default]
    return ", ".join(parts)


def fmt(x, spec="{:.1f}"):
    return "—" if x is None else spec.format(x)


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def row(name, dtype, params, a1, a32, b, c, d, source):
    return (f"| {name} | {dtype} | {params} | {fmt(get(a1, 'molecules_per_s'))} | {fmt(get(a32, 'molecules_per_s'))} | "
            f"{fmt(get(a32, 'us_per_atom_step'), '{:.0f}')} | {fmt(get(b, 'step_s', 'median_s'), '{:.3f}')} | "
            f"{fmt(get(b, 'us_per_atom_step'), '{:.0f}')} | {fmt(b.get('peak_rss_mb') / 1024 if isinstance(b, dict) and b.get('peak_rss_mb') else None, '{:.2f}')} | "
            f"{fmt(get(c, 'step_s', 'median_s'), '{:.3f}')} | {fmt(get(d, 's_per_step') * 1e3 if get(d, 's_per_step') else None)} | {source} |")


HEADER = ("| model | dtype | params | (a) B=1 mol/s | (a) B=32 mol/s | (a) B=32 µs/atom | (b) water s/step | "
          "(b) µs/atom | (b) peak RSS GiB | (c) train s/step | (d) MD ms/step | source |\n" + "|---" * 12 + "|")


def load_peers(folder: str, threads: int) -> list:
    """Peer results (JSON written by the peer benchmark scripts), as table rows and timings."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, f"*_t{threads}.json"))):
        lines = [ln for ln in open(path) if ln.strip().startswith("{")]
        if not lines:
            continue
        r = json.loads(lines[-1])
        variants = [("eager", "", "b_water", "d_md_eager" if r["package"] == "nequip" else "d_md")]
        if r["package"] == "nequip":
            variants.append(("AOTInductor", "_aoti", "b_water_aoti", "d_md_aoti"))
        for label, suffix, bkey, dkey in variants:
            b = r.get(bkey)
            if isinstance(b, dict):
                b = dict(b, peak_rss_mb=b.get("peak_rss_mb_usr_bin_time"))
            out.append({"name": f"{r['package']} {r['version']} ({label})", "dtype": r["dtype"],
                        "params": r.get("n_params"), "a1": r.get(f"a_B1{suffix}"), "a32": r.get(f"a_B32{suffix}"),
                        "b": b, "c": r.get("c_train_B5") if label == "eager" else None, "d": r.get(dkey),
                        "source": os.path.basename(path)})
    return out


def ratio_table(ours: list, peers: list, preset: str = "matched") -> str:
    """Peer time / e3pot time (> 1: e3pot faster), one e3pot preset against each peer row."""
    lines = [f"| e3pot ({preset}) | vs | dtype | (a) B=1 | (a) B=32 | (b) water | (c) train | (d) MD |", "|---" * 8 + "|"]
    for p, mine in ((p, r) for r in ours for p in peers if r["preset"] == preset and r["dtype"] == p["dtype"]):

        def ratio(peer_val, my_val):
            return fmt(peer_val / my_val if peer_val and my_val else None, "{:.2f}×")

        lines.append(
            f"| {run_label(mine)} | {p['name']} | {p['dtype']} | {ratio(get(p['a1'], 'step_s', 'median_s'), get(mine, 'a_B1', 'step_s', 'median_s'))} | "
            f"{ratio(get(p['a32'], 'step_s', 'median_s'), get(mine, 'a_B32', 'step_s', 'median_s'))} | "
            f"{ratio(get(p['b'], 'step_s', 'median_s'), get(mine, 'b_water', 'step_s', 'median_s'))} | "
            f"{ratio(get(p['c'], 'step_s', 'median_s'), get(mine, 'c_train_B5', 'step_s', 'median_s'))} | "
            f"{ratio(get(p['d'], 's_per_step'), get(mine, 'd_md', 's_per_step'))} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["small", "matched", "paper"], choices=list(PRESETS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--parts", default="abcd", help="any of a, b, c, d and e (time to first result)")
    p.add_argument("--paths", nargs="+", default=["eager"], choices=["eager", "compiled", "table"],
                   help="eager, compiled, table (eager with tabulated radial networks: e3pot.model.tables; no "
                        "training step, which needs the networks)")
    p.add_argument("--kernels", nargs="+", default=["torch"], choices=["torch", "cueq"],
                   help="kernel backends of the edge convolution, one row each (cueq: eager path only)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--water-reps", type=int, default=20)
    p.add_argument("--md-steps", type=int, default=100)
    p.add_argument("--data-dir", default=os.path.join("..", "shared", "peers", "data"),
                   help="folder with aspirin.xyz and water_box.xyz (else generated stand-ins)")
    p.add_argument("--peers", help="folder of peer result JSON files (<pkg>_<dtype>_t<threads>.json)")
    p.add_argument("--compare-preset", default="matched", help="the e3pot preset set against the peers")
    p.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                   help="tuned: e3pot.tune_allocator(), as the calculator and the CLIs do; default: glibc as is")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "speed.json"))
    p.add_argument("--water-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="matched", help=argparse.SUPPRESS)
    p.add_argument("--path", default="eager", help=argparse.SUPPRESS)
    p.add_argument("--kernel", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--first-result-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.water_child:
        args.dtype = args.dtypes[0]
        water_child(args)
        return {}
    if args.first_result_child:
        first_result_child(args)
        return {}
    torch.set_num_threads(args.threads)
    if args.malloc == "tuned":
        applied = tune_allocator()
    else:
        os.environ["E3POT_MALLOC"] = "off"  # also for the water child process
        applied = {}
    _, _, described = structures.load(args.data_dir)
    results = []
    for preset in args.presets:
        for dtype in args.dtypes:
            for path in args.paths:
                for kernels in args.kernels:
                    if kernels == "cueq" and path == "compiled":
                        print("skipping cueq on the compiled path (it runs the torch kernels)", file=sys.stderr)
                        continue
                    print(f"timing {preset} {dtype} {path} {kernels} on {args.device} ...", file=sys.stderr, flush=True)
                    results.append(run_case(args, preset, dtype, path, kernels))
    peers = load_peers(args.peers, args.threads) if args.peers else []
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        print_tables(args, results, peers, described, applied)
    print(report.getvalue(), end="")
    out = {"env": {"torch": torch.__version__, "threads": args.threads, "structures": described, "malloc": applied,
                   "device": args.device},
           "e3pot": results, "peers": peers}
    name, folder = bench_results.split_out(args.out)
    bench_results.write(name, out, report.getvalue(), folder=folder, merge=True)
    print(f"\nwrote {args.out} and {os.path.join(folder, name + '.md')}")
    return out


def print_tables(args, results, peers, described, applied) -> None:
    print(f"\nStructures: {described}; {args.threads} threads; torch {torch.__version__}; medians of {args.reps} "
          f"repetitions ({args.water_reps} for water); malloc: {applied or 'glibc defaults'}.\n")
    print(HEADER)
    for r in results:
        print(row(f"e3pot {r['preset']} ({run_label(r)})", r["dtype"], f"{r['n_params']:,}", r.get("a_B1"), r.get("a_B32"),
                  r.get("b_water"), r.get("c_train_B5"), r.get("d_md"), "this run"))
    first = [(r, label) for r in results for label in ("cold", "warm") if f"e_first_{label}" in r]
    if first:
        print("\n(e) Time to first result (fresh process: import e3pot, load the model file, neighbour list and one "
              "energy+forces call on aspirin; \"cold\"/\"warm\": empty/filled Inductor cache):\n")
        print("| model | dtype | path | import s | load s | first call s | total s |\n" + "|---" * 7 + "|")
        for r, label in first:
            e = r[f"e_first_{label}"]
            print(f"| e3pot {r['preset']} | {r['dtype']} | {run_label(r)}"
                  f"{', ' + label if r.get('path') == 'compiled' else ''} | {e['import_s']:.1f} | {e['load_s']:.1f} | "
                  f"{e['first_call_s']:.1f} | {e['total_s']:.1f} |")
        print()
    for q in peers:
        print(row(q["name"], q["dtype"], f"{q['params']:,}" if q["params"] else "—", q["a1"], q["a32"], q["b"],
                  q["c"], q["d"], q["source"]))
    if peers:
        print("\nSpeed-up of e3pot over each peer (peer time / e3pot time; > 1 means e3pot is faster):\n")
        print(ratio_table(results, peers, args.compare_preset))


if __name__ == "__main__":
    main()
