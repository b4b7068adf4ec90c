"""One NequIP-style interaction block on e3nn.

    h -> Linear -> TP(h_j, Y(r_ij)) with per-edge weights from a radial MLP
      -> sum over neighbours / sqrt(avg_num_neighbors) -> Linear   (all three: EdgeTensorProductScatter)
      + self-connection(h, species) -> Gate -> (+ h when the irreps match)
"""
from __future__ import annotations

import math
from typing import List

import torch
from e3nn import nn as enn
from e3nn import o3
from e3nn.util.jit import compile_mode
from torch import Tensor, nn

from e3pot.nn.tensor_product import EdgeTensorProductScatter


def radial_scales(network: enn.FullyConnectedNet) -> List[float]:
    """Per layer of an e3nn ``FullyConnectedNet`` with silu activations, the constant that turns its weight
    into the matrix of :meth:`Interaction.radial_matrices`: e3nn's 1/sqrt(fan-in) times the previous layer's
    second-moment normalisation of silu (and its output variance)."""
    scales, carried = [], 1.0
    for lin in network:
        if lin.act is not None:
            if lin.act.f is not torch.nn.functional.silu:
                raise ValueError(f"radial network: expected silu activations, got {lin.act.f}")
            scales.append(carried / math.sqrt(lin.h_in * lin.var_in))
            carried = (1.0 if lin.act._is_id else lin.act.cst) * math.sqrt(lin.var_out)
        else:
            scales.append(carried / math.sqrt(lin.h_in * lin.var_in / lin.var_out))
    return scales


def _reachable(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, ir_out: o3.Irrep) -> bool:
    return any(ir_out in ir1 * ir2 for _, ir1 in irreps_in for _, ir2 in irreps_sh)


def gate_for(irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_target: o3.Irreps) -> enn.Gate:
    """The gate producing the part of ``irreps_target`` reachable from ``irreps_in`` x ``irreps_sh``."""
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_target if ir.l == 0 and _reachable(irreps_in, irreps_sh, ir)])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_target if ir.l > 0 and _reachable(irreps_in, irreps_sh, ir)])
    if scalars.num_irreps == 0:
        raise ValueError(f"interaction: no scalar output reachable from {irreps_in} x {irreps_sh} "
                         f"within {irreps_target}")
    gate_ir = o3.Irrep("0e") if _reachable(irreps_in, irreps_sh, o3.Irrep("0e")) else o3.Irrep("0o")
    gates = o3.Irreps([(gated.num_irreps, gate_ir)]) if gated.num_irreps else o3.Irreps("")
    act = {1: torch.nn.functional.silu, -1: torch.tanh}
    act_gate = {1: torch.sigmoid, -1: torch.tanh}
    return enn.Gate(scalars, [act[ir.p] for _, ir in scalars],
                    gates, [act_gate[ir.p] for _, ir in gates], gated)


