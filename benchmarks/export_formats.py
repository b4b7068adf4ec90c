"""Load time and time per call of one model in each way it can run: the model file (eager), the compiled path,
the TorchScript export and the AOTInductor export.

    python benchmarks/export_formats.py                      # a model of configs/example.yaml's sizes, random weights
    python benchmarks/export_formats.py --model models/example.pt --reps 100

For each format: the time to write it (the exports), to load it, the first energy+forces call on an
aspirin-sized molecule (for the compiled path this includes its compilation) and the median of ``--reps``
further calls after ``--warmup`` calls (TorchScript optimises its graph during its first calls). Everything runs in this process, on ``--threads`` CPU threads, with a
fresh Inductor cache (``--warm-cache`` keeps the usual one). Prints a markdown table and writes
``benchmarks/results/export_formats.{json,md}`` (``--out``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as bench_results  # noqa: E402
import structures  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/example.yaml's model
EXAMPLE = dict(r_max=4.0, l_max=2, num_features=32, num_layers=3, num_basis=8, radial_hidden=64, radial_layers=2,
               parity=False)
FORMATS = ["eager", "compiled", "torchscript", "aoti"]
LABELS = {"eager": "model file (eager)", "compiled": "compiled (CompiledModel)", "torchscript": "TorchScript export",
          "aoti": "AOTInductor export (.pt2)"}


def example_model(path: str, dtype: str) -> str:
    """A model file of the example's sizes with random weights (speed does not depend on the weights)."""
    from e3pot.model.io import dtype_from_name, save_model
    from e3pot.model.potential import E3Potential

    torch.manual_seed(0)
    model = E3Potential([1, 6, 8], avg_num_neighbors=10.0, **EXAMPLE).to(dtype_from_name(dtype)).eval()
    return save_model(model, path)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(fmt: str, model_file: str, work: str, graph, reps: int, warmup: int, reference=None) -> Dict[str, float]:
    """Export (if an export), load and time ``fmt``; with ``reference`` (the eager (energy, forces)), also the
    largest difference of its results from the eager ones."""
    from e3pot.model.runtime import load_any, run_model

    row: Dict[str, float] = {}
    path = model_file
    if fmt in ("torchscript", "aoti"):
        from e3pot.model.io import load_model

        model = load_model(model_file)
        if fmt == "torchscript":
            from e3pot.model.export import export_model

            path = os.path.join(work, "model.ts")
            _, row["export_s"] = timed(lambda: export_model(model, path))
        else:
            from e3pot.model.aoti import export_aoti

            path = os.path.join(work, "model.pt2")
            _, row["export_s"] = timed(lambda: export_aoti(model, path))
        row["file_mb"] = os.path.getsize(path) / 2 ** 20
    loaded, row["load_s"] = timed(lambda: load_any(path, compile=fmt == "compiled"))

    def call():
        return run_model(loaded, graph, False)

    out, row["first_call_s"] = timed(call)
    if reference is not None:
        row["energy_diff_ev"] = abs(float(out[0].detach()[0]) - float(reference[0][0]))
        row["forces_diff_ev_a"] = float((out[1].double() - reference[1].double()).abs().max())
    row["result"] = (out[0].detach(), out[1].detach())
    for _ in range(warmup):
        call()
    times: List[float] = []
    for _ in range(reps):
        times.append(timed(call)[1])
    row["median_call_ms"] = 1e3 * statistics.median(times)
    row["reps"] = reps
    return row


def table(rows: Dict[str, Dict[str, float]], molecule: str, n_atoms: int, n_edges: int, dtype: str,
          threads: int) -> str:
    base = rows.get("eager", {}).get("median_call_ms")
    lines = [f"Energy+forces of {molecule} ({n_atoms} atoms, {n_edges} edges), {dtype}, {threads} CPU thread"
             f"{'s' if threads != 1 else ''}; export, load and first call once, per call: median.\n",
             "| format | export (s) | load (s) | first call (s) | per call (ms) | vs eager | max abs. force diff. (eV/Å) |",
             "|---|---|---|---|---|---|---|"]
    for fmt, row in rows.items():
        export = f"{row['export_s']:.1f}" if "export_s" in row else "-"
        ratio = f"{base / row['median_call_ms']:.2f}x" if base else "-"
        diff = f"{row['forces_diff_ev_a']:.1e}" if "forces_diff_ev_a" in row else "-"
        lines.append(f"| {LABELS[fmt]} | {export} | {row['load_s']:.3f} | {row['first_call_s']:.2f} | "
                     f"{row['median_call_ms']:.2f} | {ratio} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model file (default: one of configs/example.yaml's sizes, random weights)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="dtype of the built model (default float32, as configs/example.yaml); a --model keeps its own")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=FORMATS)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "peers", "data"),
                   help="folder with aspirin.xyz (else ethanol stands in)")
    p.add_argument("--warm-cache", action="store_true", help="keep the usual Inductor cache (default: a fresh one)")
    p.add_argument("--out", default=os.path.join(bench_results.FOLDER, "export_formats.json"))
    args = p.parse_args(argv)

    from e3pot.data.graph import collate
    from e3pot.data.neighbors import SpeciesMap, atoms_to_graph
    from e3pot.model.io import load_model

    torch.set_num_threads(args.threads)
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="e3pot-export-formats-") as work:
        if not args.warm_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(work, "inductor")
        model_file = args.model or example_model(os.path.join(work, "model.pt"), args.dtype)
        model = load_model(model_file)
        dtype = str(model.dtype).replace("torch.", "")
        molecule, _, where = structures.load(args.data_dir)
        graph = collate([atoms_to_graph(molecule, SpeciesMap(model.atomic_numbers), model.r_max)])
        rows: Dict[str, dict] = {}
        reference = None
        for fmt in args.formats:
            print(f"measuring {LABELS[fmt]} ...", file=sys.stderr, flush=True)
            rows[fmt] = measure(fmt, model_file, work, graph, args.reps, args.warmup, reference)
            result = rows[fmt].pop("result")
            if fmt == "eager":
                reference = result
    if cache is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    name = "aspirin" if "aspirin" in where else "ethanol"
    text = table(rows, name, len(molecule), int(graph.edge_index.shape[1]), dtype, args.threads)
    print(text)
    results = {"model": args.model or f"configs/example.yaml sizes ({EXAMPLE}), random weights", "dtype": dtype,
               "molecule": name, "n_atoms": len(molecule), "n_edges": int(graph.edge_index.shape[1]),
               "threads": args.threads, "formats": rows}
    out_name, folder = bench_results.split_out(args.out)
    bench_results.write(out_name, results, text, folder=folder)
    return results


if __name__ == "__main__":
    main()
