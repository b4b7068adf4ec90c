"""``e3pot export-checkpoint CKPT -o model.pt``: a model file from a training checkpoint.

The model file holds the checkpoint's averaged (EMA) weights, the ones training validates and saves,
so it is what training would have written had it stopped at that checkpoint (``last.ckpt``, or a
``best-*.ckpt``). The checkpoint is read as plain data: no code in it runs.

The model's species and average neighbour count are not weights: a checkpoint that does not carry
them gets them from its training data again (``data.train_file`` of the run, looked up as given, then
next to the checkpoint's folders; or ``--train-file``), checked against the force scale fitted when
training started, so that data changed since then is refused rather than giving a different model.

A shallow ensemble (``model.heads`` > 1) gets the calibration of its spreads that training gives the model
file it writes: fitted on the run's validation frames (``data.val_file``, or the same split of
``data.train_file``; found as above, or given with ``--val-file`` / ``--train-file``) by the same function,
and refused when those frames are not the ones the checkpoint was validated on. ``--no-calibration`` writes
the raw spreads instead, where the validation frames are gone.
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from e3pot.files import OVERWRITE_HELP

# Written into checkpoints by the training module: {"config": model.config, "dtype": "float32"}.
MODEL_KEY = "e3pot_model"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e3pot export-checkpoint", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", help="checkpoint of a training run (runs/<name>/version_N/checkpoints/last.ckpt)")
    p.add_argument("-o", "--output", required=True, help="the model file to write (model.pt)")
    p.add_argument("--train-file", default=None,
                   help="the run's training data (data.train_file), where the checkpoint does not carry the model's "
                        "species and neighbour statistics and the file has moved")
    p.add_argument("--val-file", default=None,
                   help="the run's validation data (data.val_file), where the file has moved: a shallow ensemble's "
                        "spreads are calibrated on it")
    p.add_argument("--no-calibration", action="store_true",
                   help="write a shallow ensemble (model.heads > 1) with its raw, uncalibrated spreads (where the "
                        "run's validation frames are gone)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    return p


def read_checkpoint(path: str) -> Dict[str, Any]:
    """A Lightning checkpoint of an e3pot run, read as plain data, or a ValueError that says what the file is."""
    import pickle

    import torch

    from e3pot.model.io import FORMAT, is_checkpoint

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder; give a checkpoint file (runs/<name>/version_N/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} does not load as plain data (it holds pickled Python objects, which could run any "
                         "code); e3pot reads checkpoints only as plain data, as every checkpoint of e3pot training "
                         "is: this checkpoint was not written by e3pot training") from None
    except Exception as exc:  # noqa: BLE001 - not a PyTorch file
        raise ValueError(f"{path} is not a training checkpoint (torch cannot read it: {type(exc).__name__})") from None
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        raise ValueError(f"{path} is already an e3pot model file; use it as it is")
    if not is_checkpoint(ckpt):
        raise ValueError(f"{path} is not a training checkpoint (no Lightning 'state_dict'); give last.ckpt or a "
                         "best-*.ckpt of a training run")
    if not isinstance(ckpt.get("hyper_parameters"), dict) or not any(k.startswith("ema.") for k in ckpt["state_dict"]):
        raise ValueError(f"{path} is a Lightning checkpoint, but not of e3pot training (no model hyperparameters "
                         "or averaged 'ema.' weights)")
    return ckpt


def _locate(name: str, checkpoint: str) -> Optional[str]:
    """``name`` as given, else relative to a folder above the checkpoint (training's working folder)."""
    if os.path.exists(name) or os.path.isabs(name):
        return name if os.path.exists(name) else None
    folder = os.path.dirname(os.path.abspath(checkpoint))
    while True:
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _statistics_from_data(ckpt: Dict[str, Any], path: str, train_file: Optional[str],
                          energy_scale: float) -> Tuple[List[int], float, str]:
    """Species and average neighbour count, fitted on the run's training data again."""
    from e3pot.train import stats
    from e3pot.train.datamodule import E3PotDataModule

    settings = _data_settings(ckpt, path)
    if "train_file" not in settings:
        raise ValueError(f"{path}: the checkpoint holds neither the model's species and neighbour statistics nor "
                         "the settings of its training data; it cannot be made into a model file")
    given = train_file or settings["train_file"]
    found = given if train_file else _locate(given, path)
    if found is None or not os.path.exists(found):
        raise ValueError(f"{path}: the checkpoint does not hold the model's species and neighbour statistics, and its "
                         f"training data {given} is not found (looked for it here and in the folders above the "
                         "checkpoint); give it with --train-file FILE")
    settings["train_file"] = found
    if settings.get("val_file"):
        settings["val_file"] = _locate(settings["val_file"], path) or settings["val_file"]
    data = E3PotDataModule(**settings)
    data.setup("fit")
    scale = stats.force_rms(data.train_set)
    if abs(scale - energy_scale) > 1e-5 * max(abs(energy_scale), 1e-12):
        raise ValueError(f"{path}: the training data {found} is not the data this checkpoint was trained on (its "
                         f"force RMS is {scale:.6g} eV/Å, the checkpoint's {energy_scale:.6g} eV/Å); give the run's "
                         "training data with --train-file FILE")
    return list(data.atomic_numbers), float(stats.avg_num_neighbors(data.train_set)), found


def _data_settings(ckpt: Dict[str, Any], path: str) -> Dict[str, Any]:
    """The arguments of the run's data module, to read its frames again: without replay or workers, and
    without a split size beside a validation file (it had no effect there, and the data module refuses it)."""
    from e3pot.train.datamodule import E3PotDataModule

    settings = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if settings.get("bootstrap") is True and "bootstrap_seed" in settings:  # the run's draw, whatever the seed now
        settings["bootstrap"] = int(settings["bootstrap_seed"])
    accepted = set(inspect.signature(E3PotDataModule.__init__).parameters) - {"self"}
    settings = {k: v for k, v in settings.items() if k in accepted}
    for name in ("replay_file", "replay_fraction", "replay_energy_unit", "replay_length_unit", "replay_forces_key"):
        settings.pop(name, None)
    if settings.get("val_file"):
        settings.pop("n_val", None)
        settings.pop("val_fraction", None)
    settings["num_workers"] = 0
    return settings


def validation_frames(ckpt: Dict[str, Any], path: str, model, train_file: Optional[str] = None,
                      val_file: Optional[str] = None) -> Tuple[Any, int, str]:
    """``(graphs, batch size, where)``: the validation frames of the run of checkpoint ``path`` as graphs for the
    species of ``model``, the batch size they were validated in, and the file they came from; a ValueError when
    they are not found, or not the frames the checkpoint was validated on."""
    from e3pot.train import stats
    from e3pot.train.datamodule import E3PotDataModule

    heads = f"the spreads of its {model.num_heads} heads"
    settings = dict(_data_settings(ckpt, path), bootstrap=False)  # a draw of the training frames only
    if "train_file" not in settings:
        raise ValueError(f"{path}: the checkpoint does not hold the settings of its training data, so the validation "
                         f"frames that calibrate {heads} are not known; pass --no-calibration to write them raw")
    if settings.get("val_file"):
        option, given = "--val-file", val_file or settings["val_file"]
        found = given if val_file else _locate(given, path)
        settings["val_file"] = found
    else:
        if val_file:
            raise ValueError(f"--val-file {val_file}: the run of {path} validated on a split of its training data "
                             f"{settings['train_file']}; give that with --train-file instead")
        option, given = "--train-file", train_file or settings["train_file"]
        found = given if train_file else _locate(given, path)
        settings["train_file"] = found
    if found is None or not os.path.exists(found):
        raise ValueError(f"{path}: {heads} are calibrated on the run's validation frames, and its data {given} is "
                         f"not found (looked for it here and in the folders above the checkpoint); give it with "
                         f"{option} FILE, or pass --no-calibration to write the raw spreads")
    data = E3PotDataModule(**settings)
    dataset = data.validation_set(list(model.atomic_numbers))
    recorded = (ckpt.get(MODEL_KEY) or {}).get("validation")
    if recorded is not None:
        now = stats.fingerprint(dataset)
        if not stats.same_fingerprint(recorded, now):
            raise ValueError(f"{path}: {found} does not give the validation frames this checkpoint was validated on "
                             f"({now['frames']} frames of {now['atoms']} atoms, the checkpoint's {recorded['frames']} "
                             f"of {recorded['atoms']}, or other labels); give the run's data with {option} FILE, or "
                             "pass --no-calibration")
    return dataset, data.val_batch_size, found


def model_from_checkpoint(path: str, train_file: Optional[str] = None, ckpt: Optional[Dict[str, Any]] = None):
    """The averaged (EMA) model of a training checkpoint, and the data file its statistics came from (or None).
    ``ckpt``: the checkpoint already read (:func:`read_checkpoint`)."""
    import torch

    from e3pot.model import kinds
    from e3pot.model.io import dtype_from_name

    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hp = ckpt["hyper_parameters"]
    state = {k[len("ema."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    if "energy_shift" not in state or "energy_scale" not in state:
        raise ValueError(f"{path}: the checkpoint's averaged weights lack the energy shift and scale")
    described = ckpt.get(MODEL_KEY)
    source = None
    if isinstance(described, dict) and "config" in described:
        config, dtype = dict(described["config"]), described.get("dtype", hp.get("dtype", "float32"))
    else:
        kind, dtype = hp.get("kind", "e3"), hp.get("dtype", "float32")
        energy_scale = float(state["energy_scale"])
        atomic_numbers, avg, source = _statistics_from_data(ckpt, path, train_file, energy_scale)
        shift = state["energy_shift"].tolist()
        if len(shift) != len(atomic_numbers):
            raise ValueError(f"{path}: the checkpoint's model knows {len(shift)} elements, but the training data "
                             f"{source} has {len(atomic_numbers)}; give the run's training data with --train-file FILE")
        config = {**kinds.select(kind, {**hp, "avg_num_neighbors": avg, "energy_shift": shift,
                                        "energy_scale": energy_scale}),
                  "kind": kind, "atomic_numbers": atomic_numbers}
    model = kinds.build_model(config).to(dtype_from_name(dtype))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{path}: the averaged weights do not fit the model the checkpoint describes ({first})") from None
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{path}: the checkpoint's averaged weights are not finite ({', '.join(bad[:5])})")
    model.metadata = {"checkpoint": os.path.abspath(path), "epoch": ckpt.get("epoch"),
                      "global_step": ckpt.get("global_step"),
                      "train_file": source or (ckpt.get("datamodule_hyper_parameters") or {}).get("train_file")}
    return model.eval(), source


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from e3pot.data.io import DataError
    from e3pot.files import check_output
    from e3pot.model.io import dtype_name, save_model

    fitted = None
    try:
        inputs = [args.checkpoint] + [f for f in (args.train_file, args.val_file) if f]
        check_output(args.output, "-o", inputs=inputs, overwrite=args.overwrite)
        ckpt = read_checkpoint(args.checkpoint)
        model, source = model_from_checkpoint(args.checkpoint, args.train_file, ckpt)
        if getattr(model, "num_heads", 1) > 1 and not args.no_calibration:
            from e3pot.train.calibration import calibrate

            frames, batch_size, where = validation_frames(ckpt, args.checkpoint, model, args.train_file, args.val_file)
            inputs.append(where)
            fitted = calibrate(model, frames, batch_size)
            model.metadata["uncertainty"] = fitted.metadata()
        elif args.no_calibration and getattr(model, "num_heads", 1) == 1:
            raise ValueError(f"--no-calibration: {args.checkpoint} is a model with one read-out head, which has no "
                             "spreads to calibrate; leave it out")
        elif args.no_calibration:
            model.metadata["uncertainty"] = {"energy_scale": 1.0, "forces_scale": 1.0,
                                             "fitted_on": "nothing: raw spreads (export-checkpoint --no-calibration)"}
        check_output(args.output, "-o", inputs=inputs + ([source] if source else []), overwrite=args.overwrite)
        save_model(model, args.output, metadata=model.metadata)
    except (DataError, OSError, ValueError) as exc:
        text = str(exc) if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {exc}"
        print(f"e3pot export-checkpoint: error: {text}", file=sys.stderr)
        return 2
    meta = model.metadata
    print(f"wrote {args.output} from the averaged weights of {args.checkpoint} (epoch {meta['epoch']}, step "
          f"{meta['global_step']}; {model.config['kind']}, {dtype_name(model.dtype)}, species {model.atomic_numbers}, "
          f"r_max {model.r_max} Å)" + (f"; species and neighbour count fitted again on {source}" if source else ""))
    if fitted is not None:
        print(f"uncertainty of the {model.num_heads} heads calibrated on {fitted.frames} validation frame"
              f"{'s' if fitted.frames != 1 else ''}: spreads x {fitted.calibration.energy:.3g} (energy), "
              f"x {fitted.calibration.forces:.3g} (forces)")
        for warning in fitted.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    elif getattr(model, "num_heads", 1) > 1:
        print(f"uncertainty of the {model.num_heads} heads left uncalibrated (--no-calibration): the spreads are raw")
    return 0
