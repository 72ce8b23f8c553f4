"""Token-level distillation loss computed through the LM head in chunks of tokens.

Materialising ``(N, V)`` fp32 logits for student and teacher, plus the softmax buffers and the
gradient, is what runs token-level KD out of memory at 128k vocabularies (N = 4096 tokens at
V = 128256 is 2.1 GB per buffer). Here the loss is taken from the final hidden states ``(N, H)``
and the ``lm_head`` weights ``(V, H)`` instead, ``chunk_size`` tokens at a time::

    z_S = h_S[c] @ W_S^T,  z_T = h_T[c] @ W_T^T                      (chunk c, fp32 logits)
    L   = [ ce_weight * sum_c CE(z_S, y) + kd_weight * sum_c KD(z_S, z_T, y) ] / D

with ``KD`` the per-token divergence of :func:`logitkd.losses.kd.kd_loss` (forward KL, reverse
KL or JSD; LoCa and logit standardization included), ``CE`` the student's cross-entropy over its
full output vocabulary (the term a Hugging Face causal LM computes), and ``D`` the number of
non-ignored tokens in the batch, or ``num_items_in_batch`` under gradient accumulation (the
token count of the whole accumulated batch, so that micro-batches add up to the true mean; the
normalisation TRL and transformers had to fix).

The gradients are computed *in the forward pass* (the Liger-Kernel design): per chunk, the
core loss is differentiated w.r.t. the chunk's logits ``g = dL/dz_S`` and immediately folded
into ``dL/dh_S[c] = g @ W_S`` and ``dL/dW_S += g^T @ h_S[c]``; the chunk's logits are then
freed. Peak extra memory is a few ``(chunk, V)`` buffers plus one ``(V, H)`` weight gradient,
whatever ``N``; backward only rescales the stored gradients by the incoming scalar. The chunk
is ``chunk_size`` tokens, capped so that ``chunk * V <= max_chunk_elements`` (2**25 by default:
each fp32 buffer ≤ 128 MiB, so a 128k vocabulary gets 261-token chunks, a 32k one 1024).
The teacher gets no gradient.

Ignored tokens (``target == ignore_index``) are dropped before any matmul. Output layers padded
to different sizes (teacher ``V_T`` ≠ student ``V_S``) are compared on their first
``vocab_size`` rows (:func:`logitkd.lm.models.aligned_vocab_size`); the CE term keeps the
student's full vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from logitkd.calibration import check_loca_alpha
from logitkd.losses._rows import DIVERGENCES
from logitkd.losses.kd import kd_loss

__all__ = ["DEFAULT_MAX_CHUNK_ELEMENTS", "ChunkedLoss", "chunked_distill_loss", "chunked_kd_loss"]

#: Default cap on ``chunk * vocab`` (one fp32 ``(chunk, V)`` buffer ≤ 128 MiB).
DEFAULT_MAX_CHUNK_ELEMENTS = 2**25


class ChunkedLoss(NamedTuple):
    """Result of :func:`chunked_distill_loss`.

    ``loss = ce_weight * ce + kd_weight * kd`` carries the gradient; ``ce`` and ``kd`` are the
    detached, normalised terms (for logging); ``n_tokens`` counts the non-ignored tokens.
    """

    loss: Tensor
    ce: Tensor
    kd: Tensor
    n_tokens: int


@dataclass(frozen=True)
class _Spec:
    """Everything about the loss that is not a tensor."""

    ce_weight: float
    kd_weight: float
    temperature: float
    loca_alpha: float | None
    standardize: bool
    divergence: str
    chunk_size: int
    vocab_size: int
    ignore_index: int
    jsd_beta: float
    correction: int
    eps: float
    inv_denominator: float


def _chunk_terms(
    s_logits: Tensor, t_logits: Tensor | None, target: Tensor, spec: _Spec
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Summed ``CE`` and ``KD`` of one chunk of valid tokens, and their weighted total."""
    ce = kd = None
    total = s_logits.new_zeros(())
    if spec.ce_weight != 0.0:
        ce = F.cross_entropy(s_logits, target, reduction="sum")
        total = total + spec.ce_weight * ce
    if spec.kd_weight != 0.0:
        assert t_logits is not None
        s_kd = s_logits if s_logits.shape[1] == spec.vocab_size else s_logits[:, : spec.vocab_size]
        kd = kd_loss(
            s_kd,
            t_logits,
            target,
            spec.temperature,
            loca_alpha=spec.loca_alpha,
            standardize=spec.standardize,
            ignore_index=spec.ignore_index,
            divergence=spec.divergence,
            reduction="sum",
            correction=spec.correction,
            eps=spec.eps,
            jsd_beta=spec.jsd_beta,
        )
        total = total + spec.kd_weight * kd
    return total, ce, kd


