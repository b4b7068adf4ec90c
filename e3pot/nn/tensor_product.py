"""Edge convolution: channel-wise tensor product with the edge harmonics, neighbour sum, linear mix.

For every input block ``x_i`` (mul channels of irrep l1) and every spherical-harmonic order l2,
each output irrep l3 that the block should produce is one path; path weights come per edge and
channel from the radial MLP (e3nn's "uvu" connection). Instead of one small einsum per path, the
Clebsch-Gordan coefficients (``e3nn.o3.wigner_3j``) of the paths of an input block that share an
output dimension d3 are stacked into one matrix ``C`` (sh_dim, n_paths * d3 * d1), and each such
group costs three dense operations on the edges:

    M   = Y @ C                          # (n_edges, n_paths * d3, d1): the edge's linear map
    out = M @ x_j * w                    # (n_edges, n_paths, d3, mul), w per edge, path, channel
    sum over the edges of each receiving atom

For scalar inputs (d1 = 1) the product is an outer product, and the weights multiply the
smaller factor first. Edge tensors keep the channel index last, so the per-edge weight multiply
and its backward run on contiguous rows of ``mul`` numbers (about four times as fast on CPU as
broadcasting over d3). The only edge-sized gathers are of the sender features, and the only
edge-sized slices are column blocks of ``Y @ C`` and of the radial weights.

The neighbour sums of all paths that end in the same irrep are then mixed by one matrix product
per irrep type (the output linear layer of a NequIP block, with e3nn's ``o3.Linear``
normalisation) and written out in e3nn's layout of ``irreps_out``. This is per atom and small.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from e3nn import o3
from e3nn.util.jit import compile_mode
from torch import Tensor, nn


@compile_mode("script")
class EdgeTensorProductScatter(nn.Module):
    """Args:
        irreps_in: node feature irreps (taken from each edge's sender).
        irreps_sh: spherical harmonics of the edge directions (each l at most once).
        irreps_out: irreps of the result; paths to irreps not in it are not computed.
        norm: constant factor on the neighbour sum (1 / sqrt(average number of neighbours)).

    Attributes:
        paths: ``(input block, harmonic block, output irrep)`` for every path, in the order of
            the per-edge weights (each path takes ``mul`` consecutive weights of its input block).
        weight_numel: number of per-edge weights (the radial MLP's output size).
    """

    def __init__(self, irreps_in, irreps_sh, irreps_out, norm: float = 1.0):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out = o3.Irreps(irreps_out)
        self.norm = float(norm)
        wanted = {ir for _, ir in self.irreps_out}
        if any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(f"edge irreps {self.irreps_sh} must hold each l once (multiplicity 1)")
        sh_slices = self.irreps_sh.slices()
        in_slices = self.irreps_in.slices()

        cgs: List[Tensor] = []
        self.paths: List[Tuple[int, int, o3.Irrep]] = []
        path_mul: List[int] = []
        # one entry per input block
        self.in_start: List[int] = []
        self.in_stop: List[int] = []
        self.in_mul: List[int] = []
        self.in_dim: List[int] = []
        # one entry per (input block, output dimension) group
        self.block_of: List[int] = []
        self.n_paths: List[int] = []
        self.d3s: List[int] = []
        self.cg_sizes: List[int] = []
        self.w_sizes: List[int] = []
        for b, ((mul, ir_in), sl) in enumerate(zip(self.irreps_in, in_slices)):
            self.in_start.append(sl.start)
            self.in_stop.append(sl.stop)
            self.in_mul.append(mul)
            self.in_dim.append(ir_in.dim)
            paths = [(j, ir_sh, ir_out) for j, (_, ir_sh) in enumerate(self.irreps_sh)
                     for ir_out in ir_in * ir_sh if ir_out in wanted]
            for d3 in sorted({ir_out.dim for _, _, ir_out in paths}):
                group = [p for p in paths if p[2].dim == d3]
                cg = torch.zeros(self.irreps_sh.dim, len(group), d3, ir_in.dim, dtype=torch.float64)
                for p, (j, ir_sh, ir_out) in enumerate(group):
                    w3j = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64)  # (d1, d2, d3)
                    # component normalisation: unit-variance inputs give unit-variance outputs
                    cg[sh_slices[j], p, :, :] = w3j.permute(1, 2, 0) * math.sqrt(d3)
                    self.paths.append((b, j, ir_out))
                    path_mul.append(mul)
                cgs.append(cg.reshape(self.irreps_sh.dim, -1))
                self.block_of.append(b)
                self.n_paths.append(len(group))
                self.d3s.append(d3)
                self.cg_sizes.append(cgs[-1].shape[1])
                self.w_sizes.append(mul * len(group))
        missing = [str(ir) for _, ir in self.irreps_out if ir not in {p[2] for p in self.paths}]
        if missing:
            raise ValueError(f"no tensor-product path from {self.irreps_in} x {self.irreps_sh} to {', '.join(missing)}")
        self.register_buffer("cg", torch.cat(cgs, dim=1).to(torch.get_default_dtype()), persistent=False)
        self.weight_numel = sum(self.w_sizes)

        # Output mixing, one matrix per distinct output irrep: the inputs are the neighbour sums of
        # all paths ending in that irrep (concatenated on the channel axis), the outputs all blocks
        # of ``irreps_out`` with that irrep.
        path_index = []  # flat index of each path over (group, path-in-group)
        for k, n_p in enumerate(self.n_paths):
            path_index.extend((k, p) for p in range(n_p))
        types = sorted({ir for _, ir in self.irreps_out})
        self.sel_group: List[int] = []
        self.sel_path: List[int] = []
        self.type_n_sel: List[int] = []  # paths per type
        self.type_dim: List[int] = []
        self.type_cin: List[int] = []
        self.type_cout: List[int] = []
        self.type_w_start: List[int] = []
        self.type_alpha: List[float] = []  # e3nn's o3.Linear normalisation, times ``norm``
        n_weight = 0
        for ir in types:
            sel = [i for i, path in enumerate(self.paths) if path[2] == ir]
            for i in sel:
                self.sel_group.append(path_index[i][0])
                self.sel_path.append(path_index[i][1])
            c_in = sum(path_mul[i] for i in sel)
            c_out = sum(mul for mul, ir2 in self.irreps_out if ir2 == ir)
            self.type_n_sel.append(len(sel))
            self.type_dim.append(ir.dim)
            self.type_cin.append(c_in)
            self.type_cout.append(c_out)
            self.type_w_start.append(n_weight)
            self.type_alpha.append(norm / math.sqrt(c_in))
            n_weight += c_in * c_out
        self.weight = nn.Parameter(torch.randn(n_weight))
        # where each output block comes from: (type index, first channel)
        self.out_type: List[int] = []
        self.out_start: List[int] = []
        self.out_mul: List[int] = []
        used = [0] * len(types)
        for mul, ir in self.irreps_out:
            t = types.index(ir)
            self.out_type.append(t)
            self.out_start.append(used[t])
            self.out_mul.append(mul)
            used[t] += mul

    def edge_floats(self) -> int:
        """Numbers per edge that an energy+forces call keeps for its backward: the per-edge weights, the
        edge maps ``Y @ C``, and for each group the gathered sender features and the per-path products."""
        floats = self.weight_numel + sum(self.cg_sizes)
        for k, b in enumerate(self.block_of):
            floats += (self.n_paths[k] * self.d3s[k] + self.in_dim[b]) * self.in_mul[b]
        return floats

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
                n_out: int = -1) -> Tensor:
        # x (n_atoms, irreps_in.dim), sh (n_edges, irreps_sh.dim), weight (n_edges, weight_numel),
        # sender/receiver (n_edges,) -> (n_out, irreps_out.dim); n_out defaults to n_atoms (a chunk
        # of receiving atoms passes its own count and receivers numbered from 0)
        n_in, n_edges = x.shape[0], sh.shape[0]
        n_atoms = n_in if n_out < 0 else n_out
        # per input block, channel-last: (n_atoms, d1, mul)
        xt: List[Tensor] = []
        for b in range(len(self.in_mul)):
            block = x[:, self.in_start[b]:self.in_stop[b]].reshape(n_in, self.in_mul[b], self.in_dim[b])
            xt.append(block.transpose(1, 2).contiguous())
        maps = torch.split(sh @ self.cg, self.cg_sizes, dim=1)
        weights = torch.split(weight, self.w_sizes, dim=1)
        sums: List[Tensor] = []
        for k in range(len(maps)):
            b, n_paths, d3 = self.block_of[k], self.n_paths[k], self.d3s[k]
            mul, d1 = self.in_mul[b], self.in_dim[b]
            x_edge = xt[b].index_select(0, sender)  # (n_edges, d1, mul)
            if d1 == 1:  # scalar input: an outer product, weighted on the smaller side first
                xw = x_edge * weights[k].reshape(n_edges, n_paths, mul)  # (n_edges, n_paths, mul)
                out = maps[k].reshape(n_edges, n_paths, d3, 1) * xw.reshape(n_edges, n_paths, 1, mul)
            else:
                out = torch.bmm(maps[k].reshape(n_edges, n_paths * d3, d1), x_edge)
                out = out.reshape(n_edges, n_paths, d3, mul) * weights[k].reshape(n_edges, n_paths, 1, mul)
            summed = torch.zeros((n_atoms, n_paths, d3, mul), dtype=out.dtype, device=out.device)
            sums.append(summed.index_add(0, receiver, out))
        return self.mix(sums, n_atoms)

    def mix(self, sums: List[Tensor], n_atoms: int) -> Tensor:
        """The output (n_atoms, irreps_out.dim) from the neighbour sums, one (n_atoms, n_paths, d3, mul) tensor per
        (input block, output dimension) group, the paths of a group in the order of :attr:`paths`. Another kernel
        backend (:mod:`e3pot.nn.cueq`) hands its neighbour sums in here."""
        mixed: List[Tensor] = []
        i = 0
        for t in range(len(self.type_dim)):
            parts: List[Tensor] = []
            for _ in range(self.type_n_sel[t]):
                parts.append(sums[self.sel_group[i]][:, self.sel_path[i]])  # (n_atoms, d3, mul)
                i += 1
            c_in, c_out = self.type_cin[t], self.type_cout[t]
            w = self.weight[self.type_w_start[t]:self.type_w_start[t] + c_in * c_out].reshape(c_in, c_out)
            mixed.append(torch.cat(parts, dim=2) @ (w * self.type_alpha[t]))  # (n_atoms, d3, c_out)
        out_blocks: List[Tensor] = []
        for o in range(len(self.out_mul)):
            t, start, mul = self.out_type[o], self.out_start[o], self.out_mul[o]
            block = mixed[t][:, :, start:start + mul]  # (n_atoms, d3, mul)
            out_blocks.append(block.transpose(1, 2).reshape(n_atoms, mul * self.type_dim[t]))
        return torch.cat(out_blocks, dim=1)
