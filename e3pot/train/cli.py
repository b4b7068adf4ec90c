"""``python train.py --config configs/X.yaml``: LightningCLI with checks, resume and model export."""
from __future__ import annotations

import csv
import glob
import logging
import os
import re
import sys
import warnings
from typing import List, Optional

from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from e3pot.allocator import tune_allocator
from e3pot.data.io import DataError
from e3pot.files import check_output
from e3pot.model import kinds
from e3pot.model.io import save_model
from e3pot.train.datamodule import E3PotDataModule
from e3pot.train.module import E3PotModule, TrainingError


class ValidatedEarlyStopping(EarlyStopping):
    """Early stopping that waits for the first validation: a run shorter than one epoch
    (``--trainer.max_steps 3``) ends with no validation metric yet, and still writes its model."""

    @property
    def state_key(self) -> str:  # the key of Lightning's own class, so that checkpoints resume either way
        return super().state_key.replace(type(self).__qualname__, EarlyStopping.__qualname__, 1)

    def _run_early_stopping_check(self, trainer) -> None:
        if self.monitor not in trainer.callback_metrics and not any(
                key.startswith("val/") for key in trainer.callback_metrics):
            return
        super()._run_early_stopping_check(trainer)


def _cutoff(kind: str, r_max: Optional[float], init_from: Optional[str] = None) -> float:
    """The cutoff of the graphs: ``model.r_max``, else the starting model's (``model.init_from``), else the kind's
    default."""
    if r_max is None and init_from is not None and os.path.isfile(init_from):
        from e3pot.model.io import read_model_file

        try:
            return float(read_model_file(init_from)["r_max"])
        except ValueError:  # the module says what the file is
            pass
    return kinds.defaults(kind)["r_max"] if r_max is None else r_max


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "a boolean (true or false)", "str": "a string",
               "NoneType": "null", "list": "a list such as [a, b]", "dict": "a mapping such as {key: value}",
               "collections.abc.Iterable": "a list such as [a, b]", "pathlib.Path": "a path"}


def _expected(what: str, literals: list) -> Optional[str]:
    """Words for a type in jsonargparse's "Expected a ..." (a Literal's values are gathered in ``literals``)."""
    if what.startswith("typing.Literal[") and what.endswith("]"):
        literals.extend(v.strip().strip("'\"") for v in what[len("typing.Literal["):-1].split(","))
        return None
    if what.startswith("path but "):
        return "the path of a file"
    if what.startswith("dot import path string"):
        return "a class name (or a mapping with class_path and init_args)"
    name = re.fullmatch(r"<class '([^']+)'>", what)
    if name:
        return _TYPE_WORDS.get(name.group(1), f"a {name.group(1).rsplit('.', 1)[-1]}")
    return what


def parse_error_line(message: str) -> str:
    """jsonargparse's error message in a line: the option, what it expects and the value given, e.g.
    ``trainer.max_epochs: expected an integer or null, got 'ten'`` (it lists every subtype it tried, on ten
    lines, after a usage of two hundred)."""
    raw = [line for line in message.strip().splitlines() if line.strip()]
    lines = [line.strip() for line in raw]
    head = re.match(r'Parser key "([^"]+)":\s*(.*)$', lines[0]) if lines else None
    if head is None:
        return " ".join(lines)
    key, body = head.group(1), ([head.group(2)] if head.group(2) else []) + lines[1:]
    for k in range(1, len(raw)):  # an argument of a class given by class_path: that argument's own error
        if lines[k].startswith('Parser key "'):
            indent = len(raw[k]) - len(raw[k].lstrip())
            end = next((j for j in range(k + 1, len(raw)) if len(raw[j]) - len(raw[j].lstrip()) <= indent), len(raw))
            inner = parse_error_line("\n".join(raw[k:end]))
            return f"{key}.init_args.{inner}" if not inner.startswith(f"{key}.") else inner
    given, expected, literals = None, [], []
    for line in body:
        text = line.lstrip("- ").strip()
        if text.startswith("Given value:"):
            given = text[len("Given value:"):].strip()
        elif text.startswith("Expected a "):
            what, _, got = text[len("Expected a "):].partition(". Got value: ")
            given = got or given
            words = _expected(what.split(": ")[0] if what.startswith("dot import") else what, literals)
            if words and words not in expected:
                expected.append(words)
    if literals:
        expected.insert(0, "one of " + ", ".join(dict.fromkeys(literals)))
    if not expected:
        return f"{key}: " + " ".join(line.lstrip("- ") for line in body)
    if "null" in expected:  # last: "an integer or null"
        expected = [w for w in expected if w != "null"] + ["null"]
    words = ", ".join(expected[:-1]) + (" or " if len(expected) > 1 else "") + expected[-1]
    return f"{key}: expected {words}" + (f", got {given!r}" if given is not None else "")


