"""Fine-tuning against training from scratch, at equal labels and equal wall time: from GFN2-xTB to DFT.

    python benchmarks/fine_tuning.py --data ../shared/datasets/rmd17 --sizes 25 50 100 250 \
        --seconds 60 --pretrain-seconds 300 --out benchmarks/results/fine_tuning

1. Pretraining: one model on the GFN2-xTB frames of ``data/example.extxyz`` (ethanol and acetaldehyde, eV)
   for ``--pretrain-seconds`` (cached in ``<out>/pretrained.pt``).
2. For ethanol (seen in pretraining, at another level of theory) and aspirin (never seen; same elements), and
   each N of ``--sizes``: the first N frames of ``rmd17_<molecule>_train_01.npz`` (DFT, kcal/mol) plus 10
   validation frames, trained for ``--seconds`` of wall time each:
   ``scratch`` (a new model of the same architecture), ``fine-tuned`` (``model.init_from``, energy shifts
   re-fitted), and for ethanol ``+ replay`` (``data.replay_file`` = the xTB frames, a quarter of every batch).
   At ``--freeze-size`` (ethanol) also fine-tuned with frozen groups (``--freezes``).
3. Scores: energy and force MAE on the 1000 frames of ``rmd17_<molecule>_test_01.npz``; for the ethanol models,
   the force MAE on the xTB frames (what the pretrained model knew; energies are left out, since their reference
   differs between the two levels of theory).

Every point is a separate ``train.py`` process (``--threads`` torch threads); a point whose result file exists
under ``<out>/points`` is not run again. The summary is ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import results  # noqa: E402  (benchmarks/results.py)

XTB = os.path.join(ROOT, "data", "example.extxyz")
# The architecture of every model here (pretrained, fine-tuned, from scratch): the example config's sizes.
ARCHITECTURE = {"r_max": 4.0, "l_max": 2, "num_features": 32, "num_layers": 3, "num_basis": 8, "radial_hidden": 64,
                "radial_layers": 2, "parity": False}
TRAINING = {"dtype": "float32", "energy_weight": 1.0, "forces_weight": 10.0, "lr": 0.01, "lr_patience": 10,
            "ema_decay": 0.99}
N_VAL = 10


def write_config(out: str) -> str:
    lines = ["seed_everything: 0", "model:"]
    lines += [f"  {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in {**ARCHITECTURE, **TRAINING}.items()]
    lines += ["data:", "  batch_size: 5", "  val_batch_size: 25", "  split_seed: 0", "trainer:", "  accelerator: cpu",
              "  max_epochs: 100000", "  logger:", "    class_path: pytorch_lightning.loggers.CSVLogger",
              "    init_args:", f"      save_dir: {os.path.join(out, 'runs')}", "      name: fine_tuning",
              "early_stopping:", "  patience: 200"]
    path = os.path.join(out, "train.yaml")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def train(config: str, out: str, name: str, seconds: float, threads: int, args: list) -> str:
    model = os.path.join(out, "models", f"{name}.pt")
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config", config, "--output", model, "--overwrite",
               "--trainer.max_time", hms(seconds), "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.name", name, *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    log = os.path.join(out, "logs", f"{name}.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w") as fh:
        done = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"training {name} failed; see {log}")
    return model


def rmd17_errors(model: str, test_file: str) -> dict:
    from rmd17 import evaluate_test

    r = evaluate_test(model, test_file)
    return {"energy_mae_meV": r["energy_mae_meV"], "forces_mae_meV_A": r["forces_mae_meV_A"]}


def xtb_forces_mae(model: str) -> float:
    import e3pot
    from e3pot.data.io import iter_labelled
    from e3pot.metrics import score

    return score(e3pot.load_model(model), iter_labelled(XTB)).summary()["forces_mae_meV_A"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with rmd17_<molecule>_{train,test}_01.npz")
    p.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 250])
    p.add_argument("--seconds", type=float, default=60.0, help="wall time of every point")
    p.add_argument("--pretrain-seconds", type=float, default=300.0)
    p.add_argument("--freeze-size", type=int, default=50, help="N of the freezing variants (ethanol)")
    p.add_argument("--freezes", nargs="*", default=["[embedding]", "[embedding,radial]", "[embedding,layer0,layer1]"],
                   help="model.freeze values tried at --freeze-size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "fine_tuning"))
    args = p.parse_args(argv)
    for molecule in args.molecules:
        for split in ("train", "test"):
            path = os.path.join(args.data, f"rmd17_{molecule}_{split}_01.npz")
            if not os.path.exists(path):
                p.error(f"no such file: {path}")
    os.makedirs(os.path.join(args.out, "points"), exist_ok=True)
    config = write_config(args.out)
    start = time.perf_counter()

    pretrained = os.path.join(args.out, "models", "pretrained.pt")
    if not os.path.exists(pretrained):
        print(f"pretraining on {XTB} for {args.pretrain_seconds:g} s", file=sys.stderr, flush=True)
        train(config, args.out, "pretrained", args.pretrain_seconds, args.threads,
              ["--data.train_file", XTB, "--data.val_fraction", "0.1"])
    pre_xtb = xtb_forces_mae(pretrained)

    points = []
    plan = []
    for molecule in args.molecules:
        for n in args.sizes:
            plan += [(molecule, n, "scratch", []), (molecule, n, "fine-tuned", ["--model.init_from", pretrained])]
            if molecule == "ethanol":
                plan.append((molecule, n, "fine-tuned + replay", ["--model.init_from", pretrained,
                                                                    "--data.replay_file", XTB,
                                                                    "--data.replay_energy_unit", "eV"]))
    if "ethanol" in args.molecules:
        for freeze in args.freezes:
            plan.append(("ethanol", args.freeze_size, f"fine-tuned, freeze {freeze}",
                         ["--model.init_from", pretrained, "--model.freeze", freeze]))
    for molecule, n, method, extra in plan:
        key = f"{molecule}-{n}-{method}".replace(" ", "_").replace(",", "-").replace("[", "").replace("]", "") \
            .replace("+", "plus")
        result_file = os.path.join(args.out, "points", f"{key}.json")
        if os.path.exists(result_file):
            points.append(json.load(open(result_file)))
            continue
        train_file = os.path.join(args.data, f"rmd17_{molecule}_train_01.npz")
        print(f"[{time.perf_counter() - start:6.0f} s] {molecule} N={n} {method}", file=sys.stderr, flush=True)
        model = train(config, args.out, key, args.seconds, args.threads,
                      ["--data.train_file", train_file, "--data.energy_unit", "kcal/mol", "--data.n_val", str(N_VAL),
                       "--data.n_train", str(n), *extra])
        point = {"molecule": molecule, "n_train": n, "method": method, "seconds": args.seconds,
                 **rmd17_errors(model, os.path.join(args.data, f"rmd17_{molecule}_test_01.npz"))}
        if molecule == "ethanol":
            point["xtb_forces_mae_meV_A"] = xtb_forces_mae(model)
        with open(result_file, "w") as fh:
            json.dump(point, fh, indent=1)
        print(f"    energy MAE {point['energy_mae_meV']:.1f} meV, force MAE {point['forces_mae_meV_A']:.1f} meV/Å"
              + (f", xTB force MAE {point['xtb_forces_mae_meV_A']:.1f} meV/Å" if "xtb_forces_mae_meV_A" in point
                 else ""), file=sys.stderr, flush=True)
        points.append(point)

    lines = [f"Pretrained on {os.path.relpath(XTB, ROOT)} (GFN2-xTB) for {args.pretrain_seconds:g} s; its force MAE on "
             f"those frames: {pre_xtb:.1f} meV/Å. Each point: N rMD17 frames (+{N_VAL} validation frames), "
             f"{args.seconds:g} s of training on {args.threads} thread(s); test: the 1000 frames of split 01.", "",
             "| molecule | N | method | energy MAE (meV) | force MAE (meV/Å) | force MAE on the xTB frames (meV/Å) |",
             "|---|---:|---|---:|---:|---:|"]
    for pt in points:
        xtb = f"{pt['xtb_forces_mae_meV_A']:.1f}" if "xtb_forces_mae_meV_A" in pt else "–"
        lines.append(f"| {pt['molecule']} | {pt['n_train']} | {pt['method']} | {pt['energy_mae_meV']:.1f} | "
                     f"{pt['forces_mae_meV_A']:.1f} | {xtb} |")
    table = "\n".join(lines) + "\n"
    print(table)
    name, folder = results.split_out(args.out + ".json")
    results.write(name, {"pretrained_xtb_forces_mae_meV_A": pre_xtb, "points": points,
                         "settings": {**vars(args), "architecture": ARCHITECTURE, "training": TRAINING}},
                  table, folder=folder, command=" ".join(["python", *sys.argv]), merge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
