"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

KD splits into a target-class term and a non-target term, re-weighted::

    DKD = alpha * TCKD + beta * NCKD
    TCKD = T^2 * KL([p_gt, 1 - p_gt]^T || [q_gt, 1 - q_gt]^S)          (binary)
    NCKD = T^2 * KL(p_hat^T || p_hat^S),  p_hat_i = p_i / sum_{j != gt} p_j  (i != gt)

each averaged over rows ("batchmean"). With ``loca_alpha`` the teacher's probabilities are
LoCa-calibrated first; LoCa scales every non-target entry by the same factor, so ``p_hat`` and
NCKD are unchanged and only TCKD moves. With ``standardize`` both sides are z-scored
(``zscore(x, T)``) instead of divided by ``T``.

Defaults (the paper and mdistiller): alpha 1, beta 8 (2 for resnet56->resnet20 and
resnet110->resnet32, 6 for the WRN and vgg13 pairs), T=4, a linear warm-up of the DKD weight over
the first 20 epochs, CE weight 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitkd.calibration import check_loca_alpha
from logitkd.losses._base import cross_entropy_term, linear_warmup
from logitkd.losses._reduce import reduce_rows
from logitkd.losses._rows import (
    _loca_apply,
    check_loca,
    check_temperature,
    prepare_rows,
    scale_logits,
)

__all__ = ["DKD", "dkd_loss", "dkd_terms"]


def _binary_log(log_probs: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """``(log p_gt, log(1 - p_gt))`` per row, the latter as a stable logsumexp over non-targets."""
    lp_gt = log_probs.gather(-1, gt).squeeze(-1)
    lp_rest = torch.logsumexp(log_probs.scatter(-1, gt, float("-inf")), dim=-1)
    return lp_gt, lp_rest


def _xlogy_diff(a: Tensor, log_a: Tensor, log_b: Tensor) -> Tensor:
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a))


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    temperature: float | Tensor = 4.0,
    loca_alpha: float | None = None,
    standardize: bool = False,
    ignore_index: int = -100,
    *,
    correction: int = 0,
    eps: float = 1e-7,
    check_inputs: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(TCKD, NCKD)``, each ``T^2 * mean over non-ignored rows``; see the module docstring."""
    check_temperature(temperature)
    check_loca(loca_alpha, target)
    if target is None:
        raise ValueError(
            "dkd_loss needs target (the labels) to split target and non-target classes"
        )
    rows = prepare_rows(student_logits, teacher_logits, target, ignore_index, check_inputs)
    s, t, y = rows.student, rows.teacher, rows.target
    n = s.shape[0]
    if n == 0:
        zero = s.sum() * 0.0
        return zero, zero
    cd = torch.float64 if s.dtype == torch.float64 else torch.float32
    temp = temperature.to(cd).reshape(-1, 1) if isinstance(temperature, Tensor) else temperature
    if isinstance(temp, Tensor) and temp.shape[0] > 1 and rows.index is not None:
        temp = temp[rows.index]
    z_s = scale_logits(s.to(cd), temp, standardize, correction, eps)
    z_t = scale_logits(t.to(cd), temp, standardize, correction, eps)
    log_q = F.log_softmax(z_s, dim=-1)
    log_p = F.log_softmax(z_t, dim=-1)
    gt = y.unsqueeze(-1)
    # TCKD on the binary (target, rest) split.
    lq_gt, lq_rest = _binary_log(log_q, gt)
    lp_gt, lp_rest = _binary_log(log_p, gt)  # the teacher's own split, also NCKD's normaliser
    lp_rest_raw = lp_rest
    if loca_alpha is not None:
        p_cal = _loca_apply(log_p.exp(), y, loca_alpha)
        b_gt = p_cal.gather(-1, gt).squeeze(-1)
        b_rest = (1.0 - b_gt).clamp_min(0.0)
        lp_gt = torch.log(b_gt.clamp_min(torch.finfo(cd).tiny))
        lp_rest = torch.log(b_rest.clamp_min(torch.finfo(cd).tiny))
    else:
        b_gt, b_rest = lp_gt.exp(), lp_rest.exp()
    tckd_rows = _xlogy_diff(b_gt, lp_gt, lq_gt) + _xlogy_diff(b_rest, lp_rest, lq_rest)
    # NCKD on the renormalised non-target distributions (LoCa leaves these unchanged).
    log_q_nt = log_q.scatter(-1, gt, float("-inf")) - lq_rest.unsqueeze(-1)
    log_p_nt = log_p.scatter(-1, gt, float("-inf")) - lp_rest_raw.unsqueeze(-1)
    p_nt = log_p_nt.exp()
    # Select before multiplying: the target column holds -inf - -inf = NaN, and a NaN in the
    # unselected branch of where() would still poison a learnable temperature's gradient.
    nt_diff = torch.where(p_nt > 0, log_p_nt - log_q_nt, torch.zeros_like(p_nt))
    nckd_rows = (p_nt * nt_diff).sum(-1)
    t2 = temp * temp
    if isinstance(t2, Tensor):
        t2 = t2.reshape(-1)
    shape = student_logits.shape[:-1]
    tckd = reduce_rows(tckd_rows.clamp_min(0) * t2, rows.index, rows.total_rows, shape, "mean", n)
    nckd = reduce_rows(nckd_rows.clamp_min(0) * t2, rows.index, rows.total_rows, shape, "mean", n)
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float | Tensor = 4.0,
    loca_alpha: float | None = None,
    standardize: bool = False,
    ignore_index: int = -100,
    **kwargs: object,
) -> Tensor:
    """Decoupled KD: ``alpha * TCKD + beta * NCKD`` (Zhao et al., CVPR 2022, eq. 7)."""
    tckd, nckd = dkd_terms(
        student_logits,
        teacher_logits,
        target,
        temperature,
        loca_alpha,
        standardize,
        ignore_index,
        **kwargs,  # type: ignore[arg-type]
    )
    return alpha * tckd + beta * nckd


class DKD(nn.Module):
    """DKD for trainers: ``{"ce": w_ce * CE, "dkd": warmup * (alpha TCKD + beta NCKD)}``.

    ``warmup_epochs`` ramps the DKD term linearly, ``min(epoch / warmup_epochs, 1)``, as in
    mdistiller (pass ``epoch`` to ``forward``; 1-based epochs reach full weight at
    ``warmup_epochs``).
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        loca_alpha: float | None = None,
        standardize: bool = False,
        ignore_index: int = -100,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        if loca_alpha is not None:
            check_loca_alpha(loca_alpha)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.ce_weight = ce_weight
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.loca_alpha = loca_alpha
        self.standardize = standardize
        self.ignore_index = ignore_index
        # False skips the NaN/inf and label-range scans (a host sync per step on a GPU).
        self.check_inputs = check_inputs

    def warmup_factor(self, epoch: float | None) -> float:
        return linear_warmup(epoch, self.warmup_epochs)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        epoch: float | None = None,
        **_: object,
    ) -> dict[str, Tensor]:
        ce = cross_entropy_term(student_logits, target, self.ignore_index)
        dkd = dkd_loss(
            student_logits,
            teacher_logits,
            target,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            loca_alpha=self.loca_alpha,
            standardize=self.standardize,
            ignore_index=self.ignore_index,
            check_inputs=self.check_inputs,
        )
        return {"ce": self.ce_weight * ce, "dkd": self.warmup_factor(epoch) * dkd}
