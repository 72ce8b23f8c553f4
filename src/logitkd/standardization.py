"""Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

Pure tensor math. Algorithm 1 of the paper z-scores each row of logits before the softmax, so the
student only has to match the teacher's logit *relations*, not its scale::

    Z(x; tau) = (x - mean(x)) / (std(x) + eps) / tau

With the population std (``correction=0``), every entry obeys ``|Z| <= sqrt(K - 1) / tau``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from logitkd._checks import check_floating

__all__ = ["zscore", "zscore_stats"]


def zscore_stats(
    logits: Tensor, correction: int = 0, finite: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Row mean and std (with ``keepdim``) over the last dim, leaving out masked entries.

    ``finite`` is the boolean mask of entries to use (``None``: all of them). ``correction`` is
    the std's degrees-of-freedom correction: 0 = population std (paper), 1 = Bessel (official code).
    """
    if finite is None:
        std, mean = torch.std_mean(logits, dim=-1, correction=correction, keepdim=True)
        return mean, std
    count = finite.sum(dim=-1, keepdim=True).to(logits.dtype)
    x0 = torch.where(finite, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    mean = x0.sum(dim=-1, keepdim=True) / count
    dev = torch.where(
        finite, logits - mean, torch.zeros((), dtype=logits.dtype, device=logits.device)
    )
    var = dev.square().sum(dim=-1, keepdim=True) / (count - correction).clamp_min(1)
    return mean, var.sqrt()


def zscore(
    logits: Tensor, tau: float | Tensor = 1.0, correction: int = 0, eps: float = 1e-7
) -> Tensor:
    """Z-score logits over the last dim: ``(x - mean) / (std + eps) / tau`` (Algorithm 1).

    ``tau`` is the base temperature (a number, or a tensor broadcastable to ``(..., 1)`` such as a
    per-sample learnable CTKD temperature). ``correction=0`` uses the population std, as the
    paper's Algorithm 1 and its bound ``|z| <= sqrt(K-1)/tau``; ``correction=1`` reproduces the
    official code's Bessel-corrected ``torch.std``. Entries equal to ``-inf`` (a padded
    vocabulary) are left out of the mean and std and stay ``-inf``. Differentiable.
    """
    check_floating("logits", logits)
    if correction not in (0, 1):
        raise ValueError(f"correction must be 0 (population std) or 1 (Bessel), got {correction}")
    if isinstance(tau, Tensor):
        if (tau <= 0).any():
            raise ValueError("tau must be > 0")
    elif not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    neg_inf = torch.isneginf(logits)
    if bool(neg_inf.any()):
        finite = ~neg_inf
        mean, std = zscore_stats(logits, correction, finite)
        # Masked entries sit at the mean before scaling, so no inf/inf or inf*0 reaches autograd.
        z = (torch.where(finite, logits, mean) - mean) / (std + eps) / tau
        return z.masked_fill(neg_inf, float("-inf"))
    mean, std = zscore_stats(logits, correction)
    return (logits - mean) / (std + eps) / tau
