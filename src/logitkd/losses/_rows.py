"""Row-wise distillation divergences shared by the loss functions.

Every loss here works on *rows*: a classifier's samples ``(N, C)`` or a language model's tokens
``(B, T, V)`` flattened to ``(B*T, V)``. This module turns the user's tensors into the rows that
count (validated, ignored positions removed) and computes the per-row divergence. Two paths give
the same numbers:

* :class:`_FusedForwardKL` — a custom autograd function for forward KL with a scalar temperature.
  It keeps two ``(N, C)`` buffers for backward and applies LoCa through per-row scalars: on a
  mis-instructed row the calibrated teacher is ``c * p`` off the label and ``g`` at it, so
  ``KL(p' || q) = c (A - p_gt log p_gt + (1 - p_gt) log c) + g log g - c (B - p_gt log q_gt)
  - g log q_gt`` with ``A = sum p log p`` and ``B = sum p log q`` (plain KD's own row sums), and
  the gradient w.r.t. the student's scaled logits is ``q - c p - (g - c p_gt) e_gt``. LoCa
  therefore costs no extra pass over the classes beyond one ``max``.
* :func:`divergence_rows` — plain autograd, for a learnable (tensor) temperature (CTKD), reverse
  KL and JSD, and the rare student with ``-inf`` entries under standardization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from logitkd._checks import (
    check_logits,
    check_positive,
    check_same_shape,
    check_target,
    compute_dtype,
)
from logitkd.calibration import check_loca_alpha, loca_scale
from logitkd.standardization import zscore

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")


@dataclass
class Rows:
    """Validated, flattened rows that enter a loss."""

    student: Tensor  # (n, C), only the rows that count
    teacher: Tensor  # (n, C), detached
    target: Tensor | None  # (n,) or None
    index: Tensor | None  # positions of these rows in the flattened input, None = all rows
    total_rows: int  # rows in the flattened input
    student_neg_inf: bool
    teacher_neg_inf: bool


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """``sum_c a[n, c] * b[n, c]`` (on cache-sized blocks a product and a sum beat einsum)."""
    return (a * b).sum(dim=-1)


def prepare_rows(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None,
    ignore_index: int,
    check_inputs: bool = True,
    drop_misinstructed: bool = False,
) -> Rows:
    """Validate a student/teacher pair and keep the rows that count.

    Rows whose target is ``ignore_index`` are removed, and with ``drop_misinstructed`` so are
    rows where the teacher's argmax differs from the target (LoCa's "KD*" baseline).
    ``check_inputs=False`` skips the value checks (NaN/inf scan, label range), which each cost a
    device-to-host sync on a GPU; logits are then taken to be finite, with no ``-inf`` masks.
    """
    if check_inputs:
        s_inf = check_logits("student_logits", student_logits)
        t_inf = check_logits("teacher_logits", teacher_logits)
    else:
        s_inf = t_inf = False
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    num_classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, num_classes)
    t = teacher_logits.detach().reshape(-1, num_classes)
    total = s.shape[0]
    if target is None:
        if drop_misinstructed:
            raise ValueError(
                "drop_misinstructed=True needs target (the labels) to find mis-instructed rows"
            )
        return Rows(s, t, None, None, total, s_inf, t_inf)
    valid = check_target(
        target, student_logits.shape, ignore_index, check_range=check_inputs
    ).reshape(-1)
    tgt = target.reshape(-1)
    n_valid = int(valid.sum())
    keep = valid
    if drop_misinstructed:
        keep = valid & (t.argmax(dim=-1) == tgt)
    if n_valid == total and not drop_misinstructed:
        return Rows(s, t, tgt, None, total, s_inf, t_inf)
    index = keep.nonzero().squeeze(-1)
    return Rows(s[index], t[index], tgt[index], index, total, s_inf, t_inf)


def check_student_support(s: Tensor, t: Tensor) -> None:
    """A student ``-inf`` (masked class) must be masked in the teacher too, or KL is infinite."""
    bad = torch.isneginf(s) & ~torch.isneginf(t)
    if bad.any():
        raise ValueError(
            "student_logits has -inf where teacher_logits is finite: the student would give zero "
            "probability to a class the teacher uses (infinite KL). Mask the same entries in both."
        )


def scale_logits(
    x: Tensor, temperature: float | Tensor, standardize: bool, correction: int, eps: float
) -> Tensor:
    """``zscore(x, T)`` or ``x / T``; ``-inf`` entries stay ``-inf`` with clean gradients."""
    if standardize:
        return zscore(x, temperature, correction, eps)
    if isinstance(temperature, Tensor) and temperature.requires_grad:
        neg_inf = torch.isneginf(x)
        if bool(neg_inf.any()):
            # d(x/T)/dT at x = -inf would be inf * 0 = NaN for a learnable temperature.
            return (x.masked_fill(neg_inf, 0.0) / temperature).masked_fill(neg_inf, float("-inf"))
    return x / temperature


# Rows per block: about 2**20 elements keeps each block's buffers cache-sized and lets the
# allocator reuse them instead of page-faulting fresh (N, C) tensors, which dominates on CPU.
_BLOCK_ELEMENTS = 1 << 20


def _row_std(xc: Tensor, correction: int) -> Tensor:
    """Row std of centred values from a norm: one reduction and no temporary."""
    return torch.linalg.vector_norm(xc, dim=-1, keepdim=True) / math.sqrt(xc.shape[-1] - correction)


def _shifted_scaled(
    x: Tensor, temperature: float, standardize: bool, correction: int, eps: float
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``z - max(z)`` per row for ``z = x / T`` or ``z = zscore(x, T)``.

    Returns ``(z_shifted, x_max, mean, scale)``: the raw row max (both transforms are monotone,
    so it also decides the argmax), and for standardize the row mean and
    ``scale = 1 / ((std + eps) T)``. Shifting by the max makes ``exp`` safe and puts
    ``p_max = 1 / sum(exp(z_shifted))``.
    """
    x_max = x.amax(dim=-1, keepdim=True)
    if standardize:
        mean = x.mean(dim=-1, keepdim=True)
        xc = x - mean
        scale = 1.0 / ((_row_std(xc, correction) + eps) * temperature)
        return xc.sub_(x_max - mean).mul_(scale), x_max, mean, scale
    z = x - x_max
    return (z.mul_(1.0 / temperature) if temperature != 1.0 else z), x_max, None, None


