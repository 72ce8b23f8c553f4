"""Turning per-row losses into the reduction a caller asked for."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum", "none"]


def reduce_rows(
    rows: Tensor,
    index: Tensor | None,
    total_rows: int,
    out_shape: torch.Size,
    reduction: str,
    denominator: int | float | Tensor,
) -> Tensor:
    """Reduce per-row losses of the kept rows.

    ``mean`` divides the sum by ``denominator`` (the number of rows that count, or a caller's
    ``num_items_in_batch`` under gradient accumulation; a zero count gives 0, not NaN); ``sum``
    adds; ``none`` scatters the rows back to ``out_shape`` with zeros at ignored/dropped rows.
    """
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        if isinstance(denominator, Tensor):
            return rows.sum() / denominator.to(rows.dtype).clamp_min(1)
        return rows.sum() / max(float(denominator), 1.0)
    if reduction == "none":
        if index is None:
            return rows.reshape(out_shape)
        full = rows.new_zeros(total_rows).index_put((index,), rows)
        return full.reshape(out_shape)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