class E3PotParser(LightningArgumentParser):
    """The parser of ``train.py``: an error is its message in a line or two and where to find the options,
    not the usage of every option (about 100 lines) before the message. ``full_errors``: jsonargparse's own."""

    def __init__(self, *args, full_errors: bool = False, **kwargs):
        self.full_errors = full_errors
        super().__init__(*args, **kwargs)

    def _suggestions(self, message: str) -> str:
        """The options nearest to those an "unrecognized arguments" or "does not accept option" error names."""
        import difflib

        in_config = re.match(r"Group '([\w.]+)' does not accept option '([^']+)'", message)
        if in_config:  # a key of a config file
            words, prefix = [f"--{in_config.group(1)}.{in_config.group(2)}"], ""
        elif message.startswith("unrecognized arguments:"):
            words, prefix = [w.split("=", 1)[0] for w in message.split(":", 1)[1].split()], "--"
        else:
            return ""
        known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        hints = [m[2:] if not prefix else m for w in words if w.startswith("--")
                 for m in difflib.get_close_matches(w, known, n=1, cutoff=0.8)]
        return f" (did you mean {' and '.join(hints)}?)" if hints else ""

    def error(self, message: str, ex: Optional[Exception] = None):
        if self.full_errors or not self.exit_on_error:
            return super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {parse_error_line(message)}{self._suggestions(message)}\n"
                         f"(see {prog} --help for the options and what each takes)\n")
        self.exit(2)


class E3PotCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(("model.kind", "model.r_max", "model.init_from"), "data.r_max", compute_fn=_cutoff)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/loss", "checkpoint.save_last": True,
                             "checkpoint.filename": "best-{epoch:04d}", "checkpoint.mode": "min"})
        parser.add_lightning_class_args(ValidatedEarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.patience": 100,
                             "early_stopping.mode": "min"})
        parser.add_argument("--output", type=Optional[str], default=None,
                            help="where to write the trained model (default: <run dir>/model.pt)")
        parser.add_argument("--overwrite", action="store_true",
                            help="replace the --output model file if it exists (without it an existing file is "
                                 "refused before training starts; the output is never one of the inputs)")
        parser.add_argument("--resume", type=Optional[str], default=None,
                            help="checkpoint to resume from, or 'last' for the newest last.ckpt of this run name")
        parser.add_argument("--debug", action="store_true",
                            help="show the full traceback of an error (also: E3POT_DEBUG=1)")

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= 2**32 - 1:
            raise ValueError(f"--seed_everything must be between 0 and {2**32 - 1} (or true for a random seed, "
                             f"false for none), got {seed}")
        super()._set_seed()


def _find_last(root: str) -> str:
    found = sorted(glob.glob(os.path.join(root, "**", "last.ckpt"), recursive=True), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"--resume last: no last.ckpt under {root}")
    return found[-1]