def _misinstructed(t: Tensor, target: Tensor, t_max: Tensor) -> Tensor:
    """``argmax(t) != target`` per row from the row max; ties fall back to ``argmax`` itself."""
    t_gt = t.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    t_max = t_max.squeeze(-1)
    mis = t_gt < t_max
    tie = t_gt == t_max
    if bool(tie.any()):  # label shares the top value: argmax picks the first index
        rows = tie.nonzero().squeeze(-1)
        mis[rows] = t[rows].argmax(dim=-1) != target[rows]
    return mis


def _kd_block(
    s: Tensor,
    t: Tensor,
    target: Tensor | None,
    temperature: float,
    loca_alpha: float | None,
    standardize: bool,
    correction: int,
    eps: float,
    neg_inf: bool,
    grad_out: Tensor | None,
) -> Tensor:
    """Per-row ``T^2 KL(p' || q)`` for one block of rows; writes ``d/ds`` into ``grad_out``."""
    cd = compute_dtype(s)
    s, t = s.to(cd), t.to(cd)
    zt, t_max, _, _ = _shifted_scaled(t, temperature, standardize, correction, eps)
    zs, _, mean_s, scale_s = _shifted_scaled(s, temperature, standardize, correction, eps)
    et, es = torch.exp(zt), torch.exp(zs)
    se_t, se_s = et.sum(dim=-1), es.sum(dim=-1)
    lse_t, lse_s = se_t.log(), se_s.log()
    if neg_inf:  # masked classes: p = 0 there, and 0 * -inf must count as 0
        masked = torch.isneginf(zt)
        zt_dot, zs_dot = zt.masked_fill(masked, 0.0), zs.masked_fill(masked, 0.0)
    else:
        zt_dot, zs_dot = zt, zs
    a_sum = _rowdot(et, zt_dot) / se_t - lse_t  # sum p log p
    b_sum = _rowdot(et, zs_dot) / se_t - lse_s  # sum p log q
    if loca_alpha is None:
        kl = a_sum - b_sum
        coef = p_gt = new_gt = gt = None
    else:
        gt = target.unsqueeze(-1)
        lp_gt = zt.gather(-1, gt).squeeze(-1) - lse_t
        lq_gt = zs.gather(-1, gt).squeeze(-1) - lse_s
        p_gt = torch.exp(lp_gt)
        coef, new_gt, _ = loca_scale(p_gt, 1.0 / se_t, _misinstructed(t, target, t_max), loca_alpha)
        # p log p and p log q at the label leave plain KL; the calibrated ones come in.
        gt_term = p_gt * (lp_gt - lq_gt)
        new_term = torch.special.xlogy(new_gt, new_gt) - new_gt * lq_gt
        if neg_inf or loca_alpha >= 1:  # 0 * -inf at a masked label, or a target clipped to 0
            gt_term = torch.where(p_gt > 0, gt_term, torch.zeros_like(gt_term))
            new_term = torch.where(new_gt > 0, new_term, torch.zeros_like(new_term))
        kl = coef * (a_sum - b_sum - gt_term + (1.0 - p_gt) * torch.log(coef)) + new_term
    t2 = temperature * temperature
    if grad_out is not None:
        # d(T^2 KL)/dz = T^2 (q - p'),  p' = c p off the label and g at it.
        g = es.mul_((t2 / se_s).unsqueeze(-1))
        c_t = (coef if coef is not None else torch.ones_like(se_t)) * (t2 / se_t)
        g.addcmul_(et, c_t.unsqueeze(-1), value=-1.0)
        if coef is not None:
            g.scatter_add_(-1, gt, (t2 * (coef * p_gt - new_gt)).unsqueeze(-1))
        if standardize:
            # z = (x - mu) k, k = 1 / (d T), d = sigma + eps:
            # dL/dx = k [(g - mean g) - (x - mu) sum(g (x - mu)) / (d (K - c) sigma)]
            # (mean g is 0 up to rounding: q and p' both sum to 1, so that term is dropped)
            xc = s - mean_s
            sigma = _row_std(xc, correction).clamp_min(torch.finfo(cd).tiny)
            d = 1.0 / (scale_s * temperature)
            proj = _rowdot(g, xc).unsqueeze(-1) / (d * (s.shape[-1] - correction) * sigma)
            g.addcmul_(xc, proj, value=-1.0).mul_(scale_s)
        else:
            g.mul_(1.0 / temperature)
        grad_out.copy_(g)
    # Rounding can leave -1e-8 on identical rows; KL is >= 0.
    return kl.clamp_min(0.0) * t2