@compile_mode("script")
class Interaction(nn.Module):
    """Message passing with declared irreps; wrong wiring raises ``ValueError`` here, not in forward.

    Args:
        irreps_in: node feature irreps entering the block.
        irreps_sh: spherical-harmonic irreps of the edge directions.
        irreps_target: the hidden irreps the block aims for (only reachable ones are produced).
        num_species: length of the one-hot species vector used by the self-connection.
        num_basis: number of radial basis functions per edge.
        radial_hidden, radial_layers: width and depth of the radial MLP.
        avg_num_neighbors: normaliser of the neighbour sum, fitted on the training data.
    """

    def __init__(self, irreps_in, irreps_sh, irreps_target, num_species: int, num_basis: int,
                 radial_hidden: int = 64, radial_layers: int = 2, avg_num_neighbors: float = 1.0):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in).simplify()
        self.irreps_sh = o3.Irreps(irreps_sh)
        irreps_target = o3.Irreps(irreps_target)
        if not any(ir.l == 0 for _, ir in self.irreps_sh):
            raise ValueError(f"interaction: edge irreps {self.irreps_sh} have no l=0 component")
        if avg_num_neighbors <= 0:
            raise ValueError(f"interaction: avg_num_neighbors must be > 0, got {avg_num_neighbors}")
        self.gate = gate_for(self.irreps_in, self.irreps_sh, irreps_target)

        self.linear_in = o3.Linear(self.irreps_in, self.irreps_in)
        self.conv = EdgeTensorProductScatter(self.irreps_in, self.irreps_sh, self.gate.irreps_in,
                                             norm=1.0 / math.sqrt(avg_num_neighbors))
        radial_widths = radial_layers * [radial_hidden] + [self.conv.weight_numel]
        self.radial = enn.FullyConnectedNet([num_basis] + radial_widths, torch.nn.functional.silu)
        self.radial_scales = radial_scales(self.radial)
        # per edge, the radial MLP keeps each layer's output and its activation for the backward
        self.radial_edge_floats = 2 * sum(radial_widths)
        self.self_connection = o3.FullyConnectedTensorProduct(
            self.irreps_in, o3.Irreps(f"{num_species}x0e"), self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out
        # Residual update on the part of the input that the output shares: all of it, or (for a
        # scalar-only last layer) the matching block of scalars.
        self.res_start, self.res_stop = -1, -1
        if self.irreps_out == self.irreps_in:
            self.res_start, self.res_stop = 0, self.irreps_in.dim
        elif len(self.irreps_out) == 1:
            for block, sl in zip(self.irreps_in, self.irreps_in.slices()):
                if block == self.irreps_out[0]:
                    self.res_start, self.res_stop = sl.start, sl.stop
        self.resnet = self.res_start >= 0

    def forward(self, h: Tensor, onehot: Tensor, sh: Tensor, radial: Tensor, edge_index: Tensor) -> Tensor:
        # h (n_atoms, irreps_in.dim), onehot (n_atoms, n_species), sh (n_edges, irreps_sh.dim),
        # radial (n_edges, num_basis), edge_index (2, n_edges) [sender, receiver]
        return self.propagate(h, onehot, self.linear_in(h), sh, radial, edge_index[0], edge_index[1])

    @torch.jit.export
    def propagate(self, h: Tensor, onehot: Tensor, x: Tensor, sh: Tensor, radial: Tensor, sender: Tensor,
                  receiver: Tensor) -> Tensor:
        """New features (n, irreps_out.dim) of the receiving atoms, whose features and species are ``h``
        (n, irreps_in.dim) and ``onehot``: the neighbour sum of the messages of ``x = linear_in(h)`` of the
        senders (rows indexed by ``sender``) along the edges (``sh``, ``radial``) ending at ``receiver``
        (numbered as the rows of ``h``), then self-connection, gate and residual. The whole graph, or one
        chunk of receiving atoms with the features of its own senders (:mod:`e3pot.model.chunked`)."""
        return self.update(h, onehot, x, sh, self.radial(radial), sender, receiver)

    @torch.jit.export
    def update(self, h: Tensor, onehot: Tensor, x: Tensor, sh: Tensor, weight: Tensor, sender: Tensor,
               receiver: Tensor) -> Tensor:
        """:meth:`propagate` with the radial network's output, the per-edge weights (n_edges, conv.weight_numel),
        given: the potential computes those of all layers at once (:func:`e3pot.nn.radial.fused_radial`)."""
        message = self.conv(x, sh, weight, sender, receiver, h.shape[0])
        x = self.gate(message + self.self_connection(h, onehot))
        return h[:, self.res_start:self.res_stop] + x if self.resnet else x

    @torch.jit.export
    def radial_matrices(self) -> List[Tensor]:
        """The radial network as plain matrices A_0 .. A_n, e3nn's normalisation constants folded in:
        ``network(b) = silu(... silu(b @ A_0) ...) @ A_n``."""
        out: List[Tensor] = []
        i = 0
        for lin in self.radial:
            out.append(lin.weight * self.radial_scales[i])
            i += 1
        return out

    def edge_floats(self) -> int:
        """Numbers per edge that an energy+forces call keeps for its backward (convolution and radial MLP)."""
        return self.conv.edge_floats() + self.radial_edge_floats
