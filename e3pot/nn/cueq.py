"""The edge convolution through cuEquivariance: gather, channel-wise tensor product and scatter in one call.

:class:`CueqEdgeConvolution` computes what :class:`~e3pot.nn.tensor_product.EdgeTensorProductScatter` computes,
with the same inputs, outputs and parameters, but hands the edge part (gather of the sender features, tensor
product with the edge harmonics and the per-edge radial weights, sum onto the receivers) to one
``cuequivariance_torch.SegmentedPolynomial``: on a GPU with ``cuequivariance-ops-torch-cu12``, the fused CUDA
kernel (method ``uniform_1d``), which never writes the per-edge products to memory; elsewhere its plain
PyTorch implementation (method ``naive``), which is slow but runs anywhere and is what the CPU tests check.
The per-irrep linear mix after the sum stays in torch (:meth:`EdgeTensorProductScatter.mix`).

The segmented tensor product, in cuEquivariance's subscripts ``u,iu,j,ku+ijk``:

* operand 0, the per-edge weights: one segment of ``mul`` numbers per path, in the order of
  :attr:`EdgeTensorProductScatter.paths`: exactly the radial MLP's output layout;
* operand 1, the sender features: one segment (d1, mul) per input block, cuEquivariance's ``ir_mul``
  layout (e3pot's features are e3nn's ``mul_ir``: converted once per call, per atom, before the gather);
* operand 2, the edge harmonics: one segment (2l+1) per l;
* the output: one segment (d3, mul) per path, the layout of the torch path's neighbour sums, so that the
  paths of one (input block, output dimension) group form one (n_paths, d3, mul) block.

Each path's coefficients are e3nn's Wigner 3j symbols times sqrt(d3), the numbers the torch path uses; no
cuEquivariance convention (basis order, normalisation) enters. Gather and scatter are the polynomial's
``input_indices`` (senders, for operand 1) and ``output_indices`` (receivers).

A model is switched to this module (and back) by :func:`e3pot.model.kernels.use_kernels`; nothing of it is
saved: its state dict is that of the torch module (the cuEquivariance constants are non-persistent buffers),
and TorchScript (an export) scripts the torch module in its place.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional

import torch
from e3nn import o3
from torch import Tensor

from e3pot.nn.tensor_product import EdgeTensorProductScatter

METHODS = ("naive", "uniform_1d")


def ops_available() -> bool:
    """Whether cuEquivariance's CUDA kernels (``cuequivariance_ops_torch``) can be imported."""
    try:
        import cuequivariance_ops_torch  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install (missing CUDA libraries) counts as absent
        return False
    return True


def descriptor(conv: EdgeTensorProductScatter):
    """The ``cue.SegmentedPolynomial`` of the edge part of ``conv``: inputs (weights (n_edges, weight_numel),
    features in ``ir_mul`` (n_atoms, irreps_in.dim), harmonics (n_edges, irreps_sh.dim)), output one (d3, mul)
    segment per path."""
    import cuequivariance as cue

    stp = cue.SegmentedTensorProduct.from_subscripts("u,iu,j,ku+ijk")
    for mul, ir in conv.irreps_in:
        stp.add_segment(1, (ir.dim, mul))
    for _, ir in conv.irreps_sh:
        stp.add_segment(2, (ir.dim,))
    for b, j, ir_out in conv.paths:
        mul, ir_in = conv.irreps_in[b]
        w3j = o3.wigner_3j(ir_in.l, conv.irreps_sh[j].ir.l, ir_out.l, dtype=torch.float64)  # (d1, d2, d3)
        # the weight and output segments are new, one per path, in the order of conv.paths
        stp.add_path(None, b, j, None, c=(w3j * math.sqrt(ir_out.dim)).numpy(), dims={"u": mul})
    return cue.SegmentedPolynomial.eval_last_operand(stp)


def _constants_not_saved(module: torch.nn.Module) -> None:
    """Mark every buffer under ``module`` non-persistent: they are rebuilt from the irreps, never stored."""
    for m in module.modules():
        m._non_persistent_buffers_set.update(m._buffers.keys())


