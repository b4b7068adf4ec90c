"""Weighted MSE loss and running error metrics (energies per atom and per structure, forces)."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from e3pot.data.graph import Labels
from e3pot.model.forces import Prediction


def weighted_loss(pred: Prediction, labels: Labels, energy_weight: float, forces_weight: float,
                  stress_weight: float) -> Dict[str, Tensor]:
    """MSE of per-atom energy (eV/atom)^2, force components (eV/Å)^2 and stress (eV/Å^3)^2."""
    n_atoms = labels.n_atoms.to(pred.energy.dtype)
    parts = {}
    if energy_weight > 0:  # structures without an energy label (replayed frames) count with their forces only
        has = torch.isfinite(labels.energy)
        diff = torch.where(has, (pred.energy - labels.energy) / n_atoms, torch.zeros_like(pred.energy))
        parts["energy"] = diff.pow(2).sum() / has.sum().clamp(min=1)
    if forces_weight > 0:
        parts["forces"] = (pred.forces - labels.forces).pow(2).mean()
    if stress_weight > 0 and pred.stress is not None:
        mask = torch.isfinite(labels.stress)
        diff = torch.where(mask, pred.stress - labels.stress, torch.zeros_like(labels.stress))
        parts["stress"] = diff.pow(2).sum() / mask.sum().clamp(min=1)
    weights = {"energy": energy_weight, "forces": forces_weight, "stress": stress_weight}
    parts["loss"] = sum(weights[k] * v for k, v in parts.items())
    return parts


NLL_FLOOR = 1e-8  # (eV/atom)^2 added to the heads' variance: a floor of 0.1 meV/atom on the spread


def gaussian_nll(head_energies: Tensor, labels: Labels) -> Tensor:
    """Gaussian negative log-likelihood (without its constant) of the energies per atom under the heads of a
    shallow ensemble: mean and variance over the heads (n_graphs, heads), per atom; averaged over structures."""
    n_atoms = labels.n_atoms.to(head_energies.dtype)
    mean = head_energies.mean(1) / n_atoms
    var = head_energies.var(1, unbiased=False) / n_atoms.pow(2) + NLL_FLOOR
    has = torch.isfinite(labels.energy)
    reference = torch.where(has, labels.energy / n_atoms, mean.detach())
    nll = torch.where(has, 0.5 * (torch.log(var) + (mean - reference).pow(2) / var), torch.zeros_like(var))
    return nll.sum() / has.sum().clamp(min=1)


class ErrorMetrics:
    """Accumulates absolute and squared errors on the device (no syncs until :meth:`compute`)."""

    LOSSES = ("loss", "energy", "forces", "stress")

    def __init__(self):
        self.sums: Dict[str, Tensor] = {}
        self.loss_sums: Dict[str, Tensor] = {}  # per loss term: [sum of batch mean x batch size, structures]

    def reset(self) -> None:
        self.sums = {}
        self.loss_sums = {}

    def add_losses(self, parts: Dict[str, Tensor], n_structures: int) -> None:
        """Add a batch's loss terms, weighted by its number of structures (as Lightning's epoch mean)."""
        for name, value in parts.items():
            new = torch.stack([value.detach().double() * n_structures,
                               torch.tensor(float(n_structures), dtype=torch.float64, device=value.device)])
            self.loss_sums[name] = self.loss_sums[name] + new if name in self.loss_sums else new

    def losses(self) -> Dict[str, float]:
        """The epoch's mean of each loss term over structures."""
        return {name: float(s[0] / s[1]) for name, s in self.loss_sums.items() if float(s[1]) > 0}

    def _add(self, name: str, err: Tensor) -> None:
        err = err.detach().double()
        new = torch.stack([err.abs().sum(), err.pow(2).sum(), err.sum(),
                           torch.tensor(err.numel(), device=err.device, dtype=torch.float64)])
        self.sums[name] = self.sums[name] + new if name in self.sums else new

    def update(self, pred: Prediction, labels: Labels) -> None:
        has = torch.isfinite(labels.energy)  # replayed frames have no energy label
        e_err = (pred.energy - labels.energy)[has]
        if e_err.numel():
            self._add("e", e_err)
            self._add("e_atom", e_err / labels.n_atoms[has].to(e_err.dtype))
        self._add("f", (pred.forces - labels.forces).reshape(-1))

    def all_reduce(self, device: Optional[torch.device] = None) -> None:
        """Sum the accumulated errors and losses over the processes of a distributed run, in one
        collective of a fixed size (every rank must call it, whatever it has accumulated)."""
        import torch.distributed as dist

        if device is None:
            device = next(iter([*self.sums.values(), *self.loss_sums.values()]), torch.zeros(())).device
        zeros = {4: torch.zeros(4, dtype=torch.float64, device=device),
                 2: torch.zeros(2, dtype=torch.float64, device=device)}
        parts = [self.sums.get(key, zeros[4]) for key in ("e", "e_atom", "f")]
        parts += [self.loss_sums.get(key, zeros[2]) for key in self.LOSSES]
        total = torch.cat(parts)
        dist.all_reduce(total)
        for k, key in enumerate(("e", "e_atom", "f")):
            if float(total[4 * k + 3]) > 0:
                self.sums[key] = total[4 * k:4 * k + 4]
        for k, key in enumerate(self.LOSSES):
            chunk = total[12 + 2 * k:14 + 2 * k]
            if float(chunk[1]) > 0:
                self.loss_sums[key] = chunk

    def compute(self) -> Dict[str, float]:
        """MAE and RMSE in meV (per structure), meV/atom and meV/Å; for energies also the mean
        signed error (prediction - reference), which shows a constant offset at a glance."""
        out = {}
        names = {"e": "energy_{}_meV", "e_atom": "energy_{}_meV_atom", "f": "forces_{}_meV_A"}
        for key, pattern in names.items():
            if key in self.sums:
                abs_sum, sq_sum, signed_sum, n = self.sums[key].tolist()
                out[pattern.format("mae")] = 1000.0 * abs_sum / n
                out[pattern.format("rmse")] = 1000.0 * (sq_sum / n) ** 0.5
                if key != "f":
                    out[pattern.format("mean")] = 1000.0 * signed_sum / n
        return out
