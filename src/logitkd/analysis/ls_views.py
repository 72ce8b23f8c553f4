"""Views of logit standardization (Sun et al., "Logit Standardization in KD", CVPR 2024, poster).

Two pictures show why a shared temperature over-constrains the student:

* the **bivariate histogram of per-sample logit mean and std**: for each sample ``i`` with logits
  ``z_i`` over ``K`` classes, ``m_i = mean_k z_ik`` and ``s_i = std_k z_ik`` (population std,
  as the z-score of :func:`logitkd.zscore`). A student trained with plain KD is pushed to the
  teacher's ``(m, s)`` cloud; with LS it keeps its own scale and only matches the relations;
* the **heatmap of the average teacher–student logit difference**: with labels ``y_i``, entry
  ``(c, k)`` is ``mean_{i : y_i = c} (z^T_ik - z^S_ik)`` (per class pair: true class × logit),
  or without labels the per-class mean over all samples. ``standardize=True`` compares the
  z-scored logits instead, which is what LS asks the student to match.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from logitkd._checks import check_logits, check_same_shape, check_target
from logitkd.standardization import zscore, zscore_stats

__all__ = [
    "difference_heatmap",
    "logit_difference",
    "logit_mean_std",
    "mean_std_histogram",
]


def logit_mean_std(logits: Tensor, correction: int = 0) -> tuple[Tensor, Tensor]:
    """Per-sample mean and std over the class dim of ``(N, C)`` logits, as float64 ``(N,)``."""
    check_logits("logits", logits, allow_neg_inf=False)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if correction not in (0, 1):
        raise ValueError(f"correction must be 0 or 1, got {correction!r}")
    mean, std = zscore_stats(logits.detach().double(), correction)
    return mean.squeeze(-1), std.squeeze(-1)


def mean_std_histogram(
    logits_by_model: Mapping[str, Tensor],
    path: str | Path,
    *,
    bins: int = 40,
    title: str = "Per-sample logit mean and std",
) -> Path:
    """One bivariate histogram (mean on x, std on y) per model, on shared axes; writes a PNG."""
    from logitkd.analysis.plots import hist2d_panels

    if not logits_by_model:
        raise ValueError("logits_by_model must name at least one model")
    panels = {}
    for name, logits in logits_by_model.items():
        mean, std = logit_mean_std(logits)
        panels[name] = (mean.numpy(), std.numpy())
    return hist2d_panels(
        panels, path, xlabel="logit mean", ylabel="logit std", bins=bins, title=title
    )


def logit_difference(
    teacher_logits: Tensor,
    student_logits: Tensor,
    labels: Tensor | None = None,
    *,
    standardize: bool = False,
) -> Tensor:
    """Average teacher − student logit difference (module docstring), float64.

    With ``labels`` ``(N,)``: a ``(C, C)`` matrix, row = true class, column = logit index; a class
    without samples gives a NaN row. Without labels: a ``(C,)`` vector averaged over all samples.
    """
    check_logits("teacher_logits", teacher_logits, allow_neg_inf=False)
    check_logits("student_logits", student_logits, allow_neg_inf=False)
    check_same_shape("teacher_logits", teacher_logits, "student_logits", student_logits)
    if teacher_logits.ndim != 2 or teacher_logits.shape[0] == 0:
        raise ValueError(f"logits must be non-empty (N, C), got {tuple(teacher_logits.shape)}")
    t = teacher_logits.detach().double()
    s = student_logits.detach().double()
    if standardize:
        t, s = zscore(t), zscore(s)
    diff = t - s
    if labels is None:
        return diff.mean(dim=0)
    check_target(labels, teacher_logits.shape, name="labels")
    if bool((labels < 0).any()):  # check_target lets ignore_index (-100) through
        raise ValueError("labels must be class indices >= 0 (no ignored positions here)")
    num_classes = diff.shape[1]
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    sums.index_add_(0, labels.cpu(), diff.cpu())
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double().unsqueeze(1)
    return sums / counts  # 0/0 -> NaN for an empty class, as documented


def difference_heatmap(
    differences: Mapping[str, Tensor],
    path: str | Path,
    *,
    title: str = "Average teacher − student logit difference",
) -> Path:
    """Heatmaps of :func:`logit_difference` results (one panel per student), shared diverging
    colour scale centred at 0; a ``(C,)`` vector is drawn as a one-row map."""
    from logitkd.analysis.plots import heatmap_panels

    if not differences:
        raise ValueError("differences must name at least one student")
    panels = {}
    for name, d in differences.items():
        if not isinstance(d, Tensor) or d.ndim not in (1, 2):
            raise ValueError(f"differences[{name!r}] must be a (C,) or (C, C) tensor")
        panels[name] = (d.unsqueeze(0) if d.ndim == 1 else d).detach().cpu().numpy()
    two_d = all(d.ndim == 2 for d in differences.values())
    return heatmap_panels(
        panels,
        path,
        xlabel="logit (class)",
        ylabel="true class" if two_d else "",
        title=title,
    )
