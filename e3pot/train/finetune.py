"""Starting a training run from a trained model (``model.init_from``): its architecture and weights, new
elements, the energy reference, and frozen parameter groups.

**Architecture.** The settings of the model file are the run's; a setting given on the command line or in
the config that contradicts the file is refused, naming both values. The fitted constants that the network's
function depends on (``avg_num_neighbors``, ``energy_scale``) come from the file too.

**New elements.** The species of the starting model keep their order and their index; elements of the new
data that it does not know are appended. The weights that have a species axis (the species embedding, each
layer's species-dependent self-connection) get new rows for them, which keep the fresh initialisation of a
new model (e3nn's: standard normal); the rows of the known elements are copied and multiplied by
sqrt(n_new / n_old), which undoes e3nn's 1/sqrt(fan-in) normalisation of these layers, so that a structure of
known elements has exactly the starting model's energies and forces before the first step.

**Energy reference** (one per-species shift, eV): by default re-fitted to the new data by least squares of the
starting model's energy errors (a new level of theory has other atomic energies; the network's relative
energies are kept); ``model.e0s`` (a table or a file of isolated atoms) sets them instead; ``model.keep_shift``
keeps the starting model's (new elements are then fitted with the known ones held, and the shifts are not
re-fitted during training).

**Freezing** (``model.freeze``): named groups of parameters that do not train (see :func:`groups`).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from e3pot.model.base import EnergyModel


def read_start(path: str) -> Dict[str, Any]:
    """The contents of the model file ``path`` (:func:`e3pot.model.io.read_model_file`), or a ValueError that
    names the option and says what the file is instead (an export, a checkpoint, a missing file)."""
    from e3pot.model.io import read_model_file

    if not os.path.exists(path):
        raise FileNotFoundError(f"model.init_from {path}: no such model file")
    try:
        return read_model_file(path)
    except ValueError as exc:
        text = str(exc)
        if "export" in text or "AOTInductor" in text or "TorchScript" in text:
            raise ValueError(f"model.init_from {path}: fine-tuning starts from a model file (model.pt), not an "
                             f"export, whose weights are compiled into it ({text})") from None
        raise ValueError(f"model.init_from {path}: {text}") from None


def start_settings(payload: Dict[str, Any], path: str, kind: str, given: Dict[str, Any],
                   settings: Sequence[str]) -> tuple:
    """``(kind, settings)`` of a run that starts from ``payload``: the file's, after refusing a ``kind`` (other
    than the default ``e3``) or a setting in ``given`` (the values not None) that contradicts it."""
    config = payload["config"]
    file_kind = config.get("kind", "e3")
    if kind != file_kind and kind != "e3":
        raise ValueError(f"model.kind={kind!r} contradicts model.init_from {path}, a model of kind {file_kind!r}; "
                         "leave model.kind out (the architecture comes from the file)")
    clashes = [f"model.{name}={value!r} (the file has {config[name]!r})" for name, value in given.items()
               if value is not None and name in config and config[name] != value]
    if clashes:
        raise ValueError(f"model.init_from {path}: the architecture comes from the file, and "
                         f"{', '.join(clashes)} contradict{'s' if len(clashes) == 1 else ''} it; leave these settings "
                         "out, or train from scratch")
    return file_kind, {name: config[name] for name in settings if name in config}


def species_order(start: Sequence[int], data: Sequence[int]) -> List[int]:
    """The species of the fine-tuned model: the starting model's, in its order, then the new elements, sorted."""
    return [*start, *sorted(set(data) - set(start))]


