"""Hinton knowledge distillation (Hinton, Vinyals, Dean 2015) with LoCa and logit standardization.

``kd_loss = T^2 * mean over rows of KL(p_T || p_S)``, ``p = softmax(logits / T)``, or
``softmax(zscore(logits, T))`` on both sides with ``standardize=True`` (Sun et al., CVPR 2024).
With ``loca_alpha`` the teacher's ``p_T`` is LoCa-calibrated toward the label first
(arXiv 2409.04778); with ``drop_misinstructed`` mis-instructed rows are left out (LoCa's "KD*").

Defaults from the papers and their code: CIFAR-100 T=4, CE 0.1, KD 0.9; ImageNet T=1, CE 0.5,
KD 0.5; logit standardization on CIFAR-100 base T=2, KD weight 9, CE 0.1; LoCa alpha 0.95/0.98
on CIFAR-100 and 0.99/0.995 on ImageNet.
"""

from __future__ import annotations

from torch import Tensor, nn

from logitkd.calibration import check_loca_alpha
from logitkd.losses._base import cross_entropy_term
from logitkd.losses._reduce import reduce_rows
from logitkd.losses._rows import (
    DIVERGENCES,
    _FusedForwardKL,
    check_loca,
    check_student_support,
    check_temperature,
    divergence_rows,
    prepare_rows,
)

__all__ = ["KD", "kd_loss"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    temperature: float | Tensor = 4.0,
    loca_alpha: float | None = None,
    standardize: bool = False,
    drop_misinstructed: bool = False,
    ignore_index: int = -100,
    *,
    divergence: str = "forward_kl",
    reduction: str = "mean",
    num_items_in_batch: int | Tensor | None = None,
    correction: int = 0,
    eps: float = 1e-7,
    jsd_beta: float = 0.5,
    check_inputs: bool = True,
) -> Tensor:
    """Knowledge-distillation loss ``T^2 * mean_rows KL(p_T || p_S)``.

    Args:
        student_logits: ``(N, C)`` or token logits ``(B, T, V)``; gradients flow to it.
        teacher_logits: same shape; treated as constant (detached).
        target: labels ``(N,)`` / ``(B, T)``; needed for ``loca_alpha`` and
            ``drop_misinstructed``; positions equal to ``ignore_index`` are left out.
        temperature: ``T > 0``; a float, or a tensor (scalar or per-row, may require grad, as
            CTKD's learnable temperature). With ``standardize`` it is the z-score's base ``tau``.
        loca_alpha: LoCa's shrink factor ``0 < alpha < 1`` (calibrate the teacher toward the
            label on mis-instructed rows), or ``None``.
        standardize: z-score both sides' logits (``zscore(x, T)``) before the softmax.
        drop_misinstructed: leave out rows the teacher mis-instructs ("KD*", LoCa Table 1); the
            mean is then over the kept rows.
        divergence: ``"forward_kl"`` (default), ``"reverse_kl"`` ``KL(p_S || p_T)`` or
            ``"jsd"`` (generalised JSD with ``jsd_beta``).
        reduction: ``"mean"`` over non-ignored (kept) rows, ``"sum"``, or ``"none"`` (per-row
            losses shaped like ``target``, zero where ignored/dropped).
        num_items_in_batch: with ``reduction="mean"``, divide the sum by this instead (the
            non-ignored token count of the whole accumulated batch, as Hugging Face passes it).
        correction: z-score std correction (0 population, 1 Bessel).
        check_inputs: validate logits for NaN/+inf (one ``aminmax`` pass each).

    The common case (forward KL, numeric temperature) runs a fused autograd function whose LoCa
    overhead is a single ``max`` over the classes; see :mod:`logitkd.losses._rows`.
    """
    check_temperature(temperature)
    check_loca(loca_alpha, target)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    rows = prepare_rows(
        student_logits, teacher_logits, target, ignore_index, check_inputs, drop_misinstructed
    )
    if rows.student_neg_inf and check_inputs:
        check_student_support(rows.student, rows.teacher)
    denominator = rows.student.shape[0] if num_items_in_batch is None else num_items_in_batch
    if rows.student.shape[0] == 0:
        per_row = rows.student.sum(dim=-1) * 0.0
    elif (
        divergence == "forward_kl"
        and not isinstance(temperature, Tensor)
        and not (standardize and rows.student_neg_inf)
    ):
        per_row = _FusedForwardKL.apply(
            rows.student,
            rows.teacher,
            rows.target,
            float(temperature),
            loca_alpha,
            standardize,
            correction,
            eps,
            rows.teacher_neg_inf,
        )
    else:
        temp = temperature
        if isinstance(temp, Tensor) and temp.dim() >= 1 and temp.numel() > 1:
            temp = temp.reshape(-1)
            if rows.index is not None:
                temp = temp[rows.index]
        per_row = divergence_rows(
            rows.student,
            rows.teacher,
            rows.target,
            temp,
            loca_alpha,
            standardize,
            divergence,
            correction,
            eps,
            jsd_beta,
        )
    out_shape = student_logits.shape[:-1]
    return reduce_rows(per_row, rows.index, rows.total_rows, out_shape, reduction, denominator)


class KD(nn.Module):
    """Hinton KD as a trainer-facing module: returns ``{"ce": w_ce * CE, "kd": w_kd * KD}``.

    Defaults are the mdistiller CIFAR-100 recipe (T=4, CE 0.1, KD 0.9); for ImageNet use T=1,
    CE 0.5, KD 0.5; with ``standardize=True`` the LS paper uses T=2, KD weight 9, CE 0.1.
    """

    def __init__(
        self,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        temperature: float = 4.0,
        loca_alpha: float | None = None,
        standardize: bool = False,
        drop_misinstructed: bool = False,
        ignore_index: int = -100,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        if loca_alpha is not None:
            check_loca_alpha(loca_alpha)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.temperature = temperature
        self.loca_alpha = loca_alpha
        self.standardize = standardize
        self.drop_misinstructed = drop_misinstructed
        self.ignore_index = ignore_index
        # False skips the NaN/inf and label-range scans (a host sync per step on a GPU).
        self.check_inputs = check_inputs

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor, **_: object
    ) -> dict[str, Tensor]:
        ce = cross_entropy_term(student_logits, target, self.ignore_index)
        kd = kd_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            loca_alpha=self.loca_alpha,
            standardize=self.standardize,
            drop_misinstructed=self.drop_misinstructed,
            ignore_index=self.ignore_index,
            check_inputs=self.check_inputs,
        )
        return {"ce": self.ce_weight * ce, "kd": self.kd_weight * kd}

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, T={self.temperature}, "
            f"loca_alpha={self.loca_alpha}, standardize={self.standardize}, "
            f"drop_misinstructed={self.drop_misinstructed}"
        )