def _run_chunks(
    s_h: Tensor,
    s_w: Tensor,
    t_h: Tensor | None,
    t_w: Tensor | None,
    target: Tensor,
    spec: _Spec,
    need_grad_h: bool,
    need_grad_w: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """Loop over token chunks; return ``(loss, ce, kd, grad_h, grad_w)`` (grads already / D)."""
    acc = torch.float64 if s_w.dtype == torch.float64 else torch.float32
    n = s_h.shape[0]
    grad_h = torch.empty_like(s_h) if need_grad_h else None
    grad_w = torch.zeros(s_w.shape, dtype=acc, device=s_w.device) if need_grad_w else None
    ce_sum = torch.zeros((), dtype=acc, device=s_h.device)
    kd_sum = torch.zeros((), dtype=acc, device=s_h.device)
    need_grad = need_grad_h or need_grad_w
    t_w_shared = None if t_w is None else t_w[: spec.vocab_size]
    with torch.autocast(device_type=s_h.device.type, enabled=False):
        for start in range(0, n, spec.chunk_size):
            stop = min(start + spec.chunk_size, n)
            h = s_h[start:stop]
            # The matmul runs in the weight's dtype (bf16 on GPU accumulates in fp32); the loss
            # and every softmax see fp32 logits.
            s_logits = (h.to(s_w.dtype) @ s_w.T).to(acc)
            t_logits = None
            if t_h is not None and t_w_shared is not None and spec.kd_weight != 0.0:
                t_logits = (t_h[start:stop].to(t_w.dtype) @ t_w_shared.T).to(acc)
            tgt = target[start:stop]
            if need_grad:
                s_logits.requires_grad_(True)
                with torch.enable_grad():
                    total, ce, kd = _chunk_terms(s_logits, t_logits, tgt, spec)
                    (g,) = torch.autograd.grad(total, s_logits)
            else:
                total, ce, kd = _chunk_terms(s_logits, t_logits, tgt, spec)
                g = None
            if ce is not None:
                ce_sum += ce.detach()
            if kd is not None:
                kd_sum += kd.detach()
            del s_logits, t_logits, total, ce, kd
            if g is None:
                continue
            g.mul_(spec.inv_denominator)
            if grad_h is not None:
                grad_h[start:stop] = (g.to(s_w.dtype) @ s_w).to(grad_h.dtype)
            if grad_w is not None:
                grad_w.addmm_(g.T, h.to(acc))
            del g
    ce_mean = ce_sum * spec.inv_denominator
    kd_mean = kd_sum * spec.inv_denominator
    loss = spec.ce_weight * ce_mean + spec.kd_weight * kd_mean
    if grad_w is not None:
        grad_w = grad_w.to(s_w.dtype)
    return loss, ce_mean, kd_mean, grad_h, grad_w


class _ChunkedHeadLoss(torch.autograd.Function):
    """``(loss, ce, kd)`` from hidden states and head weights; gradients computed in forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        s_h: Tensor,
        s_w: Tensor,
        t_h: Tensor | None,
        t_w: Tensor | None,
        target: Tensor,
        spec: _Spec,
    ) -> tuple[Tensor, Tensor, Tensor]:
        loss, ce, kd, grad_h, grad_w = _run_chunks(
            s_h, s_w, t_h, t_w, target, spec, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(ce, kd)
        return loss, ce, kd

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_ce: Tensor, _grad_kd: Tensor):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        # The usual caller backpropagates the loss itself (grad 1): skip two full passes.
        if not (grad_loss.numel() == 1 and float(grad_loss) == 1.0):
            if grad_h is not None:
                grad_h = grad_h * grad_loss.to(grad_h.dtype)
            if grad_w is not None:
                grad_w = grad_w * grad_loss.to(grad_w.dtype)
        return grad_h, grad_w, None, None, None, None


def _check_matrix(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D, got shape {tuple(x.shape)}; flatten (B, T, H) hidden states "
            "to (B*T, H) after shifting them against the labels"
        )


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def chunked_distill_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    target: Tensor,
    *,
    ce_weight: float = 0.5,
    kd_weight: float = 0.5,
    temperature: float = 1.0,
    loca_alpha: float | None = None,
    standardize: bool = False,
    divergence: str = "forward_kl",
    chunk_size: int = 1024,
    ignore_index: int = -100,
    num_items_in_batch: int | float | Tensor | None = None,
    vocab_size: int | None = None,
    max_chunk_elements: int | None = DEFAULT_MAX_CHUNK_ELEMENTS,
    jsd_beta: float = 0.5,
    correction: int = 0,
    eps: float = 1e-7,
) -> ChunkedLoss:
    """``ce_weight * CE + kd_weight * KD`` per token, through the LM head in chunks (module doc).

    Args:
        student_hidden: ``(N, H_S)`` final hidden states (the ``lm_head`` input), already
            aligned with ``target`` (for a causal LM: positions ``0..T-2`` against labels
            ``1..T-1``); gradients flow to it.
        student_weight: ``(V_S, H_S)`` student ``lm_head`` weight; gradients flow to it.
        teacher_hidden: ``(N, H_T)`` teacher hidden states, or ``None`` when ``kd_weight == 0``.
        teacher_weight: ``(V_T, H_T)`` teacher ``lm_head`` weight, or ``None`` likewise.
        target: ``(N,)`` next-token ids; ``ignore_index`` marks tokens left out.
        ce_weight, kd_weight: weights of the two terms (the paper's ``1 - kd_ratio`` and
            ``kd_ratio``); a zero weight skips that term's computation.
        temperature, loca_alpha, standardize, divergence, jsd_beta, correction, eps: as in
            :func:`logitkd.losses.kd.kd_loss` (``temperature`` must be a number here).
        chunk_size: the most tokens per chunk; peak memory grows with ``chunk * V``.
        max_chunk_elements: cap on ``chunk * V_S`` so that one fp32 ``(chunk, V)`` buffer stays
            bounded whatever the vocabulary (default ``2**25``: 128 MiB; 1024 tokens at
            V = 32000, 261 at V = 128256); ``None`` uses ``chunk_size`` as is.
        num_items_in_batch: divide the summed loss by this (the non-ignored token count of the
            whole accumulated/distributed batch) instead of this call's own count.
        vocab_size: compare teacher and student on their first ``vocab_size`` logits; needed
            when ``V_S != V_T`` (padded output layers), default ``V_S`` (= ``V_T``).

    Returns:
        :class:`ChunkedLoss` ``(loss, ce, kd, n_tokens)``. With no valid token the loss is 0.
    """
    _check_matrix("student_hidden", student_hidden)
    _check_matrix("student_weight", student_weight)
    if student_hidden.shape[1] != student_weight.shape[1]:
        raise ValueError(
            f"student_hidden (N, H) and student_weight (V, H) must share H, got "
            f"{tuple(student_hidden.shape)} and {tuple(student_weight.shape)}"
        )
    if not isinstance(target, Tensor) or target.dtype.is_floating_point or target.dim() != 1:
        raise TypeError(
            "target must be a 1-D integer tensor of next-token ids, got "
            + (
                f"{target.dtype} of shape {tuple(target.shape)}"
                if isinstance(target, Tensor)
                else type(target).__name__
            )
        )
    n = student_hidden.shape[0]
    if target.shape[0] != n:
        raise ValueError(
            f"target has {target.shape[0]} entries but student_hidden has {n} rows; they must be "
            "aligned token by token"
        )
    for name, w in (("ce_weight", ce_weight), ("kd_weight", kd_weight)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {w!r}")
    if isinstance(temperature, Tensor) or isinstance(temperature, bool):
        raise TypeError("temperature must be a Python number for the chunked loss")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if loca_alpha is not None:
        check_loca_alpha(loca_alpha)
    _check_positive_int("chunk_size", chunk_size)
    v_s = student_weight.shape[0]
    if max_chunk_elements is not None:
        _check_positive_int("max_chunk_elements", max_chunk_elements)
        chunk_size = min(chunk_size, max(1, max_chunk_elements // v_s))
    v = v_s
    if kd_weight != 0:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("kd_weight > 0 needs teacher_hidden and teacher_weight")
        _check_matrix("teacher_hidden", teacher_hidden)
        _check_matrix("teacher_weight", teacher_weight)
        if teacher_hidden.shape[0] != n:
            raise ValueError(
                f"teacher_hidden has {teacher_hidden.shape[0]} rows but student_hidden has {n}"
            )
        if teacher_hidden.shape[1] != teacher_weight.shape[1]:
            raise ValueError(
                f"teacher_hidden (N, H) and teacher_weight (V, H) must share H, got "
                f"{tuple(teacher_hidden.shape)} and {tuple(teacher_weight.shape)}"
            )
        v_t = teacher_weight.shape[0]
        if vocab_size is None:
            if v_t != v_s:
                raise ValueError(
                    f"teacher output vocabulary ({v_t}) differs from the student's ({v_s}): pass "
                    "vocab_size=logitkd.lm.aligned_vocab_size(teacher, student, tokenizer) to "
                    "compare the shared (unpadded) rows"
                )
        else:
            _check_positive_int("vocab_size", vocab_size)
            if vocab_size > min(v_s, v_t):
                raise ValueError(
                    f"vocab_size ({vocab_size}) exceeds an output layer (student {v_s}, "
                    f"teacher {v_t} rows)"
                )
            v = vocab_size
    valid = target != ignore_index
    n_valid = int(valid.sum())
    if n_valid:
        lo, hi = int(target[valid].min()), int(target[valid].max())
        limit = v if kd_weight != 0 else v_s
        if lo < 0 or hi >= limit:
            raise ValueError(
                f"target ids must lie in [0, {limit}) or equal ignore_index={ignore_index}, "
                f"got values in [{lo}, {hi}]"
            )
    if num_items_in_batch is None:
        denominator = float(n_valid)
    else:
        denominator = float(num_items_in_batch)
        if not denominator > 0:
            raise ValueError(f"num_items_in_batch must be > 0, got {num_items_in_batch!r}")
    spec = _Spec(
        ce_weight=float(ce_weight),
        kd_weight=float(kd_weight),
        temperature=float(temperature),
        loca_alpha=loca_alpha,
        standardize=standardize,
        divergence=divergence,
        chunk_size=chunk_size,
        vocab_size=v,
        ignore_index=ignore_index,
        jsd_beta=jsd_beta,
        correction=correction,
        eps=eps,
        inv_denominator=1.0 / denominator if denominator > 0 else 0.0,
    )
    if n_valid < n:  # drop ignored tokens before any (chunk, V) work
        index = valid.nonzero().squeeze(-1)
        s_h, tgt = student_hidden.index_select(0, index), target.index_select(0, index)
        t_h = None if teacher_hidden is None else teacher_hidden.index_select(0, index)
    else:
        s_h, t_h, tgt = student_hidden, teacher_hidden, target
    if t_h is not None:
        t_h = t_h.detach()
    t_w = None if teacher_weight is None else teacher_weight.detach()
    if torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad):
        loss, ce, kd = _ChunkedHeadLoss.apply(s_h, student_weight, t_h, t_w, tgt, spec)
    else:
        loss, ce, kd, _, _ = _run_chunks(s_h, student_weight, t_h, t_w, tgt, spec, False, False)
    return ChunkedLoss(loss, ce, kd, n_valid)


def chunked_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    target: Tensor,
    temperature: float = 1.0,
    loca_alpha: float | None = None,
    standardize: bool = False,
    divergence: str = "forward_kl",
    chunk_size: int = 1024,
    ignore_index: int = -100,
    num_items_in_batch: int | float | Tensor | None = None,
    *,
    vocab_size: int | None = None,
    max_chunk_elements: int | None = DEFAULT_MAX_CHUNK_ELEMENTS,
    jsd_beta: float = 0.5,
    correction: int = 0,
    eps: float = 1e-7,
) -> Tensor:
    """Token-level KD loss from hidden states and head weights, never holding full logits.

    Equals ``kd_loss(student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T,
    target, temperature, loca_alpha, standardize, ignore_index=ignore_index,
    divergence=divergence, num_items_in_batch=num_items_in_batch)`` (mean over non-ignored
    tokens, or the sum over ``num_items_in_batch``) and has the same gradients w.r.t.
    ``student_hidden`` and ``student_weight``; see :func:`chunked_distill_loss` for the
    arguments and the module docstring for the algorithm.
    """
    return chunked_distill_loss(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        target,
        ce_weight=0.0,
        kd_weight=1.0,
        temperature=temperature,
        loca_alpha=loca_alpha,
        standardize=standardize,
        divergence=divergence,
        chunk_size=chunk_size,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
        vocab_size=vocab_size,
        max_chunk_elements=max_chunk_elements,
        jsd_beta=jsd_beta,
        correction=correction,
        eps=eps,
    ).loss
