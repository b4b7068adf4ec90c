"""``e3pot export-checkpoint CKPT -o model.pt``: a model file from a training checkpoint.

The model file holds the checkpoint's averaged (EMA) weights, the ones training validates and saves,
so it is what training would have written had it stopped at that checkpoint (``last.ckpt``, or a
``best-*.ckpt``). The checkpoint is read as plain data: no code in it runs.

The model's species and average neighbour count are not weights: a checkpoint that does not carry
them gets them from its training data again (``data.train_file`` of the run, looked up as given, then
next to the checkpoint's folders; or ``--train-file``), checked against the force scale fitted when
training started, so that data changed since then is refused rather than giving a different model.
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

    settings = dict(ckpt.get("datamodule_hyper_parameters") or {})
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
    settings["num_workers"] = 0
    accepted = set(inspect.signature(E3PotDataModule.__init__).parameters) - {"self"}
    data = E3PotDataModule(**{k: v for k, v in settings.items() if k in accepted})
    data.setup("fit")
    scale = stats.force_rms(data.train_set)
    if abs(scale - energy_scale) > 1e-5 * max(abs(energy_scale), 1e-12):
        raise ValueError(f"{path}: the training data {found} is not the data this checkpoint was trained on (its "
                         f"force RMS is {scale:.6g} eV/Å, the checkpoint's {energy_scale:.6g} eV/Å); give the run's "
                         "training data with --train-file FILE")
    return list(data.atomic_numbers), float(stats.avg_num_neighbors(data.train_set)), found


def model_from_checkpoint(path: str, train_file: Optional[str] = None):
    """The averaged (EMA) model of a training checkpoint, and the data file its statistics came from (or None)."""
    import torch

    from e3pot.model import kinds
    from e3pot.model.io import dtype_from_name

    ckpt = read_checkpoint(path)
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

    try:
        inputs = [args.checkpoint] + ([args.train_file] if args.train_file else [])
        check_output(args.output, "-o", inputs=inputs, overwrite=args.overwrite)
        model, source = model_from_checkpoint(args.checkpoint, args.train_file)
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
    return 0
