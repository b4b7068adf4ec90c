"""The LightningModule: builds the potential from fitted data statistics, trains with EMA."""
from __future__ import annotations

import copy
import warnings
from typing import Dict, List, Literal, Optional, Union

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from e3pot.data.dataset import NumpyBatch
from e3pot.data.io import DataError
from e3pot.model.runtime import evaluate
from e3pot.model.io import dtype_from_name
from e3pot.model import kinds
from e3pot.model.base import EnergyModel
from e3pot.train import stats
from e3pot.model.ensemble import evaluate_heads
from e3pot.train.loss import ErrorMetrics, gaussian_nll, weighted_loss


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, non-finite weights); the message says why."""


def check_hyperparameters(hp: dict) -> None:
    """Clear errors for settings that would otherwise fail deep inside torch or vesin. ``hp`` holds the
    training arguments and the settings of one model kind (:func:`e3pot.model.kinds.resolve`); a rule
    applies to the settings the kind takes."""
    rules = [("r_max", lambda v: v > 0, "be positive (Å)"), ("l_max", lambda v: v >= 0, "be at least 0"),
             ("lr", lambda v: v > 0, "be positive"), ("ema_decay", lambda v: 0 <= v < 1, "be in [0, 1)"),
             ("refit_frames", lambda v: v >= 1, "be at least 1"),
             # the scheduler's and optimiser's own errors name neither the option nor the value
             ("lr_factor", lambda v: 0 < v < 1, "be in (0, 1) (the learning rate is multiplied by it)"),
             ("lr_patience", lambda v: v >= 0, "be 0 or positive"), ("lr_min", lambda v: v >= 0, "be 0 or positive"),
             ("weight_decay", lambda v: v >= 0, "be 0 or positive")]
    rules += [(name, lambda v: v >= 1, "be at least 1") for name in
              ("num_features", "num_layers", "num_basis", "radial_hidden", "heads")]
    rules += [(name, lambda v: v >= 0, "be 0 or positive") for name in
              ("radial_layers", "energy_weight", "forces_weight", "stress_weight")]
    for name, ok, what in rules:
        if name in hp and not ok(hp[name]):
            raise ValueError(f"model.{name} must {what}, got {hp[name]}")
    if hp.get("heads", 1) > 1 and hp.get("compile"):
        raise ValueError("model.compile does not train shallow ensembles (model.heads > 1) yet; leave one of them out")
    if hp.get("heads", 1) > 1 and not hp.get("nll_weight", 0) >= 0:
        raise ValueError(f"model.nll_weight must be 0 or positive, got {hp['nll_weight']}")
    if hp["energy_weight"] == 0 and hp["forces_weight"] == 0 and hp["stress_weight"] == 0:
        raise ValueError("model.energy_weight, model.forces_weight and model.stress_weight are all 0: "
                         "the loss would be empty; give at least one a positive weight")


# Options that matter only under a condition: None (not given) means this default, and a value given where it
# has no effect is refused (check_conditional), so that it is not silently ignored.
CONDITIONAL_DEFAULTS = {"nll_weight": 1.0, "refit_shift": True, "refit_frames": 250}


def check_conditional(hp: dict) -> None:
    """Refuse an option given (not None) where it does nothing, or two that contradict each other. ``hp``: the
    training arguments as given, with the settings of the model built (``heads`` resolved; ``init_from``'s)."""
    if hp.get("nll_weight") is not None and hp.get("heads", 1) == 1:
        raise ValueError(f"model.nll_weight {hp['nll_weight']} has no effect with one read-out head: it weighs the "
                         "likelihood of a shallow ensemble's spread; set model.heads above 1, or leave it out")
    if hp.get("keep_shift") and hp.get("e0s") != "fit":
        raise ValueError("model.keep_shift keeps the starting model's energy shifts and model.e0s sets them; "
                         "give one of them")
    if hp.get("keep_shift") and hp.get("refit_shift"):
        raise ValueError("model.refit_shift true contradicts model.keep_shift, which keeps the starting model's "
                         "energy shifts during training; give one of them")
    if hp.get("refit_frames") is not None and hp.get("refit_shift") is False and hp.get("init_from") is None:
        raise ValueError(f"model.refit_frames {hp['refit_frames']} has no effect with model.refit_shift false "
                         "(it sizes the sample of the shift re-fit); leave one of them out")


class E3PotModule(pl.LightningModule):
    """Training of a potential of any kind in :mod:`e3pot.model.kinds`.

    The model settings (``r_max`` to ``update_positions``) are those of the kind's class: each kind
    takes the ones it uses (``e3`` all but ``update_positions``, ``cartesian`` all but ``l_max``,
    ``parity`` and ``update_positions``, ``egnn`` all but ``l_max``, ``parity`` and ``radial_layers``)
    and refuses the others. A setting left at None (not given) takes the kind's default, which is
    written once, in the kind's class; the hyperparameters saved with the module (and its checkpoints)
    are the settings of the model really built: those of its kind, defaults filled in. The species,
    energy shift, energy scale and average neighbour count are fitted from the training data in
    :meth:`setup`.

    Args:
        kind: the model kind: e3 (equivariant; invariant at l_max 0), cartesian (nothing built in)
            or egnn.
        r_max: cutoff radius of the graph in Å. <r_max>
        l_max: highest order of the equivariant features (0: invariant, distances only). <l_max>
        num_features: number of features (channels) per atom. <num_features>
        num_layers: number of message-passing layers. <num_layers>
        num_basis: number of radial (Bessel) basis functions. <num_basis>
        cutoff_p: exponent of the polynomial cutoff envelope. <cutoff_p>
        radial_hidden: width of the hidden layers of the radial MLPs (egnn: of its MLPs). <radial_hidden>
        radial_layers: number of hidden layers of the radial MLPs. <radial_layers>
        parity: features of both parities for every l; false: of parity (-1)^l only. <parity>
        update_positions: let the layers update the coordinates. <update_positions>
        heads: read-out heads on shared features; more than 1 makes a shallow ensemble, whose spread is its
            uncertainty (:mod:`e3pot.model.ensemble`), trained with a Gaussian negative log-likelihood of the
            energies per atom (``nll_weight``) besides the usual terms on the heads' mean. <heads>
        nll_weight: weight of that negative log-likelihood (default 1; heads > 1 only, refused with one head).
        e0s: per-species energy shift: "fit" (least squares on the training energies), a
            {symbol: eV} table, or the path of a file of isolated-atom structures.
        dtype: float32 or float64 for weights and inputs.
        energy_weight, forces_weight, stress_weight: loss weights of per-atom energy, force
            components and stress components (MSE each).
        lr, weight_decay: AdamW settings.
        lr_factor, lr_patience, lr_min: ReduceLROnPlateau on the validation loss.
        ema_decay: decay of the exponential moving average of weights; 0 disables it. The
            averaged weights are the ones validated and saved.
        refit_shift: before every validation, re-fit the per-species energy shifts of the averaged
            model by least squares on its training-set energy errors (at most ``refit_frames``
            frames, a fixed random sample; default 250), so that no constant offset builds up in the
            energies. Default true; not with ``keep_shift``, which keeps the shifts.
        skip_nonfinite_batches: skip (and report) a training batch whose loss is NaN or infinite
            instead of stopping the run. Off by default: a non-finite loss stops training with the
            batch's frames named, and the last checkpoint stays as it was.
        init_from: a model file to start from (fine-tuning, :mod:`e3pot.train.finetune`): its architecture and
            weights; optimiser, schedule, EMA and early stopping start fresh. New elements in the data extend it.
        keep_shift: keep the starting model's per-species energy shifts (default: re-fit them to the new data
            by least squares of its energy errors; ``e0s`` given as a table or file sets them instead, and
            cannot be given with ``keep_shift``).
        freeze: parameter groups that do not train (with ``init_from``): ``embedding``, ``radial``, ``layer0``
            ... ``layerN``, ``readout``.
        compile: compute the training loss and its gradients as one compiled graph
            (:class:`~e3pot.model.compiled.CompiledTrainingLoss`): the same numbers, several times
            faster per step for small molecules, after a compilation of a few minutes at the first step
            (and again for the first batch of a single structure). Validation stays eager.
    """

    def __init__(self, kind: Literal["e3", "cartesian", "egnn"] = "e3", r_max: Optional[float] = None,
                 l_max: Optional[int] = None, num_features: Optional[int] = None, num_layers: Optional[int] = None,
                 num_basis: Optional[int] = None, cutoff_p: Optional[int] = None, radial_hidden: Optional[int] = None,
                 radial_layers: Optional[int] = None, parity: Optional[bool] = None,
                 update_positions: Optional[bool] = None, heads: Optional[int] = None, nll_weight: Optional[float] = None,
                 e0s: Union[Literal["fit"], Dict[str, float], str] = "fit",
                 dtype: Literal["float32", "float64"] = "float32", energy_weight: float = 1.0,
                 forces_weight: float = 10.0, stress_weight: float = 0.0, lr: float = 0.005,
                 weight_decay: float = 0.0, lr_factor: float = 0.8, lr_patience: int = 10, lr_min: float = 1e-6,
                 ema_decay: float = 0.99, refit_shift: Optional[bool] = None, refit_frames: Optional[int] = None,
                 skip_nonfinite_batches: bool = False, compile: bool = False, init_from: Optional[str] = None,
                 keep_shift: bool = False, freeze: Optional[List[str]] = None):
        given = {name: value for name, value in locals().items() if name in kinds.SETTINGS}
        super().__init__()
        self._start = None
        if init_from is not None:  # the architecture comes from the file
            from e3pot.train import finetune

            self._start = finetune.read_start(init_from)
            kind, start = finetune.start_settings(self._start, init_from, kind, given, kinds.SETTINGS)
            given = {**given, **start}
        elif keep_shift or freeze:
            raise ValueError(f"model.{'keep_shift' if keep_shift else 'freeze'} needs a model to start from "
                             "(model.init_from)")
        settings = kinds.resolve(kind, given)  # refuses a setting that the kind does not take
        self.save_hyperparameters()  # the arguments as given (under LightningCLI, with its own entries)
        hp = {name: value for name, value in self.hparams.items()
              if name not in kinds.SETTINGS or name in settings}
        hp.update(settings)  # what is built: the kind's settings, its defaults for those not given
        hp["kind"] = kind
        check_conditional(hp)
        for name, default in CONDITIONAL_DEFAULTS.items():  # the hyperparameters hold the value in effect
            if hp[name] is None:
                hp[name] = default
        check_hyperparameters(hp)
        self.hparams.clear()
        self.save_hyperparameters(hp)
        self.potential: Optional[EnergyModel] = None
        self.ema: Optional[EnergyModel] = None
        self.torch_dtype = dtype_from_name(dtype)
        self.metrics = {"train": ErrorMetrics(), "val": ErrorMetrics(), "val_replay": ErrorMetrics()}
        self.use_stress = False
        self.skipped: List[str] = []  # frames of the batches skipped with skip_nonfinite_batches
        self._compiled_loss = None
        self._frozen_step = False  # under DDP: this step's batch was skipped on every process
        self._frozen_lrs: List[float] = []
        self.frozen: List[str] = []  # parameters that model.freeze keeps from training

    @property
    def start_species(self) -> Optional[List[int]]:
        """The species of the starting model (``init_from``), which keep their order; None without one."""
        return None if self._start is None else list(self._start["atomic_numbers"])

    # -- building ---------------------------------------------------------------------------
    def _check_labels(self, dataset) -> None:
        hp = self.hparams
        cols = dataset.frame_columns()
        for field, weight in (("energy", hp.energy_weight), ("forces", hp.forces_weight)):
            missing = np.flatnonzero(~cols[f"has_{field}"])
            if weight > 0 and len(missing):
                more = f"; {len(missing) - 1} more frames lack it too" if len(missing) > 1 else ""
                raise DataError(f"{dataset.sources[int(missing[0])]}: no {field} label, but the loss needs it "
                                f"({field}_weight={weight}{more}); set data.{field}_key or the weight to 0")

    def setup(self, stage: str) -> None:
        if self.potential is not None:
            return
        dm = self.trainer.datamodule
        if self._start is not None:  # the starting model's species keep their indices; new ones follow
            dm.species_order = self.start_species
        dm.setup(stage)
        self._check_labels(dm.train_set)
        self._check_labels(dm.val_set)
        z = dm.atomic_numbers
        hp = self.hparams
        if hp.e0s == "fit":
            shift = stats.fit_energy_shift(dm.train_set, len(z))
        elif isinstance(hp.e0s, dict):
            shift = stats.shift_from_table(hp.e0s, z)
        else:
            shift = stats.shift_from_table(stats.read_e0s_file(hp.e0s), z)
        self.use_stress = hp.stress_weight > 0 and bool(dm.train_set.frame_columns()["has_stress"].any())
        if hp.stress_weight > 0 and not self.use_stress:
            raise DataError(f"{dm.train_file}: model.stress_weight is {hp.stress_weight}, but no training frame has a "
                            "stress label (see data.stress_key); the stress term would be left out: set "
                            "model.stress_weight 0")
        if self._start is not None:
            from pytorch_lightning.utilities import rank_zero_info

            from e3pot.train.finetune import fine_tuned_model

            model, summary = fine_tuned_model(hp.init_from, hp.kind, z, dm.train_set, hp.e0s, hp.keep_shift,
                                              hp.refit_frames)
            rank_zero_info(summary)
            # the new data's units are checked as for a new model (on their own least-squares shifts: the
            # starting model's shifts belong to its own data)
            warning = stats.implausible_units(dm.train_set, stats.fit_energy_shift(dm.train_set, len(z)),
                                              stats.force_rms(dm.train_set))
            if warning:
                rank_zero_warn(f"{dm.train_file}: {warning}")
            self.potential = model.to(self.torch_dtype)
        else:
            fitted = dict(avg_num_neighbors=stats.avg_num_neighbors(dm.train_set), energy_shift=shift.tolist(),
                          energy_scale=stats.force_rms(dm.train_set))
            warning = stats.implausible_units(dm.train_set, shift, fitted["energy_scale"])
            if warning:
                rank_zero_warn(f"{dm.train_file}: {warning}")
            self.potential = kinds.model_class(hp.kind)(z, **kinds.select(hp.kind, {**dict(hp), **fitted})).to(self.torch_dtype)
        if hp.freeze:
            from e3pot.train.finetune import freeze

            self.frozen = freeze(self.potential, hp.freeze)
        self.ema = copy.deepcopy(self.potential).requires_grad_(False)

    # -- steps ------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return batch.tensors() if isinstance(batch, NumpyBatch) else batch  # from DataLoader workers

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        graph, labels, index = batch
        # energy labels stay float64, like the model's energy sum: float32 resolves only ~2 meV at -17,600 eV
        return graph.to(dtype=self.torch_dtype), labels._replace(forces=labels.forces.to(self.torch_dtype),
                                                                  stress=labels.stress.to(self.torch_dtype)), index

    def _loss(self, pred, labels):
        hp = self.hparams
        return weighted_loss(pred, labels, hp.energy_weight, hp.forces_weight, hp.stress_weight if self.use_stress else 0.0)

    def _step(self, model, batch, stage: str, training: bool):
        graph, labels, index = batch
        if training and self.hparams.compile:
            if self._compiled_loss is None:
                from e3pot.model.compiled import CompiledTrainingLoss

                self._compiled_loss = CompiledTrainingLoss(model, self._loss, self.use_stress)
            parts, pred = self._compiled_loss(graph, labels)
        elif model.num_heads > 1:  # a shallow ensemble: the heads' energies for their likelihood
            pred, head_energies = evaluate_heads(model, graph, compute_stress=self.use_stress, training=training)
            parts = self._loss(pred, labels)
            parts["nll"] = gaussian_nll(head_energies, labels)
            parts["loss"] = parts["loss"] + self.hparams.nll_weight * parts["nll"]
        else:
            # training: the direct path (its double backward); validation: whichever path fits in memory
            pred = evaluate(model, graph, compute_stress=self.use_stress, training=training)
            parts = self._loss(pred, labels)
        if training:
            here = not bool(torch.isfinite(parts["loss"].detach()))
            # under DDP every process takes the same decision, so that all skip or all stop and none is
            # left waiting in the gradient all-reduce (one small collective per step)
            anywhere = self.trainer.strategy.reduce_boolean_decision(here, all=False) if self.trainer.world_size > 1 \
                else here
            if anywhere:
                return self._nonfinite_loss(float(parts["loss"].detach()), index, here)
        self.metrics[stage].update(pred, labels)
        self.metrics[stage].add_losses({k: v.detach() for k, v in parts.items()}, graph.n_graphs)
        if training:  # the running loss of this process, for the progress bar only (no collective)
            self.log("loss", parts["loss"].detach(), on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return parts["loss"]

    def _nonfinite_loss(self, loss: float, index, here: bool = True) -> None:
        """Stop with the batch's frames named, or skip the batch when asked to (and say so). ``here``:
        the non-finite loss is this process's (under DDP another process's batch may be the one)."""
        frames = [self.trainer.datamodule.source_of(k) for k in index.tolist()]
        where = f"epoch {self.current_epoch}, step {self.global_step}"
        if self.hparams.skip_nonfinite_batches:
            if here:
                self.skipped.extend(frames)
                warnings.warn(f"skipped a batch with a non-finite loss ({where}); its frames: {'; '.join(frames)}")
            if self.trainer.world_size == 1:
                return None  # Lightning makes no optimiser step for this batch
            # Lightning refuses None under DDP: every process returns a zero loss (zero gradients, the same
            # all-reduce as any step) and the optimiser step runs with a learning rate of 0
            self._frozen_step = True
            return 0.0 * sum(p.sum() for p in self.potential.parameters())
        if not here:
            raise TrainingError(
                f"non-finite training loss in another process's batch at {where} (that process names its frames). "
                "Training stopped; the checkpoints written so far are kept and no model file was written")
        raise TrainingError(
            f"non-finite training loss ({loss}) at {where}; the batch held: {'; '.join(frames)}. "
            "Training stopped; the checkpoints written so far are kept and no model file was written. "
            "Check these frames, lower model.lr, or set model.skip_nonfinite_batches true to skip such batches")

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._frozen_step:
            self._frozen_lrs = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = 0.0  # AdamW then changes no weight (decay included)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._frozen_step:
            optimizer = self.optimizers(use_pl_optimizer=False)
            for group, lr in zip(optimizer.param_groups, self._frozen_lrs):
                group["lr"] = lr
            self._frozen_step = False

    def training_step(self, batch, batch_idx: int):
        return self._step(self.potential, batch, "train", training=True)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        with torch.enable_grad():  # the second loader: replayed frames (data.replay_file)
            return self._step(self.ema, batch, "val_replay" if dataloader_idx == 1 else "val", training=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        decay = self.hparams.ema_decay
        step = self.global_step
        decay = min(decay, (1.0 + step) / (10.0 + step))  # short warm-up
        with torch.no_grad():
            ema_p = list(self.ema.parameters())
            torch._foreach_lerp_(ema_p, list(self.potential.parameters()), 1.0 - decay)

    def _log_metrics(self, stage: str) -> None:
        """Log the epoch's losses and errors over the frames of every process.

        Under DDP this is the only collective of an epoch's logging, reached by every rank at the same
        hook whatever the callbacks: the values are logged already reduced, without ``sync_dist``, so
        that a progress bar (rank 0 only) reading them starts no collective of its own."""
        metrics = self.metrics[stage]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            metrics.all_reduce(self.device)  # the backend's device (NCCL takes no CPU tensors)
        values = {**metrics.losses(), **metrics.compute()}
        with warnings.catch_warnings():  # Lightning's advice to sync: these values are reduced already
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            for name, value in values.items():
                self.log(f"{stage}/{name}", value, prog_bar=(stage == "val" and name in ("loss", "forces_mae_meV_A")))
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        optimizer = self.optimizers(use_pl_optimizer=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            self.log("lr", float(optimizer.param_groups[0]["lr"]))  # the same on every rank

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if self.metrics["val_replay"].sums:
            self._log_metrics("val_replay")

    def on_train_epoch_start(self) -> None:
        self.metrics["train"].reset()

    def on_validation_epoch_start(self) -> None:
        self.metrics["val"].reset()
        self.metrics["val_replay"].reset()
        if self.hparams.refit_shift and not self.hparams.keep_shift and not self.trainer.sanity_checking:
            self._refit_shift()

    def _refit_shift(self) -> None:
        train_set = self.trainer.datamodule.train_set
        n, limit = len(train_set), self.hparams.refit_frames
        indices = np.arange(n) if n <= limit else np.sort(np.random.default_rng(0).choice(n, limit, replace=False))
        delta = stats.shift_correction(self.ema, train_set, indices.tolist(), batch_size=32)
        self.ema.energy_shift += torch.as_tensor(delta, device=self.ema.energy_shift.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints carry the model's description (species, fitted statistics), so that
        ``e3pot export-checkpoint`` writes a model file from a checkpoint alone."""
        if self.ema is not None:
            from e3pot.model.io import dtype_name

            checkpoint["e3pot_model"] = {"config": dict(self.ema.config), "dtype": dtype_name(self.ema.dtype)}
            val_set = getattr(getattr(self.trainer, "datamodule", None), "val_set", None) if self._trainer else None
            if val_set is not None:  # export-checkpoint calibrates a shallow ensemble on these frames again
                checkpoint["e3pot_model"]["validation"] = stats.fingerprint(val_set)

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        trainable = [p for p in self.potential.parameters() if p.requires_grad]  # model.freeze leaves some out
        optimizer = torch.optim.AdamW(trainable, lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=hp.lr_factor, patience=hp.lr_patience, min_lr=hp.lr_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}


# The help of each model setting says which kinds take it and their defaults, read from the kinds' classes.
for _name in kinds.SETTINGS:
    E3PotModule.__doc__ = E3PotModule.__doc__.replace(f"<{_name}>", kinds.describe(_name) + ".")
del _name
