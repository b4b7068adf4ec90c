"""``python train.py --config configs/X.yaml``: LightningCLI with checks, resume and model export."""
from __future__ import annotations

import glob
import os
import warnings
from typing import List, Optional

from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from e3pot.allocator import tune_allocator
from e3pot.model.io import save_model
from e3pot.train.datamodule import E3PotDataModule
from e3pot.train.module import E3PotModule


class E3PotCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.r_max", "data.r_max")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/loss", "checkpoint.save_last": True,
                             "checkpoint.filename": "best-{epoch:04d}", "checkpoint.mode": "min"})
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/loss", "early_stopping.patience": 100,
                             "early_stopping.mode": "min"})
        parser.add_argument("--output", type=Optional[str], default=None,
                            help="where to write the trained model (default: <run dir>/model.pt)")
        parser.add_argument("--resume", type=Optional[str], default=None,
                            help="checkpoint to resume from, or 'last' for the newest last.ckpt of this run name")


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
            ("forces MAE", "val/forces_mae_meV_A", "meV/Å"), ("forces RMSE", "val/forces_rmse_meV_A", "meV/Å")]
    return "\n".join(f"  {name:<17} {float(metrics[key]):+10.3f} {unit}" if "mean" in key
                     else f"  {name:<17} {float(metrics[key]):10.3f} {unit}" for name, key, unit in rows if key in metrics)


def main(args: Optional[List[str]] = None, prog: Optional[str] = None) -> str:
    """Train, then write the EMA weights of the best checkpoint as a standalone model file."""
    tune_allocator()
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    cli = E3PotCLI(
        E3PotModule, E3PotDataModule, run=False, args=args, seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "inference_mode": False,  # validation needs autograd for forces
            "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                       "init_args": {"save_dir": "runs", "name": "e3pot"}},
            "callbacks": [LearningRateMonitor(logging_interval="epoch")],
            "gradient_clip_val": 10.0,
            "log_every_n_steps": 10,
        },
        parser_kwargs={"description": "Train an e3pot potential.", **({"prog": prog} if prog else {})},
    )
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    resume = cli.config.get("resume")
    if resume == "last":
        logger = trainer.logger
        resume = _find_last(os.path.join(logger.save_dir, logger.name) if logger else trainer.default_root_dir)
    if resume is not None and not os.path.exists(resume):
        raise FileNotFoundError(f"--resume: no such checkpoint: {resume}")
    trainer.fit(module, datamodule=data, ckpt_path=resume)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics = trainer.validate(module, datamodule=data, ckpt_path=best or None, verbose=False)[0]
    output = cli.config.get("output") or os.path.join(trainer.log_dir or ".", "model.pt")
    save_model(module.ema, output, metadata={
        "validation": {k: float(v) for k, v in metrics.items()},
        "checkpoint": best,
        "train_file": data.train_file,
    })
    print(f"\nSaved model: {os.path.abspath(output)}")
    print("Validation metrics (EMA weights" + (f", best checkpoint {os.path.basename(best)}" if best else "") + "):")
    print(_format_metrics(metrics))
    return output
