"""Scatter-sum on torch's own ``index_add_`` (as fast as torch-scatter on CPU, and no extra wheel)."""
from __future__ import annotations

import torch
from torch import Tensor


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` (n, ...) into ``dim_size`` rows by ``index`` (n,)."""
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)