def _species_axes(model: EnergyModel, name: str, shape: torch.Size, n_species: int):
    """How parameter ``name`` of ``model`` depends on the species: None (it does not), or a list of
    ``(start, stop, view)`` pieces of its flat values, each viewed as ``view`` with the species on axis 1, and the
    e3nn normalisation factor's exponent (1: scaled by 1/sqrt(n_species))."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    from e3nn import o3

    if isinstance(module, o3.Linear) and attr == "weight":
        if module.irreps_in == o3.Irreps(f"{n_species}x0e"):
            return [(0, shape.numel(), (1, n_species, -1))], True
        return None
    if isinstance(module, o3.FullyConnectedTensorProduct) and attr == "weight":
        if module.irreps_in2 != o3.Irreps(f"{n_species}x0e"):
            return None
        pieces, start = [], 0
        for ins in module.instructions:
            if ins.has_weight:
                size = math.prod(ins.path_shape)
                pieces.append((start, start + size, (ins.path_shape[0], ins.path_shape[1], ins.path_shape[2])))
                start += size
        return pieces, True
    if isinstance(module, torch.nn.Linear) and attr == "weight" and shape[-1] == n_species:
        return [(0, shape.numel(), (-1, n_species, 1))], False
    return None


def extend(start: EnergyModel, new: EnergyModel) -> List[str]:
    """Copy the weights of ``start`` into ``new`` (same kind and settings; ``new.atomic_numbers`` begins with
    ``start``'s): species-dependent weights row by row, scaled as the module's notes say, new rows left as they
    are. Buffers other than the energy shift are copied. Returns the names of the species-dependent parameters."""
    n_old, n_new = len(start.atomic_numbers), len(new.atomic_numbers)
    if list(new.atomic_numbers[:n_old]) != list(start.atomic_numbers):
        raise ValueError("the fine-tuned model's species must begin with the starting model's")
    old_state = start.state_dict()
    extended = []
    with torch.no_grad():
        for name, target in new.state_dict().items():
            if name == "energy_shift":
                continue
            source = old_state[name].to(device=target.device, dtype=target.dtype)
            if source.shape == target.shape:
                target.copy_(source)
                continue
            axes_new = _species_axes(new, name, target.shape, n_new)
            axes_old = _species_axes(start, name, source.shape, n_old)
            if axes_new is None or axes_old is None:
                raise ValueError(f"cannot carry {name} {tuple(source.shape)} over to {tuple(target.shape)}")
            (pieces_new, normalised), (pieces_old, _) = axes_new, axes_old
            factor = math.sqrt(n_new / n_old) if normalised else 1.0
            flat_new, flat_old = target.view(-1), source.reshape(-1)
            for (a, b, view_new), (c, d, view_old) in zip(pieces_new, pieces_old):
                piece_new = flat_new[a:b].view(view_new)
                piece_old = flat_old[c:d].reshape(view_old)
                piece_new[:, :n_old] = piece_old * factor
            extended.append(name)
    return extended


def keep_shift_fit(model: EnergyModel, dataset, known: int, sample: Sequence[int]) -> np.ndarray:
    """Energy shifts with the first ``known`` species' held: the others fitted by least squares of the model's
    energy errors on ``dataset[sample]``."""
    from e3pot.train.stats import composition_matrix, shift_correction

    shift = model.energy_shift.detach().cpu().numpy().copy()
    if known == len(shift):
        return shift
    full = shift_correction(model, dataset, sample)  # all species free: only for the residuals below
    counts = composition_matrix(dataset, len(shift), sample).astype(float)
    residual = counts @ full  # the model's energy errors, as a linear function of composition
    delta, *_ = np.linalg.lstsq(counts[:, known:], residual, rcond=None)
    shift[known:] += delta
    return shift


def groups(model: EnergyModel) -> Dict[str, List[str]]:
    """The parameter groups that ``model.freeze`` names: ``embedding`` (species embedding), ``radial`` (the
    radial basis and every layer's radial network), ``layer0`` ... ``layer{N-1}`` (one interaction layer each,
    its radial network included) and ``readout``. Values: parameter names."""
    names = [name for name, _ in model.named_parameters()]
    out: Dict[str, List[str]] = {"embedding": [n for n in names if n.startswith("embedding.")],
                                 "radial": [n for n in names if n.startswith("radial.") or re.match(r"layers\.\d+\.radial\.", n)]}
    for k in range(len(getattr(model, "layers", []))):
        out[f"layer{k}"] = [n for n in names if n.startswith(f"layers.{k}.")]
    out["readout"] = [n for n in names if n.startswith("readout.")]
    return {group: members for group, members in out.items() if members}


def freeze(model: EnergyModel, wanted: Optional[Sequence[str]]) -> List[str]:
    """Stop the groups ``wanted`` (see :func:`groups`) from training; returns the frozen parameter names.
    An unknown group is a ValueError listing the model's groups."""
    if not wanted:
        return []
    table = groups(model)
    unknown = [g for g in wanted if g not in table]
    if unknown:
        raise ValueError(f"model.freeze: unknown group(s) {', '.join(unknown)}; this model has "
                         f"{', '.join(table)}")
    frozen = sorted({name for g in wanted for name in table[g]})
    parameters = dict(model.named_parameters())
    for name in frozen:
        parameters[name].requires_grad_(False)
    if len(frozen) == len(parameters):
        raise ValueError(f"model.freeze {', '.join(wanted)} freezes every parameter; leave a group to train")
    return frozen


def fine_tuned_model(path: str, kind: str, atomic_numbers: List[int], train_set, e0s, keep_shift: bool,
                     refit_frames: int) -> tuple:
    """``(model, summary)``: the model a fine-tuning run starts with (float64), built from the model file
    ``path`` for the species ``atomic_numbers`` (the file's first, in its order), with the energy shifts that
    ``e0s`` and ``keep_shift`` ask for (see the module's notes), fitted on at most ``refit_frames`` frames of
    ``train_set``; ``summary`` says what was done, in a line."""
    from ase.data import chemical_symbols

    from e3pot.data.io import DataError
    from e3pot.model.io import load_model
    from e3pot.model.kinds import model_class
    from e3pot.train import stats

    start = load_model(path, dtype=torch.float64)
    config = dict(start.config, atomic_numbers=list(atomic_numbers), energy_shift=None)
    config.pop("kind")
    new = model_class(kind)(**config)
    extended = extend(start, new)
    known = len(start.atomic_numbers)
    added = [chemical_symbols[z] for z in atomic_numbers[known:]]
    with torch.no_grad():
        new.energy_scale.copy_(start.energy_scale)
        new.energy_shift.zero_()
        new.energy_shift[:known] = start.energy_shift
    n = len(train_set)
    sample = list(range(n)) if n <= refit_frames else sorted(
        np.random.default_rng(0).choice(n, refit_frames, replace=False).tolist())
    if keep_shift:
        how = "kept from the starting model" + (" (the new elements' fitted)" if added else "")
        shift = keep_shift_fit(new, train_set, known, sample)
    elif e0s == "fit":
        how = "re-fitted to the new data (least squares of the starting model's energy errors)"
        shift = new.energy_shift.numpy() + stats.shift_correction(new, train_set, sample)
    else:
        how = "from model.e0s"
        shift = stats.shift_from_table(e0s if isinstance(e0s, dict) else stats.read_e0s_file(e0s), atomic_numbers)
    if not np.isfinite(shift).all():
        raise DataError(f"the energy shifts fitted for fine-tuning from {path} came out non-finite; check the "
                        "energy labels of the training frames")
    with torch.no_grad():
        new.energy_shift.copy_(torch.as_tensor(shift, dtype=torch.float64))
    summary = (f"Starting from {path}: {kind} model of {', '.join(chemical_symbols[z] for z in atomic_numbers[:known])}"
               + (f"; new element(s) {', '.join(added)} (rows added to {', '.join(extended)})" if added else "")
               + f"; energy shifts {how}")
    return new, summary
