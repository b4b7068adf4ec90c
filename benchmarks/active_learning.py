"""Active learning on ethanol with GFN2-xTB as the labeller: frames picked by committee uncertainty
against frames picked at random, at equal numbers of labels.

    python benchmarks/active_learning.py --rounds 4 --members 3 --seconds 45 --per-round 25 \
        --stability-runs 4 --jobs 1 --threads 1 --out benchmarks/results/active_learning

Data (xTB Langevin MD of ``ase.build.molecule("CH3CH2OH")``, as data/make_example_data.py runs it: 0.5 fs,
friction 0.01/fs, seeded Maxwell-Boltzmann start, 200 steps of equilibration): 25 starting frames at 300 K,
a frame every 20 steps, and a held-out hot set of 100 frames at 1000 K, a frame every 10 steps (another
seed). Both are cached under ``--out/data`` (the file names hold the settings), so a rerun reuses them.

Round 0 trains a committee of ``--members`` models (``train.py``, each on a bootstrap resample of the
labelled frames with its own seed, ``--seconds`` of wall time, ``--jobs`` at a time with ``--threads``
torch threads each) on the starting frames; both strategies start from it. Each round then, per strategy:
committee Langevin MD at 500, 700, 850 and 1000 K from the last labelled frames (300 steps, a frame
every 10 into the pool; a run stops at the first interatomic distance under 0.5 Å or non-finite energy),
``--per-round`` frames picked from the pool (``uncertainty``: :func:`e3pot.select.select_frames`;
``random``: a seeded uniform draw), labelled by xTB, added to the set, and a new committee trained.
After every round the first member and the committee mean are scored on the hot set (force MAE per
component, meV/Å; energy MAE, meV/atom), and member 1 alone runs ``--stability-runs`` Langevin runs of
400 steps at 1000 K from hot-set frames; a run blows up at a distance under 0.5 Å, a non-finite energy,
or a jump of the total energy by more than 5 eV between consecutive steps.

Last, the uncertainties are ranked against the errors on the hot set (Spearman, :mod:`e3pot.calibration`)
for the final committees and for a shallow ensemble (one model with ``--model.heads 4`` trained for
``members × seconds`` on the uncertainty strategy's final labelled set).

About 30 minutes on 2 CPU cores with the defaults (``--jobs 1``; most of it training); ``--jobs 3`` on 3 or
more cores trains a committee's members at once.

Working files (labelled sets, pools, models, training logs and CSV runs) go under ``--out``; the summary
is ``<out>.json`` and ``<out>.md`` (with the run's provenance, ``benchmarks/results.py``) and ``<out>.png``
(force MAE against labels). ``--quick``: 1 round, 2 members of 8 s, 5 frames per round, short MD; a
smoke test of a few minutes. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import results  # noqa: E402  (benchmarks/results.py)
from learning_curves import read_progress  # noqa: E402

STRATEGIES = ("uncertainty", "random")
POOL_TEMPERATURES = (500.0, 700.0, 850.0, 1000.0)  # K, one committee MD run each
TRUST_FACTOR = 4.0  # upper trust level: this many times the median uncertainty on the labelled frames
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
MIN_DISTANCE = 0.5  # Å: closer atoms mean the run has blown up
ENERGY_JUMP = 5.0  # eV of total energy between consecutive steps: a blow-up in the stability runs
SHALLOW_HEADS = 4
MAX_EPOCHS = 10_000_000  # the wall-clock budget is what stops a training
MODEL = {"r_max": 4.0, "l_max": 1, "num_features": 16, "num_layers": 2, "num_basis": 8, "radial_hidden": 32,
         "radial_layers": 1, "dtype": "float32", "lr": 0.01, "lr_patience": 10, "energy_weight": 1.0,
         "forces_weight": 10.0}
FULL = {"rounds": 4, "members": 3, "seconds": 45, "per_round": 25, "stability_runs": 4, "stability_steps": 400,
        "pool_steps": 300, "pool_every": 10}
QUICK = {"rounds": 1, "members": 2, "seconds": 8, "per_round": 5, "stability_runs": 1, "stability_steps": 50,
         "pool_steps": 60, "pool_every": 5}
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- xTB data and labels

def xtb_md(path: str, n_frames: int, stride: int, temperature: float, seed: int) -> list:
    """Labelled frames of ethanol from xTB Langevin MD (data/make_example_data.py), cached in ``path``."""
    import ase.io

    if os.path.exists(path):
        return ase.io.read(path, ":")
    maker_file = os.path.join(ROOT, "data", "make_example_data.py")
    spec = importlib.util.spec_from_file_location("make_example_data", maker_file)
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    say(f"xTB MD at {temperature:g} K: {n_frames} frames, one every {stride} steps, seed {seed}")
    with contextlib.redirect_stdout(sys.stderr):
        frames = maker.run_molecule("ethanol", "CH3CH2OH", n_frames, stride, temperature, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ase.io.write(path + ".tmp", frames, format="extxyz")
    os.replace(path + ".tmp", path)  # a cached file is complete
    return ase.io.read(path, ":")


def xtb_label(frames: list) -> tuple[list, int]:
    """The frames with GFN2-xTB energy and forces (SinglePointCalculator), and how many xTB could not do."""
    from ase.calculators.calculator import CalculatorError
    from ase.calculators.singlepoint import SinglePointCalculator
    from tblite.ase import TBLite

    out, failed = [], 0
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
        try:
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        except CalculatorError as exc:  # an SCF that does not converge
            say(f"  xTB failed on a frame ({exc}); left out")
            failed += 1
            continue
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        out.append(atoms)
    return out, failed


def write_frames(path: str, frames: list) -> str:
    import ase.io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    ase.io.write(path, frames, format="extxyz")
    return path


# ---------------------------------------------------------------- training

def epochs_of(out: str, name: str) -> int | None:
    """Training epochs of the newest run ``name`` under ``<out>/runs`` (the last may be partial)."""
    found = glob.glob(os.path.join(out, "runs", name, "version_*", "metrics.csv"))
    if not found:
        return None
    return read_progress(max(found, key=lambda path: int(path.split("version_")[-1].split(os.sep)[0])))[0]


def write_config(out: str) -> str:
    import yaml

    config = {"model": MODEL, "data": {"val_fraction": 0.1, "batch_size": 4},
              "trainer": {"accelerator": "cpu", "max_epochs": MAX_EPOCHS,
                          "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                     "init_args": {"save_dir": os.path.join(out, "runs"), "name": "al"}}},
              "early_stopping": {"patience": 50}}
    path = os.path.join(out, "train.yaml")
    with open(path, "w") as fh:
        fh.write("# written by benchmarks/active_learning.py\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def train_one(job: dict) -> str:
    """Run train.py for one model in a child process; returns the model file, raises with the log's tail."""
    s = job["seconds"]
    cmd = [sys.executable, "train.py", "--config", job["config"], "--data.train_file", job["train_file"],
           "--seed_everything", str(job["seed"]), "--output", job["output"], "--overwrite",
           "--trainer.max_time", f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}",
           "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name", job["name"], *job["args"]]
    os.makedirs(os.path.dirname(job["output"]), exist_ok=True)
    log = os.path.join(os.path.dirname(job["output"]), job["name"] + ".log")
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]))
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=3 * s + 900)
    if proc.returncode != 0 or not os.path.exists(job["output"]):
        with open(log) as fh:
            tail = fh.read()[-3000:]
        raise RuntimeError(f"training {job['name']} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return job["output"]


def train_committee(args, config: str, train_file: str, folder: str, tag: str, round_: int) -> list:
    """``--members`` models on bootstrap resamples of ``train_file``, seeds that depend on the round only."""
    jobs = [{"config": config, "train_file": train_file, "seed": 1000 * args.seed + 100 * round_ + k,
             "output": os.path.join(folder, f"member{k + 1}.pt"), "name": f"{tag}-member{k + 1}",
             "seconds": args.seconds, "threads": args.threads, "args": ["--data.bootstrap", "true"]}
            for k in range(args.members)]
    say(f"{tag}: training {args.members} members, {args.seconds} s each, {args.jobs} at a time")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        return list(pool.map(train_one, jobs))


# ---------------------------------------------------------------- MD with a model

def min_distance(atoms) -> float:
    pos = atoms.positions
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    d[np.diag_indices(len(atoms))] = np.inf
    return float(d.min())


def langevin(start, calc, temperature: float, steps: int, seed: int, every: int = 0,
             energy_jump: float | None = None) -> dict:
    """Langevin MD from ``start`` with ``calc``, stopped at a blow-up; frames every ``every`` steps."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    from e3pot.calculator import UncertainStructure
    from e3pot.model.runtime import NonFiniteError

    try:  # ASE >= 3.29 name of MaxwellBoltzmannDistribution
        from ase.md.velocitydistribution import thermalize_momenta as maxwell_boltzmann
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as maxwell_boltzmann

    atoms = start.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    maxwell_boltzmann(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(atoms, timestep=TIMESTEP_FS * units.fs, temperature_K=temperature,
                   friction=FRICTION_PER_FS / units.fs, fixcm=False, rng=rng)
    frames, reason, done = [], None, 0
    try:
        previous = atoms.get_total_energy()
        for step in range(1, steps + 1):
            dyn.run(1)
            total = atoms.get_total_energy()
            if not np.isfinite(total) or not np.isfinite(atoms.positions).all():
                reason = "non-finite energy"
            elif min_distance(atoms) < MIN_DISTANCE:
                reason = f"distance < {MIN_DISTANCE} Å"
            elif energy_jump is not None and abs(total - previous) > energy_jump:
                reason = f"total energy jump > {energy_jump:g} eV"
            if reason:
                break
            done, previous = step, total
            if every and step % every == 0:
                frame = atoms.copy()
                frame.info.update(pool_temperature=temperature, pool_step=step)
                frames.append(frame)
    except NonFiniteError:
        reason = "non-finite energy"
    except UncertainStructure:  # past the upper trust level: the run ends here, and is no blow-up
        return {"frames": frames, "blew_up": False, "reason": "past the upper trust level", "steps": done}
    return {"frames": frames, "blew_up": reason is not None, "reason": reason, "steps": done}


def trust_level(models: list, labelled: list) -> float:
    """The upper trust level of a round (eV/Å): TRUST_FACTOR x the median, over the labelled frames, of the
    committee's largest per-atom force std. More uncertain structures are where a poor model's MD has wandered
    off; the pool MD stops there, and no strategy picks beyond it."""
    from e3pot.calculator import E3PotCalculator

    calc = E3PotCalculator(models)
    stds = []
    for frame in labelled:
        atoms = frame.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        stds.append(float(calc.results["forces_std"].max()))
    return TRUST_FACTOR * float(np.median(stds))


def committee_pool(args, models: list, labelled: list, round_: int) -> tuple[list, list, float]:
    """Frames from committee MD at POOL_TEMPERATURES, each run from one of the last labelled frames, each stopped at
    the first step past the round's upper trust level (:func:`trust_level`)."""
    from e3pot.calculator import E3PotCalculator

    level = trust_level(models, labelled)
    calc = E3PotCalculator(models, uncertainty_threshold=level, stop_when_uncertain=True)
    pool, runs = [], []
    for i, temperature in enumerate(POOL_TEMPERATURES):
        run = langevin(labelled[-1 - i % len(labelled)], calc, temperature, args.pool_steps,
                       seed=1000 * args.seed + 10 * round_ + i, every=args.pool_every)
        pool += run["frames"]
        runs.append({"temperature": temperature, "steps": run["steps"], "frames": len(run["frames"]),
                     "blew_up": run["blew_up"], "reason": run["reason"]})
    return pool, runs, level


def stability(args, model: str, hot: list) -> dict:
    """Member-1 Langevin runs at 1000 K from hot-set frames; the same seeds and starts in every round."""
    from e3pot.calculator import E3PotCalculator

    calc = E3PotCalculator(model)
    runs = [langevin(hot[(k * len(hot)) // args.stability_runs], calc, 1000.0, args.stability_steps,
                     seed=10_000 + k, energy_jump=ENERGY_JUMP) for k in range(args.stability_runs)]
    return {"runs": len(runs), "blow_ups": sum(r["blew_up"] for r in runs),
            "steps": [r["steps"] for r in runs], "reasons": [r["reason"] for r in runs if r["reason"]]}


# ---------------------------------------------------------------- picking and scoring

def pick(strategy: str, models: list, pool: list, n: int, seed: int, level: float) -> list:
    """``n`` frames of the pool (all of it when it holds fewer)."""
    n = min(n, len(pool))
    if strategy == "random":
        return [pool[i].copy() for i in np.random.default_rng(seed).choice(len(pool), n, replace=False)]
    from e3pot.select import select_frames

    return select_frames(models=models, pool=pool, n=n, max_score=level)


def hot_errors(model, hot: list) -> dict:
    """Force MAE (meV/Å, per component) and energy MAE (meV/atom) on the hot set of ``model``, a model file
    or a list of them (a committee: its mean)."""
    from e3pot.metrics import error_stats
    from e3pot.predict import predict

    preds = predict(model, hot)
    n_atoms = np.array([len(a) for a in hot])
    forces = error_stats(np.concatenate([p["forces"].ravel() for p in preds]),
                         np.concatenate([a.get_forces().ravel() for a in hot]), 1000.0)
    energy = error_stats(np.array([p["energy"] for p in preds]) / n_atoms,
                         np.array([a.get_potential_energy() for a in hot]) / n_atoms, 1000.0)
    return {"forces_mae": forces["mae"], "energy_mae": energy["mae"]}


def ranking(model, hot: list) -> dict:
    """How the committee's or shallow ensemble's stds rank its errors on the hot set."""
    from e3pot.calculator import E3PotCalculator
    from e3pot.calibration import force_components, spearman, summary

    calc = E3PotCalculator(model)
    e_err, e_std, f_err, f_std, n_atoms = [], [], [], [], []
    for frame in hot:
        atoms = frame.copy()
        atoms.calc = calc
        atoms.get_potential_energy()
        e_err.append(calc.results["energy"] - frame.get_potential_energy())
        e_std.append(calc.results["energy_std"])
        f_err.append(calc.results["forces"] - frame.get_forces())
        f_std.append(np.asarray(calc.results["forces_std"]))
        n_atoms.append(len(frame))
    e_err, e_std, n_atoms = np.array(e_err), np.array(e_std), np.array(n_atoms)
    f_err, f_std = np.concatenate(f_err), np.concatenate(f_std)
    return {"spearman_forces_atom": spearman(f_std, np.linalg.norm(f_err, axis=1)),
            "spearman_energy": spearman(e_std, np.abs(e_err)),
            "forces_components": summary(*force_components(f_err, f_std)),
            "energy_per_atom": summary(e_err / n_atoms, e_std / n_atoms)}


def score(args, models: list, hot: list, labels: int, tag: str, **extra) -> dict:
    epochs = [epochs_of(args.out, f"{tag}-member{k + 1}") for k in range(len(models))]
    row = {"labels": labels, "member1": hot_errors(models[0], hot), "committee": hot_errors(models, hot),
           "stability": stability(args, models[0], hot), "epochs": epochs, **extra}
    say(f"  {labels} labels: member 1 force MAE {row['member1']['forces_mae']:.1f} meV/Å, energy MAE "
        f"{row['member1']['energy_mae']:.2f} meV/atom; committee force MAE {row['committee']['forces_mae']:.1f} "
        "meV/Å; "
        f"blow-ups {row['stability']['blow_ups']}/{row['stability']['runs']}")
    return row


# ---------------------------------------------------------------- the loop

def run_strategy(args, strategy: str, config: str, start: list, round0: list, row0: dict, hot: list) -> dict:
    out = os.path.join(args.out, strategy)
    labelled, models, rows, train_file = list(start), round0, [dict(row0, round=0)], None
    for r in range(1, args.rounds + 1):
        folder = os.path.join(out, f"round{r}")
        say(f"{strategy} round {r}: committee MD for the pool")
        pool, pool_runs, level = committee_pool(args, models, labelled, r)
        write_frames(os.path.join(folder, "pool.extxyz"), pool)
        picks = pick(strategy, models, pool, args.per_round, seed=1000 * args.seed + r, level=level) if pool else []
        temperatures = Counter(f"{a.info['pool_temperature']:g} K" for a in picks)
        reasons = [a.info["e3pot_select_reason"] for a in picks if "e3pot_select_reason" in a.info]
        new, failed = xtb_label(picks)
        labelled += new
        train_file = write_frames(os.path.join(folder, "train.extxyz"), labelled)
        say(f"{strategy} round {r}: pool {len(pool)} frames, picked {len(picks)}, {len(new)} labelled")
        models = train_committee(args, config, train_file, folder, f"{strategy}-r{r}", r)
        rows.append(score(args, models, hot, len(labelled), f"{strategy}-r{r}", round=r, pool=len(pool),
                          pool_runs=pool_runs, trust_level=level, picked=len(picks), picked_from=dict(temperatures), xtb_failed=failed,
                          reasons=reasons))
    return {"rows": rows, "models": models, "train_file": train_file}


def fmt(value, digits: int = 1) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def markdown(res: dict) -> str:
    s = res["settings"]
    lines = [f"## Active learning on ethanol, GFN2-xTB labels ({s['rounds']} round(s) of {s['per_round']} frames)", "",
             f"Committees of {s['members']} models (l_max 1, 16 features, 2 layers, float32), each trained for "
             f"{s['seconds']} s on a bootstrap resample, {s['jobs']} at a time with {s['threads']} torch thread(s). "
             f"Both strategies start from the same round-0 committee ({s['start_frames']} frames of 300 K xTB MD). "
             f"Pools: committee MD at {', '.join(f'{t:g}' for t in POOL_TEMPERATURES)} K, {s['pool_steps']} steps, "
             f"a frame every {s['pool_every']}, each run stopped at the first step past the round's upper trust level "
             f"({TRUST_FACTOR:g} x the median largest per-atom force std of the committee on the labelled frames). "
             "Uncertainty picks: e3pot.select.select_frames (largest per-atom "
             "force std, spread out by farthest-point sampling in feature space); random picks: a seeded uniform "
             "draw.", "",
             f"Scored on the hot set ({s['hot_frames']} frames of 1000 K xTB MD): force MAE per component (meV/Å) "
             "and energy MAE (meV/atom) of member 1 (committee mean in parentheses); blow-ups of member 1 in "
             f"{s['stability_runs']} Langevin run(s) of {s['stability_steps']} steps at 1000 K (distance < "
             f"{MIN_DISTANCE} Å, non-finite energy, or total energy jumping > {ENERGY_JUMP:g} eV in a step). "
             "Labels: xTB calculations spent, the starting frames included.", "",
             "| round | labels | uncertainty: force MAE | energy MAE | blow-ups | random: force MAE | energy MAE | "
             "blow-ups |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for unc, rnd in zip(res["strategies"]["uncertainty"], res["strategies"]["random"]):
        cells = []
        for row in (unc, rnd):
            m, c, st = row["member1"], row["committee"], row["stability"]
            cells += [f"{fmt(m['forces_mae'])} ({fmt(c['forces_mae'])})",
                      f"{fmt(m['energy_mae'], 2)} ({fmt(c['energy_mae'], 2)})", f"{st['blow_ups']}/{st['runs']}"]
        labels = unc["labels"] if unc["labels"] == rnd["labels"] else f"{unc['labels']} / {rnd['labels']}"
        lines.append(f"| {unc['round']} | {labels} | " + " | ".join(cells) + " |")
    lines += ["", "Uncertainty against error on the hot set: Spearman ρ of the per-atom force std against the norm of "
              "the atom's force error, and of the energy std against the absolute energy error of each structure; "
              "miscalibration area of the force components and energies per atom (0 = calibrated, 0.5 = worst). "
              "The shallow ensemble's stds are scaled by factors fitted on its validation frames when it was "
              "trained, the committees' are raw; ρ does not depend on such a scale.", "",
              "| model | ρ forces (per atom) | ρ energy (per structure) | miscal. area forces | "
              "miscal. area energy |",
              "|---|---:|---:|---:|---:|"]
    for name, r in res["ranking"].items():
        lines.append(f"| {name} | {fmt(r['spearman_forces_atom'], 2)} | {fmt(r['spearman_energy'], 2)} | "
                     f"{fmt(r['forces_components']['miscalibration_area'], 3)} | "
                     f"{fmt(r['energy_per_atom']['miscalibration_area'], 3)} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install e3pot[bench]); no plot written")
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strategy, colour in zip(STRATEGIES, ("C0", "C1")):
        rows = res["strategies"][strategy]
        labels = [r["labels"] for r in rows]
        ax.plot(labels, [r["member1"]["forces_mae"] for r in rows], "o-", color=colour, label=f"{strategy}, member 1")
        ax.plot(labels, [r["committee"]["forces_mae"] for r in rows], "s--", color=colour,
                label=f"{strategy}, committee mean")
    ax.set_xticks([r["labels"] for r in res["strategies"][STRATEGIES[0]]])  # the other's differ by failed labels
    ax.set_xlabel("xTB labels")
    ax.set_ylabel("force MAE on the 1000 K hot set (meV/Å)")
    ax.set_title("ethanol: uncertainty vs random picks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"  # before tblite and torch load: xTB and the MD here single-threaded
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, help=f"default {FULL['rounds']}")
    p.add_argument("--members", type=int, help=f"committee size, default {FULL['members']}")
    p.add_argument("--seconds", type=int, help=f"training wall time per member, default {FULL['seconds']}")
    p.add_argument("--per-round", type=int, help=f"frames labelled per round, default {FULL['per_round']}")
    p.add_argument("--stability-runs", type=int, help=f"default {FULL['stability_runs']}")
    p.add_argument("--start-frames", type=int, default=25, help="300 K xTB frames of round 0")
    p.add_argument("--hot-frames", type=int, default=100, help="1000 K xTB frames of the hot set")
    p.add_argument("--jobs", type=int, help="members trained at once (default 1; --quick: up to 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "active_learning"))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.jobs is None:
        args.jobs = min(2, args.members, os.cpu_count() or 1) if args.quick else 1
    least = {"rounds": 0, "members": 2, "seconds": 1, "per_round": 1, "stability_runs": 1, "jobs": 1, "threads": 1}
    for name, low in least.items():  # a committee needs two members for a spread
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low}")
    if args.start_frames < 10 or args.hot_frames < 1:
        p.error("--start-frames must be at least 10 (a tenth is held out for validation), --hot-frames at least 1")
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)

    data = os.path.join(args.out, "data")
    start = xtb_md(os.path.join(data, f"start_300K_n{args.start_frames}_every20_seed{args.seed}.extxyz"),
                   args.start_frames, 20, 300.0, args.seed)
    hot = xtb_md(os.path.join(data, f"hot_1000K_n{args.hot_frames}_every10_seed{args.seed + 1}.extxyz"),
                 args.hot_frames, 10, 1000.0, args.seed + 1)
    config = write_config(args.out)

    say("round 0: the starting committee, shared by both strategies")
    start_file = write_frames(os.path.join(args.out, "round0", "train.extxyz"), start)
    round0 = train_committee(args, config, start_file, os.path.join(args.out, "round0"), "round0", 0)
    row0 = score(args, round0, hot, len(start), "round0")
    finals = {s: run_strategy(args, s, config, start, round0, row0, hot) for s in STRATEGIES}

    unc = finals["uncertainty"]
    shallow_seconds = args.members * args.seconds
    say(f"shallow ensemble: {SHALLOW_HEADS} heads, {shallow_seconds} s on the uncertainty strategy's final set")
    shallow = train_one({"config": config, "train_file": unc["train_file"] or start_file,
                         "seed": 1000 * args.seed + 999,
                         "output": os.path.join(args.out, "shallow", "shallow.pt"), "name": "shallow",
                         "seconds": shallow_seconds, "threads": args.threads,
                         "args": ["--model.heads", str(SHALLOW_HEADS)]})
    rank = {f"committee of {args.members}, uncertainty picks": ranking(unc["models"], hot),
            f"committee of {args.members}, random picks": ranking(finals["random"]["models"], hot),
            f"shallow ensemble, {SHALLOW_HEADS} heads, uncertainty picks": ranking(shallow, hot)}
    for name, r in rank.items():
        say(f"ranking, {name}: Spearman forces {fmt(r['spearman_forces_atom'], 2)}, "
            f"energy {fmt(r['spearman_energy'], 2)}")

    settings = {k: getattr(args, k) for k in ("rounds", "members", "seconds", "per_round", "stability_runs",
                                              "stability_steps", "pool_steps", "pool_every", "start_frames",
                                              "hot_frames", "jobs", "threads", "seed", "quick")}
    res = {"settings": settings, "model": MODEL,
           "strategies": {s: finals[s]["rows"] for s in STRATEGIES}, "ranking": rank,
           "shallow": {"heads": SHALLOW_HEADS, "seconds": shallow_seconds, "model_file": shallow,
                       "epochs": epochs_of(args.out, "shallow")},
           "wall_s": time.perf_counter() - T0}
    text = markdown(res)
    name, folder = os.path.basename(args.out), os.path.dirname(args.out)
    path = results.write(name, res, text, folder=folder)  # with the run's provenance
    png = plot(res, os.path.join(folder, name + ".png"))
    print(text)
    say(f"written: {path}, {os.path.splitext(path)[0]}.md" + (f", {png}" if png else ""))
    return res


if __name__ == "__main__":
    main()