def _format_metrics(metrics: dict) -> str:
    rows = [("energy MAE", "val/energy_mae_meV_atom", "meV/atom"), ("energy RMSE", "val/energy_rmse_meV_atom", "meV/atom"),
            ("energy mean error", "val/energy_mean_meV_atom", "meV/atom"),
            ("energy MAE", "val/energy_mae_meV", "meV"), ("energy RMSE", "val/energy_rmse_meV", "meV"),
            ("energy mean error", "val/energy_mean_meV", "meV"),
            ("forces MAE", "val/forces_mae_meV_A", "meV/Å"), ("forces RMSE", "val/forces_rmse_meV_A", "meV/Å"),
            ("replayed forces MAE", "val_replay/forces_mae_meV_A", "meV/Å"),
            ("replayed forces RMSE", "val_replay/forces_rmse_meV_A", "meV/Å")]
    return "\n".join(f"  {name:<20} {float(metrics[key]):+10.3f} {unit}" if "mean" in key
                     else f"  {name:<20} {float(metrics[key]):10.3f} {unit}" for name, key, unit in rows if key in metrics)


# Settings that define the network or its training data: a run resumed with other values would load
# weights that do not fit, or go on with statistics fitted on other data. The model settings are those
# of every kind (a checkpoint's hyperparameters hold those of its kind, defaults filled in).
ARCHITECTURE = ("kind", *kinds.SETTINGS, "dtype", "e0s")
DATA = ("train_file", "val_file", "val_fraction", "n_val", "n_train", "split_seed", "elements", "energy_key",
        "forces_key", "stress_key", "energy_unit", "length_unit", "stress_unit", "bootstrap", "bootstrap_seed")


def read_checkpoint(path: str) -> dict:
    """A training checkpoint written by ``train.py``, or a ValueError that says what the file is instead."""
    import torch

    try:  # as plain data: checkpoints of e3pot training are, and nothing in the file runs
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"--resume {path}: not a training checkpoint (torch cannot read it as plain data: "
                         f"{type(exc).__name__})") from None
    where = ("--resume takes the checkpoint of a run: runs/<name>/version_N/checkpoints/last.ckpt, "
             "or 'last' for the newest of this run name")
    if isinstance(ckpt, dict) and ckpt.get("format") == "e3pot-model":
        raise ValueError(f"--resume {path} is an e3pot model file, not a training checkpoint; {where}")
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"--resume {path} is not a training checkpoint written by train.py; {where}")
    return ckpt


