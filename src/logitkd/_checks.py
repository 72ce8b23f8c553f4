"""Input validation shared by every layer.

Each check raises ``TypeError``/``ValueError`` naming the argument and what was expected, so that a
bad call never turns into a silent wrong number.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_floating(name: str, x: Tensor) -> None:
    """Reject non-tensors and integer/bool tensors for an argument that must hold logits."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of logits, got dtype {x.dtype}; "
            f"cast with {name}.float() if these really are logits"
        )
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name} must have shape (..., C) with C >= 1, got {tuple(x.shape)}")


def check_logits(name: str, x: Tensor, allow_neg_inf: bool = True) -> bool:
    """Validate a logits tensor; return whether it holds ``-inf`` entries.

    NaN and ``+inf`` are always rejected. ``-inf`` marks a masked (padded-vocabulary) entry and is
    accepted when ``allow_neg_inf``, but never for a whole row. One ``aminmax`` pass finds all of
    it: NaN propagates into the max, ``+inf`` is the max, ``-inf`` is the min.
    """
    check_floating(name, x)
    if x.numel() == 0:
        return False
    lo, hi = torch.aminmax(x.detach())
    lo_v, hi_v = float(lo), float(hi)
    if hi_v != hi_v or hi_v == float("inf"):
        bad = "NaN" if torch.isnan(x).any() else "+inf"
        raise ValueError(f"{name} contains {bad} values; logits must be finite")
    if lo_v == float("-inf"):
        if not allow_neg_inf:
            raise ValueError(f"{name} contains -inf values; logits must be finite")
        if torch.isneginf(x.detach()).all(dim=-1).any():
            raise ValueError(f"{name} has a row whose entries are all -inf")
        return True
    return False


def check_same_shape(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same number of classes (last dim): "
            f"got {a.shape[-1]} and {b.shape[-1]}"
        )
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_target(
    target: Tensor,
    scores_shape: torch.Size,
    ignore_index: int = -100,
    name: str = "target",
    check_range: bool = True,
) -> Tensor:
    """Validate class indices of shape ``scores_shape[:-1]`` in ``[0, C)`` or ``ignore_index``.

    Returns the boolean mask of non-ignored positions.
    """
    if not isinstance(target, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of class indices, got {type(target).__name__}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"{name} must be an integer tensor of class indices, got dtype {target.dtype}"
        )
    if tuple(target.shape) != tuple(scores_shape[:-1]):
        raise ValueError(
            f"{name} must have shape {tuple(scores_shape[:-1])} (the logits' shape without the class "
            f"dim), got {tuple(target.shape)}"
        )
    num_classes = scores_shape[-1]
    valid = target != ignore_index
    if check_range and target.numel():
        bad = valid & ((target < 0) | (target >= num_classes))
        if bad.any():
            value = int(target[bad].flatten()[0])
            raise ValueError(
                f"{name} holds class index {value} outside [0, {num_classes}) "
                f"(and it is not ignore_index={ignore_index})"
            )
    return valid


def check_positive(name: str, value: float | Tensor) -> None:
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a float or floating-point tensor, got dtype {value.dtype}"
            )
        if not torch.isfinite(value).all() or (value <= 0).any():
            raise ValueError(
                f"{name} must be finite and > 0, got {value.detach().flatten()[:4].tolist()}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (their softmax tails underflow), else the input's dtype."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