class _FusedForwardKL(torch.autograd.Function):
    """Per-row ``T^2 * KL(p_T' || p_S)`` with a scalar temperature; see the module docstring.

    Works through the rows in cache-sized blocks and computes the gradient w.r.t. the student
    in the same pass (as Liger-Kernel's fused losses do), so the only ``(N, C)`` buffer kept is
    that gradient; backward scales it by the incoming per-row weights.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        s: Tensor,
        t: Tensor,
        target: Tensor | None,
        temperature: float,
        loca_alpha: float | None,
        standardize: bool,
        correction: int,
        eps: float,
        teacher_neg_inf: bool,
    ) -> Tensor:
        n, c = s.shape
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(s) if need_grad else None
        out_dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
        rows = torch.empty(n, dtype=out_dtype, device=s.device)
        step = max(1, _BLOCK_ELEMENTS // max(c, 1))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            rows[lo:hi] = _kd_block(
                s[lo:hi],
                t[lo:hi],
                None if target is None else target[lo:hi],
                temperature,
                loca_alpha,
                standardize,
                correction,
                eps,
                teacher_neg_inf,
                None if grad is None else grad[lo:hi],
            )
        ctx.save_for_backward(grad)
        return rows

    @staticmethod
    def backward(ctx, grad_rows: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # Out of place: autograd may run this backward more than once (retain_graph, gradcheck).
        grad = grad * grad_rows.to(grad.dtype).unsqueeze(-1)
        return grad, None, None, None, None, None, None, None, None


def _loca_apply(p: Tensor, target: Tensor, alpha: float) -> Tensor:
    """Differentiable LoCa on rows ``p`` (N, C) with valid targets (N,) (gradient flows through
    ``p``, e.g. to a learnable temperature; the mis-instruction mask itself is discrete)."""
    gt = target.unsqueeze(-1)
    p_max, arg = p.max(dim=-1)
    p_gt = p.gather(-1, gt).squeeze(-1)
    coef, new_gt, _ = loca_scale(p_gt, p_max, arg != target, alpha)
    return (p * coef.unsqueeze(-1)).scatter(-1, gt, new_gt.unsqueeze(-1))


def _kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``sum a (log a - log b)`` with ``0 log 0 = 0`` and masked entries ignored."""
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(dim=-1)