def check_resume(path: str, module, data) -> None:
    """Refuse to resume when the model or data settings differ from the checkpoint's; warn for others."""
    ckpt = read_checkpoint(path)
    saved = {f"model.{k}": v for k, v in ckpt.get("hyper_parameters", {}).items()}
    saved.update({f"data.{k}": v for k, v in ckpt.get("datamodule_hyper_parameters", {}).items()})
    now = {f"model.{k}": v for k, v in module.hparams.items()}
    now.update({f"data.{k}": v for k, v in data.hparams.items()})
    fatal = {f"model.{k}" for k in ARCHITECTURE} | {f"data.{k}" for k in DATA}
    differ = [k for k in sorted(now) if k in saved and saved[k] != now[k]]
    lines = [f"  {k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in differ]
    hard = [line for k, line in zip(differ, lines) if k in fatal]
    if hard:
        raise ValueError(f"--resume {path}: the checkpoint was trained with other model or data settings:\n"
                         + "\n".join(hard) + "\nresume with the checkpoint's settings, or start a new run without --resume")
    if differ:
        warnings.warn(f"--resume {path}: settings changed since the checkpoint (the run goes on with the new "
                      "values; the optimiser state comes from the checkpoint):\n" + "\n".join(lines))


class RunLogger(CSVLogger):
    """The CSV logger of a run: writes each epoch's metrics to ``metrics.csv`` as they are logged (Lightning's
    keeps 100 steps in memory, which a killed run loses), and, for a resumed run, goes on in the metrics file
    of the folder it continues (Lightning's own deletes that file), without the rows of the epoch that was
    cut off after the checkpoint (they are logged again)."""

    def __init__(self, *args, through_epoch: Optional[int] = None, **kwargs):
        super().__init__(*args, flush_logs_every_n_steps=1, **kwargs)  # only epoch-level metrics reach it
        self.through_epoch = through_epoch

    @property
    @rank_zero_experiment  # one process reads and writes the file; the others get a no-op
    def experiment(self):
        if self._experiment is not None or self.through_epoch is None:
            return super().experiment
        path = os.path.join(self.log_dir, "metrics.csv")
        saved = []
        if os.path.isfile(path):
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                keys = list(reader.fieldnames or [])
                saved = [row for row in reader if not row.get("epoch") or float(row["epoch"]) <= self.through_epoch]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            experiment = super().experiment
        if saved:
            with open(path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(saved)
            experiment.metrics_keys = keys
        return experiment


def use_run_logger(trainer, checkpoint: Optional[str]) -> None:
    """Swap Lightning's CSV logger for :class:`RunLogger` with the same settings. A resumed run logs into the
    version folder its checkpoint came from, not a new one: the metrics go on in the same file and the
    checkpoint callback finds its own folder again, so it keeps its best score and best checkpoints (Lightning
    forgets them when the folder changes)."""
    logger = trainer.logger
    if type(logger) is not CSVLogger:
        return
    version, through = getattr(logger, "_version", None), None
    if checkpoint is not None and os.path.basename(os.path.dirname(os.path.abspath(checkpoint))) == "checkpoints":
        folder = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))  # <save_dir>/<name>/version_N
        if os.path.dirname(folder) == os.path.abspath(os.path.join(logger.save_dir, logger.name)):
            import torch

            version = os.path.basename(folder)
            through = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", -1))
    trainer.loggers = [RunLogger(save_dir=logger.save_dir, name=logger.name, version=version,
                                 prefix=getattr(logger, "_prefix", ""), through_epoch=through)]


def check_finite_weights(model) -> None:
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise TrainingError(f"the trained weights are not finite ({', '.join(bad[:5])}); no model file written")


def calibrate(model, data):
    """The calibration of a shallow ensemble's spreads on the validation frames of ``data``
    (:func:`e3pot.train.calibration.calibrate`, which ``e3pot export-checkpoint`` calls too)."""
    from e3pot.train.calibration import calibrate as fit

    return fit(model, data.val_set, data.val_batch_size)


class _NoAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Silence Lightning's messages about what e3pot handles itself, so that real warnings are seen:
    the batch-transfer hooks are overridden on purpose; epoch metrics are reduced over the processes
    by the module (:meth:`E3PotModule._log_metrics`), not by ``sync_dist``; and no advertisement."""
    warnings.filterwarnings("ignore", message=".*overridden `on_(before|after)_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # epoch-level metrics only
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "lightning.pytorch.utilities.rank_zero", "pytorch_lightning", "lightning_fabric"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoAdvertisements) for f in logger.filters):
            logger.addFilter(_NoAdvertisements())


def _worker_message(exc: BaseException) -> str:
    """The message of an error that PyTorch re-raised from a DataLoader worker, without the worker's
    traceback that it puts in front (the traceback's last line holds the original message)."""
    text = str(exc)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__qualname__}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
    return text


