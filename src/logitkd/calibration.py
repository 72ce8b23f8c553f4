"""LoCa — Logit Calibration (Yang, Wu, Yang; arXiv 2409.04778), and mis-instruction detection.

Pure tensor math: no modules, no training code.

A teacher *mis-instructs* a sample when its top prediction is not the label. LoCa then calibrates
the teacher's probabilities ``p`` (a softmax at the distillation temperature) before the KD loss
(paper, eqs. 14-18)::

    sigma = 1 / (1 - p_gt + p_max)            s = alpha * sigma
    p'_i  = s * p_i                 (i != gt)
    p'_gt = 1 - s * sum_{i != gt} p_i

For ``0 < alpha < 1`` the calibrated row sums to 1, its argmax is the label
(``p'_gt - s p_max = 1 - alpha > 0``), every ratio between two non-target classes is kept, and
entries stay strictly positive where the input is. Correctly instructed rows pass unchanged.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from logitkd._checks import check_floating, check_target, compute_dtype

__all__ = [
    "check_loca_alpha",
    "loca_calibrate",
    "loca_scale",
    "misinstruction_mask",
    "misinstruction_ratio",
]


def misinstruction_mask(scores: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """True where ``argmax(scores, -1) != target``; False at ignored positions.

    ``scores`` may be logits or probabilities (the argmax is the same), shape ``(..., C)``;
    ``target`` has shape ``(...)``. A tie for the top score counts as the first index, as
    ``torch.argmax`` resolves it.
    """
    check_floating("scores", scores)
    valid = check_target(target, scores.shape, ignore_index)
    return (scores.argmax(dim=-1) != target) & valid


def misinstruction_ratio(scores: Tensor, target: Tensor, ignore_index: int = -100) -> float:
    """Fraction of non-ignored positions that the teacher mis-instructs (LoCa Fig. 2)."""
    mask = misinstruction_mask(scores, target, ignore_index)
    n = int((target != ignore_index).sum())
    return float(mask.sum()) / n if n else 0.0


def check_loca_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float in (0, 1), got {type(alpha).__name__}")
    if not alpha > 0 or alpha == float("inf"):
        raise ValueError(
            f"alpha must be > 0 (LoCa's shrink factor, typically 0.9-0.995), got {alpha}"
        )
    if alpha >= 1:
        warnings.warn(
            f"loca alpha={alpha} >= 1: the calibrated teacher is no longer guaranteed to rank the "
            "label first (LoCa needs 0 < alpha < 1); a target pushed below zero is clipped to 0 "
            "and the row renormalised",
            stacklevel=3,
        )


def loca_scale(
    p_gt: Tensor, p_max: Tensor, mis: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row LoCa coefficients from the label's and the top probability.

    Returns ``(coef, new_gt, renorm)`` such that the calibrated row is
    ``coef * p`` off the label and ``new_gt`` at the label, where
    ``coef = s / renorm`` on mis-instructed rows (``s = alpha / (1 - p_gt + p_max)``) and 1
    elsewhere. ``renorm`` is 1 unless ``alpha >= 1`` pushed the target below zero, in which case
    the target is clipped to 0 and the row divided by ``s * (1 - p_gt)`` so it still sums to 1.
    Inputs are per-row tensors of shape ``(N,)``; this is the one place the equation lives, shared
    by :func:`loca_calibrate` and the fused losses.
    """
    s = alpha / (1.0 - p_gt + p_max)
    off_mass = s * (1.0 - p_gt)  # sum of the calibrated non-target entries
    raw_gt = 1.0 - off_mass
    if alpha < 1.0:  # raw_gt >= 1 - alpha > 0: no clipping, fewer small ops on the hot path
        one = torch.ones_like(s)
        return torch.where(mis, s, one), torch.where(mis, raw_gt, p_gt), one
    renorm = torch.where(raw_gt < 0, off_mass, torch.ones_like(off_mass))
    new_gt = raw_gt.clamp_min(0.0) / renorm
    coef = torch.where(mis, s / renorm, torch.ones_like(s))
    new_gt = torch.where(mis, new_gt, p_gt)
    return coef, new_gt, renorm


def loca_calibrate(probs: Tensor, target: Tensor, alpha: float, ignore_index: int = -100) -> Tensor:
    """LoCa calibration of probability rows (arXiv 2409.04778, eqs. 14-18).

    ``probs`` has shape ``(..., C)`` (rows summing to 1), ``target`` shape ``(...)``. On
    mis-instructed rows only (``argmax(p) != target``)::

        s = alpha / (1 - p_gt + p_max);  p'_i = s p_i (i != gt);  p'_gt = 1 - s sum_{i != gt} p_i

    Other rows and rows whose target is ``ignore_index`` are returned unchanged. Computed in
    float32 (float64 for float64 input) whatever the input dtype, without gradient, and returned
    in that compute dtype. ``alpha`` must be > 0; ``alpha >= 1`` warns (the label may lose) and
    clips a negative target to 0, renormalising the row — never a negative probability.
    """
    check_floating("probs", probs)
    check_loca_alpha(alpha)
    valid = check_target(target, probs.shape, ignore_index)
    with torch.no_grad():
        p = probs.detach().to(compute_dtype(probs))
        p_max, arg = p.max(dim=-1)
        tgt = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(-1)
        p_gt = p.gather(-1, tgt).squeeze(-1)
        mis = valid & (arg != target)
        coef, new_gt, _ = loca_scale(p_gt, p_max, mis, alpha)
        out = p * coef.unsqueeze(-1)
        out.scatter_(-1, tgt, new_gt.unsqueeze(-1).to(out.dtype))
        # Ignored rows: the scatter wrote p_gt (coef 1) into column 0, i.e. left them unchanged.
        return out