def divergence_rows(
    s: Tensor,
    t: Tensor,
    target: Tensor | None,
    temperature: float | Tensor,
    loca_alpha: float | None,
    standardize: bool,
    divergence: str,
    correction: int = 0,
    eps: float = 1e-7,
    jsd_beta: float = 0.5,
) -> Tensor:
    """Per-row ``T^2 * D(p_T', p_S)`` by plain autograd (any temperature tensor, any divergence).

    ``temperature`` may be a tensor of shape ``()``, ``(n,)`` or ``(n, 1)`` with gradient (CTKD).
    """
    cd = torch.float64 if s.dtype == torch.float64 else torch.float32
    temp = temperature
    if isinstance(temp, Tensor):
        temp = temp.to(cd)
        if temp.dim() == 1:
            temp = temp.unsqueeze(-1)
    s32, t32 = s.to(cd), t.to(cd)
    z_s = scale_logits(s32, temp, standardize, correction, eps)
    z_t = scale_logits(t32, temp, standardize, correction, eps)
    log_q = F.log_softmax(z_s, dim=-1)
    log_p = F.log_softmax(z_t, dim=-1)
    if loca_alpha is not None:
        p_cal = _loca_apply(log_p.exp(), target, loca_alpha)
        log_p = torch.where(
            p_cal > 0,
            p_cal.clamp_min(torch.finfo(cd).tiny).log(),
            torch.full_like(p_cal, float("-inf")),
        )
    if divergence == "forward_kl":
        rows = _kl_rows(log_p, log_q)
    elif divergence == "reverse_kl":
        rows = _kl_rows(log_q, log_p)
    elif divergence == "jsd":
        # Generalised JSD (as in GKD): beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1-beta) q.
        if not 0.0 < jsd_beta < 1.0:
            raise ValueError(f"jsd_beta must be in (0, 1), got {jsd_beta}")
        log_m = torch.logaddexp(log_p + math.log(jsd_beta), log_q + math.log(1.0 - jsd_beta))
        rows = jsd_beta * _kl_rows(log_p, log_m) + (1 - jsd_beta) * _kl_rows(log_q, log_m)
    else:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    t2 = temp * temp
    if isinstance(t2, Tensor) and t2.dim() == 2:
        t2 = t2.squeeze(-1)
    return rows.clamp_min(0.0) * t2


def check_temperature(temperature: float | Tensor) -> None:
    check_positive("temperature", temperature)


def check_loca(loca_alpha: float | None, target: Tensor | None) -> None:
    if loca_alpha is None:
        return
    if target is None:
        raise ValueError(
            "loca_alpha needs target (the labels): LoCa calibrates the teacher toward them"
        )
    check_loca_alpha(loca_alpha)