class CueqEdgeConvolution(EdgeTensorProductScatter):
    """:class:`EdgeTensorProductScatter` with its edge part computed by cuEquivariance.

    Args:
        conv: the convolution to run; its ``weight`` (the output mix) and ``cg`` are shared, not copied, so that
            the result has no parameters of its own and an optimiser of the model keeps working.
        method: ``None`` (default): ``uniform_1d`` for inputs on a GPU when ``cuequivariance_ops_torch`` is
            installed, ``naive`` otherwise; ``"naive"`` everywhere; or ``"uniform_1d"`` (needs the CUDA
            kernels, CUDA inputs, and the same multiplicity in every input block, as every e3pot model has).
    """

    def __init__(self, conv: EdgeTensorProductScatter, method: Optional[str] = None):
        if method is not None and method not in METHODS:
            raise ValueError(f"unknown cuEquivariance method {method!r}; use one of {', '.join(METHODS)} or None")
        with torch.random.fork_rng(devices=[]):  # its own weight and cg are replaced below
            super().__init__(conv.irreps_in, conv.irreps_sh, conv.irreps_out, conv.norm)
        self.weight = conv.weight
        self.cg = conv.cg
        self.method = method
        import cuequivariance_torch as cuet

        polynomial = descriptor(self)
        self.naive = cuet.SegmentedPolynomial(polynomial, method="naive")
        self.fused: Optional[torch.nn.Module] = None
        uniform = len({mul for mul, _ in self.irreps_in}) == 1
        if method == "uniform_1d":
            if not ops_available():
                raise ValueError("method 'uniform_1d' needs cuEquivariance's CUDA kernels: pip install "
                                 "cuequivariance-ops-torch-cu12 (or cu13), on a machine with a GPU")
            if not uniform:
                raise ValueError(f"method 'uniform_1d' needs one multiplicity in every input block, "
                                 f"not {self.irreps_in}")
        if method != "naive" and uniform and ops_available():
            self.fused = cuet.SegmentedPolynomial(polynomial, method="uniform_1d")
        _constants_not_saved(self)
        self.to(device=conv.weight.device)
        # per group of paths: (n_paths, d3, mul) of its block of the output
        self.sum_sizes = [n * d3 * self.in_mul[b] for n, d3, b in zip(self.n_paths, self.d3s, self.block_of)]
        self.transposed = [b for b, d in enumerate(self.in_dim) if d > 1]

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}, method={self.method or 'auto'}"

    def ir_mul(self, x: Tensor) -> Tensor:
        """Features (n, irreps_in.dim) from e3nn's ``mul_ir`` layout into cuEquivariance's ``ir_mul``."""
        if not self.transposed:
            return x
        blocks: List[Tensor] = []
        for b in range(len(self.in_mul)):
            block = x[:, self.in_start[b]:self.in_stop[b]]
            if self.in_dim[b] > 1:
                block = block.reshape(-1, self.in_mul[b], self.in_dim[b]).transpose(1, 2).reshape(block.shape)
            blocks.append(block)
        return torch.cat(blocks, dim=1)

    def polynomial(self, x: Tensor) -> torch.nn.Module:
        """The cuEquivariance module that runs on ``x``'s device: the CUDA kernel when there is one."""
        if self.fused is not None and x.is_cuda:
            return self.fused
        if self.method == "uniform_1d":
            raise ValueError("method 'uniform_1d' runs on CUDA tensors only")
        return self.naive

    def forward(self, x: Tensor, sh: Tensor, weight: Tensor, sender: Tensor, receiver: Tensor,
                n_out: int = -1) -> Tensor:
        # as EdgeTensorProductScatter.forward: x (n_atoms, irreps_in.dim), sh (n_edges, irreps_sh.dim),
        # weight (n_edges, weight_numel), sender/receiver (n_edges,) -> (n_out, irreps_out.dim)
        n_atoms = x.shape[0] if n_out < 0 else n_out
        if sender.shape[0] == 0:  # the naive method reads an empty index as no index
            out = x.new_zeros((n_atoms, sum(self.sum_sizes)))
        else:
            indices: Dict[int, Tensor] = {1: sender}
            out = self.polynomial(x)([weight, self.ir_mul(x), sh], input_indices=indices,
                                     output_shapes={0: x.new_empty((n_atoms, 0))}, output_indices={0: receiver})[0]
        sums = [s.reshape(n_atoms, n, d3, self.in_mul[b])  # (n_atoms, n_paths, d3, mul)
                for s, n, d3, b in zip(torch.split(out, self.sum_sizes, dim=1), self.n_paths, self.d3s, self.block_of)]
        return self.mix(sums, n_atoms)

    def __deepcopy__(self, memo):
        # cuEquivariance's modules deep-copy by rebuilding themselves on the CPU; rebuild here, on the
        # weight's device, so that a copy of a model on a GPU runs there
        new = CueqEdgeConvolution(self, self.method)
        memo[id(self)] = new
        new.weight = copy.deepcopy(self.weight, memo)
        new.cg = self.cg.clone()
        new.train(self.training)
        return new

    def __prepare_scriptable__(self):
        # TorchScript (exports) gets the torch module: an export runs wherever torch runs
        return torch_convolution(self)


def torch_convolution(conv: EdgeTensorProductScatter) -> EdgeTensorProductScatter:
    """``conv`` as the plain torch module (itself if it is one), sharing its ``weight`` and ``cg``."""
    if type(conv) is EdgeTensorProductScatter:
        return conv
    with torch.random.fork_rng(devices=[]):
        plain = EdgeTensorProductScatter(conv.irreps_in, conv.irreps_sh, conv.irreps_out, conv.norm)
    plain.weight = conv.weight
    plain.cg = conv.cg
    return plain.train(conv.training)