def run(args: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    """Entry point of ``train.py`` and ``e3pot train``: an error prints its message, not a traceback
    (``--debug`` or ``E3POT_DEBUG=1`` shows the traceback). Returns the exit code."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or os.environ.get("E3POT_DEBUG", "0") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        main(args, prog, full_errors=debug)
    except Exception as exc:  # noqa: BLE001 - every failure gets a one-line message
        if debug:
            raise
        known = isinstance(exc, (DataError, ValueError, FileNotFoundError, TrainingError))  # OutputError is a ValueError
        message = _worker_message(exc) if known else f"{type(exc).__name__}: {exc}"
        print(f"{prog or 'train.py'}: error: {message}\n(run again with --debug for the full traceback)",
              file=sys.stderr)
        return 2
    return 0


def main(args: Optional[List[str]] = None, prog: Optional[str] = None, full_errors: bool = False) -> str:
    """Train, then write the EMA weights of the best checkpoint as a standalone model file. ``full_errors``:
    a command-line error prints jsonargparse's whole message and the usage."""
    tune_allocator()
    quiet_lightning()
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    cli = E3PotCLI(
        E3PotModule, E3PotDataModule, run=False, args=args, seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "inference_mode": False,  # validation needs autograd for forces
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": "runs", "name": "e3pot"}},
            "gradient_clip_val": 10.0,
            "log_every_n_steps": 10,
        },
        parser_class=E3PotParser,
        parser_kwargs={"description": "Train an e3pot potential.", "full_errors": full_errors,
                       **({"prog": prog} if prog else {})},
    )
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    resume = cli.config.get("resume")
    if resume == "last":
        logger = trainer.logger
        resume = _find_last(os.path.join(logger.save_dir, logger.name) if logger else trainer.default_root_dir)
    if resume is not None and not os.path.exists(resume):
        raise FileNotFoundError(f"--resume: no such checkpoint: {resume}")
    if resume is not None:
        check_resume(resume, module, data)
    use_run_logger(trainer, resume)
    # the model file: --output, or model.pt in the run's folder (a resumed run's old folder, or the
    # working folder without a logger); checked like any output before training starts
    output = cli.config.get("output") or os.path.join(trainer.log_dir or ".", "model.pt")
    e0s = module.hparams.e0s if isinstance(module.hparams.e0s, str) and module.hparams.e0s != "fit" else None
    configs = [os.fspath(str(c)) for c in (cli.config.get("config") or [])]
    check_output(output, "--output", inputs=[data.train_file, data.val_file, e0s, resume, *configs,
                                             module.hparams.get("init_from"), data.replay_file],
                 overwrite=bool(cli.config.get("overwrite")),
                 missing_folder="make" if cli.config.get("output") else "leave")  # a run's folder: its logger's
    trainer.fit(module, datamodule=data, ckpt_path=resume)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics = {k: v for loader in trainer.validate(module, datamodule=data, ckpt_path=best or None, verbose=False)
               for k, v in loader.items()}  # a second loader: the replayed frames (data.replay_file)
    check_finite_weights(module.ema)
    if not trainer.is_global_zero:  # under DDP every rank ends here with the same weights; one writes
        return output
    metadata = {"validation": {k: float(v) for k, v in metrics.items()}, "checkpoint": best,
                "train_file": data.train_file}
    fitted = None
    if module.ema.num_heads > 1:
        fitted = calibrate(module.ema, data)
        metadata["uncertainty"] = fitted.metadata()
        for warning in fitted.warnings:
            warnings.warn(warning)
    save_model(module.ema, output, metadata=metadata)
    print(f"\nSaved model: {os.path.abspath(output)}")
    print("Validation metrics (EMA weights" + (f", best checkpoint {os.path.basename(best)}" if best else "") + "):")
    print(_format_metrics(metrics))
    if fitted is not None:
        print(f"Uncertainty of the {module.ema.num_heads} heads, calibrated on {fitted.frames} validation frame"
              f"{'s' if fitted.frames != 1 else ''}: spreads x {fitted.calibration.energy:.3g} (energy), "
              f"x {fitted.calibration.forces:.3g} (forces)")
        for warning in fitted.warnings:
            print(f"  warning: {warning}")
    if module.skipped:
        print(f"\nSkipped {len(module.skipped)} frames in batches with a non-finite loss: {'; '.join(module.skipped[:20])}"
              + (" ..." if len(module.skipped) > 20 else ""))
    return output
