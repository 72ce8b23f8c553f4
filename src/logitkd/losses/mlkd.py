"""Multi-level logit distillation (Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023).

The student's predictions are aligned with the teacher's at three levels, each at several
temperatures ``T in {2, 3, 4, 5, 6}`` ("prediction augmentation") and on a weakly and a strongly
augmented view of the same batch. With ``P = softmax(z / T)`` the ``(B, C)`` prediction matrix of
a view::

    instance:  l_i  = T^2 KL(p^T_i || p^S_i)                            (per sample)
    batch:     G    = P P^T   (B x B),  L_batch = 1/B  sum_ij m_i m_j (G^T_ij - G^S_ij)^2
    class:     M    = P^T P   (C x C),  L_class = 1/C  sum_ab c_a c_b (M^T_ab - M^S_ab)^2

Confidence masks come from the weak-view teacher at ``T = 1``: ``m_i = 1`` when sample ``i``'s
top probability is ``<=`` the batch median, and ``c_a = 1`` when class ``a``'s summed
probability over the batch is ``<=`` the median over classes (the direction of the official
code's ``.le``; its ``np.percentile(., 50)`` is a linear-interpolation median, as
``torch.quantile``). The loss::

    instance = sum_T [ 1/B sum_i m_i l_i(weak)  +  1/B sum_i l_i(strong) ]
    batch    = sum_T L_batch(weak)
    class    = sum_T L_class(weak)

The module weights each by ``kd_weight`` (0.9) and adds ``ce_weight`` (0.1) times the cross
entropy of *each* view; these are mdistiller's ``CFG.KD`` defaults, which the official MLKD
configs (``configs/cifar100/ours/*.yaml``) do not override. The LS paper's MLKD runs use KD
weight 9 and base temperature 2.

With ``loca_alpha`` the instance-level teacher probabilities are LoCa-calibrated toward the label
(the relational Gram terms use the raw teacher); with ``standardize`` every softmax here sees
``zscore(z, T)`` instead of ``z / T``. The masks always use the raw weak-view teacher at ``T = 1``.

Differences from the official code (Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/distillers/KD_ours.py``; identical in the LS fork's ``MLKD.py``), deliberate:

* **Masking.** The code computes ``(kd_loss(...) * mask).mean()`` with ``kd_loss`` already
  reduced to a batch *mean* (its ``reduce=False`` is commented out): the 0-dim loss is broadcast
  over the ``(B,)`` mask, so the "mask" only multiplies the whole term by the kept fraction
  (~1/2) and every sample still contributes. The same holds for ``bc_loss * mask`` and
  ``cc_loss * class_conf_mask``. Here the mask acts per sample (per pair of samples for the
  batch Gram, per pair of classes for the class Gram): a masked sample contributes nothing to
  the masked terms. The instance term keeps the code's intended ``reduce=False`` normalisation
  (``mean`` over the whole batch of the masked per-sample losses); the Gram terms keep the
  code's ``/ B`` and ``/ C``.
* **Views.** In the code's strong-view instance term, the ``T = 2`` and ``T = 6`` entries use
  ``logits_student_weak`` and ``logits_teacher_weak``; only ``T = 4, 3, 5`` use the strong
  view. Here every temperature compares strong-view student with strong-view teacher.
* **Kept as in the code:** the strong-view batch and class terms (``loss_bc_strong``,
  ``loss_cc_strong``) are computed there but never added to the returned losses, and the
  strong-view instance term is unmasked; we optimise the same set of terms. The temperatures are
  summed, not averaged.
* **LS fork.** ``--logit-stand`` sets ``TEMPERATURE = base_temp`` (2), so its temperature set is
  ``{2, 3, 5, 2, 6}`` (2 twice, 4 missing), and it z-scores (Bessel std) only the instance
  term; here ``temperatures`` is taken as given and ``standardize`` applies to every level
  (population std, the LS paper's Algorithm 1).

MLKD works on a batch of classifier outputs: logits must be ``(B, C)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from logitkd._checks import check_logits, check_positive, compute_dtype
from logitkd.calibration import check_loca_alpha
from logitkd.losses._base import cross_entropy_term
from logitkd.losses._rows import check_loca
from logitkd.losses.kd import kd_loss
from logitkd.standardization import zscore

__all__ = [
    "MLKD",
    "batch_gram_loss",
    "class_gram_loss",
    "confidence_masks",
    "mlkd_loss",
    "mlkd_terms",
]

DEFAULT_TEMPERATURES: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0)


def _check_2d(name: str, x: Tensor) -> None:
    check_logits(name, x, allow_neg_inf=False)
    if x.dim() != 2:
        raise ValueError(
            f"{name} must have shape (B, C) (MLKD compares samples within a batch), got {tuple(x.shape)}"
        )


def _check_pair(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
    if isinstance(temperatures, (int, float)) or not isinstance(temperatures, Sequence):
        raise TypeError(
            f"temperatures must be a sequence of numbers, got {type(temperatures).__name__}"
        )
    if len(temperatures) == 0:
        raise ValueError("temperatures must not be empty")
    for t in temperatures:
        check_positive("temperatures", t)
    return tuple(float(t) for t in temperatures)


def confidence_masks(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """MLKD's sample and class masks from the (weak-view) teacher at ``T = 1``.

    Returns ``(sample_mask (B,), class_mask (C,))``, boolean: a sample is kept when its top
    probability is ``<=`` the batch median of top probabilities, a class when its probability
    summed over the batch is ``<=`` the median over classes (linear-interpolation median, as the
    official code's ``np.percentile(., 50)``).
    """
    with torch.no_grad():
        p = torch.softmax(teacher_logits.detach().to(compute_dtype(teacher_logits)), dim=-1)
        conf = p.max(dim=-1).values
        class_conf = p.sum(dim=0)
        sample_mask = conf <= torch.quantile(conf, 0.5)
        class_mask = class_conf <= torch.quantile(class_conf, 0.5)
    return sample_mask, class_mask


def _probs(
    logits: Tensor, temperature: float, standardize: bool, correction: int, eps: float
) -> Tensor:
    z = zscore(logits, temperature, correction, eps) if standardize else logits / temperature
    return torch.softmax(z, dim=-1)


def batch_gram_loss(p_s: Tensor, p_t: Tensor, sample_mask: Tensor | None = None) -> Tensor:
    """``1/B sum_ij m_i m_j ((P_T P_T^T) - (P_S P_S^T))_ij^2`` for ``(B, C)`` probabilities."""
    diff = p_t @ p_t.T - p_s @ p_s.T
    sq = diff.square()
    if sample_mask is not None:
        m = sample_mask.to(sq.dtype)
        sq = sq * (m.unsqueeze(0) * m.unsqueeze(1))
    return sq.sum() / p_s.shape[0]


def class_gram_loss(p_s: Tensor, p_t: Tensor, class_mask: Tensor | None = None) -> Tensor:
    """``1/C sum_ab c_a c_b ((P_T^T P_T) - (P_S^T P_S))_ab^2`` for ``(B, C)`` probabilities."""
    diff = p_t.T @ p_t - p_s.T @ p_s
    sq = diff.square()
    if class_mask is not None:
        c = class_mask.to(sq.dtype)
        sq = sq * (c.unsqueeze(0) * c.unsqueeze(1))
    return sq.sum() / p_s.shape[1]


def mlkd_terms(
    student_weak: Tensor,
    teacher_weak: Tensor,
    student_strong: Tensor | None = None,
    teacher_strong: Tensor | None = None,
    target: Tensor | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    loca_alpha: float | None = None,
    standardize: bool = False,
    *,
    confidence_mask: bool = True,
    correction: int = 0,
    eps: float = 1e-7,
) -> dict[str, Tensor]:
    """The three MLKD terms ``{"instance", "batch", "class"}``, unweighted, summed over the
    temperatures; see the module docstring for the equations.

    Args:
        student_weak, teacher_weak: ``(B, C)`` logits of the weakly augmented view.
        student_strong, teacher_strong: ``(B, C)`` logits of the strongly augmented view of the
            same samples (both or neither); they add the strong-view instance term.
        target: ``(B,)`` labels; required with ``loca_alpha``.
        temperatures: the prediction-augmentation temperatures (paper: 2, 3, 4, 5, 6).
        loca_alpha: LoCa shrink factor for the instance-level teacher, or ``None``.
        standardize: z-score logits (``zscore(z, T)``) before every softmax.
        confidence_mask: apply MLKD's teacher-confidence masks (``False``: keep everything).
        correction: z-score std correction (0 population, 1 Bessel).
    """
    _check_2d("student_weak", student_weak)
    _check_2d("teacher_weak", teacher_weak)
    _check_pair("student_weak", student_weak, "teacher_weak", teacher_weak)
    if (student_strong is None) != (teacher_strong is None):
        raise ValueError(
            "student_strong and teacher_strong must be given together (the strong view of the same "
            f"batch), got student_strong={'None' if student_strong is None else 'a tensor'} and "
            f"teacher_strong={'None' if teacher_strong is None else 'a tensor'}"
        )
    if student_strong is not None and teacher_strong is not None:
        _check_2d("student_strong", student_strong)
        _check_2d("teacher_strong", teacher_strong)
        _check_pair("student_strong", student_strong, "teacher_strong", teacher_strong)
        _check_pair("student_strong", student_strong, "student_weak", student_weak)
    temps = _check_temperatures(temperatures)
    check_loca(loca_alpha, target)
    n = student_weak.shape[0]
    if confidence_mask:
        sample_mask, class_mask = confidence_masks(teacher_weak)
    else:
        sample_mask = class_mask = None
    cd = compute_dtype(student_weak)
    s_w = student_weak.to(cd)
    t_w = teacher_weak.detach().to(cd)
    m = None if sample_mask is None else sample_mask.to(cd)
    instance = batch = klass = s_w.new_zeros(())
    for temp in temps:
        kd_kw = {"temperature": temp, "loca_alpha": loca_alpha, "standardize": standardize}
        kd_kw |= {"correction": correction, "eps": eps}
        rows = kd_loss(student_weak, teacher_weak, target, reduction="none", **kd_kw)  # type: ignore[arg-type]
        rows = rows.to(cd)
        instance = instance + (rows if m is None else rows * m).sum() / n
        if student_strong is not None:
            instance = instance + kd_loss(student_strong, teacher_strong, target, **kd_kw).to(cd)  # type: ignore[arg-type]
        p_s = _probs(s_w, temp, standardize, correction, eps)
        p_t = _probs(t_w, temp, standardize, correction, eps)
        batch = batch + batch_gram_loss(p_s, p_t, sample_mask)
        klass = klass + class_gram_loss(p_s, p_t, class_mask)
    return {"instance": instance, "batch": batch, "class": klass}


def mlkd_loss(
    student_weak: Tensor,
    teacher_weak: Tensor,
    student_strong: Tensor | None = None,
    teacher_strong: Tensor | None = None,
    target: Tensor | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    loca_alpha: float | None = None,
    standardize: bool = False,
    **kwargs: object,
) -> Tensor:
    """MLKD distillation loss: ``instance + batch + class`` of :func:`mlkd_terms` (unweighted)."""
    terms = mlkd_terms(
        student_weak,
        teacher_weak,
        student_strong,
        teacher_strong,
        target,
        temperatures,
        loca_alpha,
        standardize,
        **kwargs,  # type: ignore[arg-type]
    )
    return terms["instance"] + terms["batch"] + terms["class"]


class MLKD(nn.Module):
    """MLKD for trainers: ``{"ce", "kd_instance", "kd_batch", "kd_class"}``, already weighted.

    ``ce = ce_weight * (CE(weak) + CE(strong))`` (the strong term only when the strong view is
    passed) and each ``kd_* = kd_weight * term``. Defaults are the official CIFAR-100 recipe
    (mdistiller ``CFG.KD``: CE 0.1, KD 0.9, temperatures 2-6); the LS paper's MLKD+LS runs use
    ``kd_weight=9`` with ``standardize=True``.
    """

    def __init__(
        self,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
        loca_alpha: float | None = None,
        standardize: bool = False,
        confidence_mask: bool = True,
    ) -> None:
        super().__init__()
        self.temperatures = _check_temperatures(temperatures)
        if loca_alpha is not None:
            check_loca_alpha(loca_alpha)
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.loca_alpha = loca_alpha
        self.standardize = standardize
        self.confidence_mask = confidence_mask

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        student_logits_strong: Tensor | None = None,
        teacher_logits_strong: Tensor | None = None,
        **_: object,
    ) -> dict[str, Tensor]:
        if target is None:
            raise ValueError("MLKD needs target (the labels) for its cross-entropy terms")
        terms = mlkd_terms(
            student_logits,
            teacher_logits,
            student_logits_strong,
            teacher_logits_strong,
            target,
            self.temperatures,
            self.loca_alpha,
            self.standardize,
            confidence_mask=self.confidence_mask,
        )
        ce = cross_entropy_term(student_logits, target)
        if student_logits_strong is not None:
            ce = ce + cross_entropy_term(student_logits_strong, target)
        return {
            "ce": self.ce_weight * ce,
            "kd_instance": self.kd_weight * terms["instance"],
            "kd_batch": self.kd_weight * terms["batch"],
            "kd_class": self.kd_weight * terms["class"],
        }

    def extra_repr(self) -> str:
        return (
            f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, "
            f"temperatures={self.temperatures}, loca_alpha={self.loca_alpha}, "
            f"standardize={self.standardize}, confidence_mask={self.confidence_mask}"
        )
