"""Small pieces every trainer-facing loss module shares."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from logitkd._checks import compute_dtype


def cross_entropy_term(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy over non-ignored rows of ``(..., C)`` logits, in float32 or wider."""
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(
        flat.to(compute_dtype(flat)), target.reshape(-1), ignore_index=ignore_index
    )


def linear_warmup(epoch: float | None, warmup_epochs: float) -> float:
    """``min(epoch / warmup_epochs, 1)``: mdistiller's DKD warm-up (1 when no epoch is given)."""
    if epoch is None or warmup_epochs <= 0:
        return 1.0
    return min(float(epoch) / warmup_epochs, 1.0)
