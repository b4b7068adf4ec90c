"""Channel-wise tensor product of neighbour features with edge spherical harmonics, summed per atom.

For every input block ``x_i`` (mul channels of irrep l1) and every spherical-harmonic order l2,
each allowed output irrep l3 is one path; path weights come per edge and channel from the radial
MLP (e3nn's "uvu" connection). Instead of one small einsum per path, the Clebsch-Gordan
coefficients (``e3nn.o3.wigner_3j``) of the paths of an input block that share an output
dimension d3 are stacked into one matrix ``C`` (sh_dim, d1 * n_paths * d3), and each such group
costs three dense operations on the edges:

    M   = Y @ C                          # (n_edges, d1, n_paths * d3): the edge's linear map
    out = x_j @ M * w                    # (n_edges, mul, n_paths, d3), w per edge, channel, path
    sum over the edges of each receiving atom

Nothing edge-sized is sliced, concatenated or index-selected, so the backward pass has no
zero-filled gradient buffers either. The per-atom result is rearranged into e3nn's layout of
``irreps_out`` (one block per path) at the end, where it is small.
"""
from __future__ import annotations

import math
from typing import List

import torch
from e3nn import o3
from e3nn.util.jit import compile_mode
from torch import Tensor, nn


@compile_mode("script")
class EdgeTensorProductScatter(nn.Module):
    """Args:
        irreps_in: node feature irreps (taken from each edge's sender).
        irreps_sh: spherical harmonics of the edge directions (each l at most once).
        wanted: irreps allowed as outputs; paths to anything else are not computed.

    Attributes: ``irreps_out`` (one (mul, ir) block per path), ``weight_numel`` (per edge).
    """

    def __init__(self, irreps_in, irreps_sh, wanted):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        wanted = set(wanted) if isinstance(wanted, set) else {ir for _, ir in o3.Irreps(wanted)}
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"edge irreps {self.irreps_sh} must hold each l once (multiplicity 1)")
        sh_slices = self.irreps_sh.slices()
        in_slices = self.irreps_in.slices()

        cgs: List[Tensor] = []
        out_irreps = []
        # one entry per (input block, output dimension) group
        self.in_start: List[int] = []
        self.in_stop: List[int] = []
        self.muls: List[int] = []
        self.d1s: List[int] = []
        self.n_paths: List[int] = []
        self.d3s: List[int] = []
        self.cg_sizes: List[int] = []
        self.w_sizes: List[int] = []
        for (mul, ir_in), sl in zip(self.irreps_in, in_slices):
            paths = [(j, ir_sh, ir_out) for j, (_, ir_sh) in enumerate(self.irreps_sh)
                     for ir_out in ir_in * ir_sh if ir_out in wanted]
            for d3 in sorted({ir_out.dim for _, _, ir_out in paths}):
                group = [p for p in paths if p[2].dim == d3]
                cg = torch.zeros(self.irreps_sh.dim, ir_in.dim, len(group), d3, dtype=torch.float64)
                for p, (j, ir_sh, ir_out) in enumerate(group):
                    w3j = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64)  # (d1, d2, d3)
                    # component normalisation: unit-variance inputs give unit-variance outputs
                    cg[sh_slices[j], :, p, :] = w3j.permute(1, 0, 2) * math.sqrt(d3)
                    out_irreps.append((mul, ir_out))
                cgs.append(cg.reshape(self.irreps_sh.dim, -1))
                self.in_start.append(sl.start)
                self.in_stop.append(sl.stop)
                self.muls.append(mul)
                self.d1s.append(ir_in.dim)
                self.n_paths.append(len(group))
                self.d3s.append(d3)
                self.cg_sizes.append(cgs[-1].shape[1])
                self.w_sizes.append(mul * len(group))
        if not out_irreps:
            raise ValueError(f"no tensor-product path from {self.irreps_in} x {self.irreps_sh} to {sorted(wanted)}")
        self.register_buffer("cg", torch.cat(cgs, dim=1).to(torch.get_default_dtype()), persistent=False)
        self.irreps_out = o3.Irreps(out_irreps)
        self.weight_numel = sum(self.w_sizes)

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor) -> Tensor:
        # x (n_atoms, irreps_in.dim), sh (n_edges, irreps_sh.dim), weight (n_edges, weight_numel),
        # sender/receiver (n_edges,) -> (n_atoms, irreps_out.dim)
        n_atoms, n_edges = x.shape[0], sh.shape[0]
        maps = torch.split(sh @ self.cg, self.cg_sizes, dim=1)
        weights = torch.split(weight, self.w_sizes, dim=1)
        parts: List[Tensor] = []
        for k in range(len(maps)):
            mul, d1, n_paths, d3 = self.muls[k], self.d1s[k], self.n_paths[k], self.d3s[k]
            x_edge = x[:, self.in_start[k]:self.in_stop[k]].index_select(0, sender).reshape(n_edges, mul, d1)
            out = torch.bmm(x_edge, maps[k].reshape(n_edges, d1, n_paths * d3)).reshape(n_edges, mul, n_paths, d3)
            out = out * weights[k].reshape(n_edges, mul, n_paths, 1)
            summed = torch.zeros((n_atoms, mul, n_paths, d3), dtype=out.dtype, device=out.device)
            summed = summed.index_add_(0, receiver, out)
            for p in range(n_paths):  # per-atom, small: e3nn layout (mul, d3) per path
                parts.append(summed[:, :, p, :].reshape(n_atoms, mul * d3))
        return torch.cat(parts, dim=1)
