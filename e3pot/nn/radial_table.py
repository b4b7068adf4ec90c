"""Radial networks as tables: the same function of the edge length, for inference, at a fraction of the cost.

A layer's radial network maps the Bessel features of an edge length r (times the cutoff envelope) to the
weights of its tensor product: a fixed smooth function W(r) once the model is trained. :class:`TabulatedRadial`
samples it on a uniform grid of ``points`` intervals over [0, r_max], with its exact derivative dW/dr (autograd,
float64), and evaluates it by cubic Hermite interpolation: per edge, four rows of the table instead of a
multilayer perceptron (8 → 64 → 64 → W: about 117,000 multiply-adds per edge summed over the four layers of
NequIP's sizes, against about 6,000). Fewer operations, but bound by memory traffic: on a CPU it measured no
faster than the networks' matmuls (docs/benchmarks.md).

The interpolant is C¹ in r, so energies and forces stay continuous, and forces are its exact derivative (the
potential stays conservative); it is zero from r_max on, as the network is. Its error against the network falls
as h⁴ with the grid spacing h, that of its derivative (the forces) as h³: with the default 2048 intervals,
about 1e-11 and 1e-8 relative (tests/test_radial_table.py measures both). Edges shorter than the first grid
interval use that interval's cubic.
"""
from __future__ import annotations

import torch
from e3nn.util.jit import compile_mode
from torch import Tensor, nn


@compile_mode("script")
class EdgeLength(nn.Module):
    """The edge length itself (n_edges, 1) Å: what tabulated radial networks take in place of the Bessel basis."""

    def forward(self, r: Tensor) -> Tensor:  # (n_edges,) -> (n_edges, 1)
        return r.unsqueeze(-1)


@compile_mode("script")
class TabulatedRadial(nn.Module):
    """``network(embedding(r))`` tabulated on ``points`` intervals of [0, r_max]; called on (n_edges, 1) lengths."""

    def __init__(self, embedding: nn.Module, network: nn.Module, r_max: float, points: int = 2048):
        super().__init__()
        if points < 8:
            raise ValueError(f"a radial table needs at least 8 intervals, got {points}")
        self.r_max = float(r_max)
        self.points = int(points)
        self.spacing = self.r_max / self.points
        dtype = next(network.parameters()).dtype
        values, slopes = tabulate(embedding, network, self.r_max, self.points)
        slopes = slopes * self.spacing  # dW/dt, t in grid units
        # per interval, the four rows its cubic needs (W and dW/dt at both ends): one gather per edge
        packed = torch.stack([values[:-1], slopes[:-1], values[1:], slopes[1:]], dim=1)  # (points, 4, n_weights)
        self.register_buffer("intervals", packed.to(dtype))

    def forward(self, length: Tensor) -> Tensor:  # (n_edges, 1) Å -> (n_edges, n_weights)
        s = length / self.spacing
        i = torch.clamp(torch.floor(s.detach()), 0.0, float(self.points - 1))
        t = s - i  # (n_edges, 1), in [0, 1) inside the grid
        t2 = t * t
        t3 = t2 * t
        h01 = 3.0 * t2 - 2.0 * t3
        basis = torch.cat([1.0 - h01, t3 - 2.0 * t2 + t, h01, t3 - t2], dim=1)  # cubic Hermite: (n_edges, 4)
        rows = self.intervals.index_select(0, i.squeeze(-1).long())  # (n_edges, 4, n_weights)
        out = torch.bmm(basis.unsqueeze(1), rows).squeeze(1)
        return out * (length < self.r_max).to(out.dtype)


def tabulate(embedding: nn.Module, network: nn.Module, r_max: float, points: int):
    """W and dW/dr (float64, (points + 1, n_weights) each) of ``network(embedding(r))`` on r = k r_max / points,
    the derivative by forward-mode differentiation (each row depends on its own r only). At r = 0, where the
    Bessel basis is a limit (sin(fr)/r → f), the network is evaluated at r = 1e-9 Å."""
    import copy

    embedding64 = copy.deepcopy(embedding).double()
    network64 = copy.deepcopy(network).double()
    r = torch.linspace(0.0, r_max, points + 1, dtype=torch.float64)
    r[0] = 1e-9
    with torch.no_grad():
        values, slopes = torch.func.jvp(lambda x: network64(embedding64(x)), (r,), (torch.ones_like(r),))
    return values, slopes
