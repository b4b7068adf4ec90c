"""Radial basis: trainable Bessel functions times a smooth polynomial cutoff envelope."""
from __future__ import annotations

import math

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn


@compile_mode("script")
class PolynomialCutoff(nn.Module):
    """Envelope u(r) going to zero at ``r_max`` with ``p`` continuous derivatives
    (Klicpera et al., DimeNet, 2020, Eq. 8)."""

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        if p < 2 or p != int(p):
            raise ValueError(f"polynomial cutoff needs an integer p >= 2, got {p}")
        self.r_max = float(r_max)
        self.p = float(p)
        self.p_int = int(p)

    def forward(self, r: Tensor) -> Tensor:  # (n_edges,) Å -> (n_edges,)
        x = r / self.r_max
        p = self.p
        # 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), in Horner form with x^p by products
        # (a generic pow costs ten times as much on the CPU)
        xp = x
        for _ in range(self.p_int - 1):
            xp = xp * x
        u = 1.0 - xp * (0.5 * (p + 1.0) * (p + 2.0) - x * (p * (p + 2.0) - 0.5 * p * (p + 1.0) * x))
        return u * (x < 1.0)


@compile_mode("script")
class BesselBasis(nn.Module):
    """sqrt(2 / r_max) * sin(n pi r / r_max) / r, n = 1..num_basis, with trainable frequencies."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max)
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.r_max
        self.frequencies = nn.Parameter(freqs, requires_grad=trainable)

    def forward(self, r: Tensor) -> Tensor:  # (n_edges,) Å -> (n_edges, num_basis)
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r


@compile_mode("script")
class RadialEmbedding(nn.Module):
    """Bessel basis times cutoff envelope: the edge-length features fed to the radial MLPs."""

    def __init__(self, r_max: float, num_basis: int = 8, cutoff_p: int = 6, trainable: bool = True):
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(r_max, cutoff_p)
        self.num_basis = num_basis

    def forward(self, r: Tensor) -> Tensor:  # (n_edges,) -> (n_edges, num_basis)
        return self.basis(r) * self.cutoff(r).unsqueeze(-1)
