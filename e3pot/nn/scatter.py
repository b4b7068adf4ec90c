"""Scatter-sum on torch's own ``index_add_`` (as fast as torch-scatter on CPU, and no extra wheel)."""
from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` (n, ...) into ``dim_size`` rows by ``index`` (n,)."""
    if dim_size == 1:
        # One target row: a plain sum. (Inductor's CPU code generator also fails on an
        # ``index_add_`` into a single row, torch 2.13.)
        return src.sum(0, keepdim=True)
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)
