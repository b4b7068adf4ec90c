"""Radial basis: trainable Bessel functions times a smooth polynomial cutoff envelope."""
from __future__ import annotations

import math
from typing import List

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn
from torch.nn.functional import silu


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


def fused_radial(basis: Tensor, matrices: List[List[Tensor]]) -> List[Tensor]:
    """The radial networks of all layers at once: per layer k, ``silu(... silu(basis @ A_k0) ...) @ A_kn`` with the
    matrices of :meth:`~e3pot.nn.interaction.Interaction.radial_matrices`.

    The networks share their input, so their first matrices run as one product (n_edges x num_basis) times
    (num_basis x sum of the first widths) with one activation over the result; the later matrices run layer by
    layer on column blocks of it. The same numbers as the networks one by one, with e3nn's constant factors
    folded into the matrices instead of multiplied onto every edge. (A batched product over the layers was slower
    on the CPU for large graphs: its backward writes full-size zero gradients per layer.)
    basis (n_edges, num_basis) -> one (n_edges, width_k) per layer."""
    n_lin = len(matrices[0])
    widths = [m[0].shape[1] for m in matrices]
    first = basis @ torch.cat([m[0] for m in matrices], dim=1)
    if n_lin == 1:
        return list(torch.split(first, widths, dim=1))
    out: List[Tensor] = []
    for k, h in enumerate(torch.split(silu(first), widths, dim=1)):
        for i in range(1, n_lin - 1):
            h = silu(h @ matrices[k][i])
        out.append(h @ matrices[k][n_lin - 1])
    return out
