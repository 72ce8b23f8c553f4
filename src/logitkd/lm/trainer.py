"""``DistillationTrainer``: token-level distillation on top of ``transformers.Trainer``.

Everything distributed (DDP, FSDP, DeepSpeed), mixed precision, checkpointing and resume comes
from ``transformers.Trainer`` and Accelerate unchanged; only :meth:`compute_loss` differs. One
training step:

1. the student runs with ``output_hidden_states=True`` (and ``logits_to_keep=1``, so the model
   itself never builds full logits); its last hidden state is the ``lm_head`` input;
2. the frozen teacher (eval mode, no grad, on the student's device) does the same;
3. hidden states are shifted for causal LM (position ``t`` predicts ``labels[t + 1]``) and the
   loss ``(1 - kd_ratio) * CE + kd_ratio * KD`` is computed through both ``lm_head`` weights in
   chunks of tokens (:func:`logitkd.lm.chunked.chunked_distill_loss`), normalised by the number
   of response tokens of the whole accumulated (and, with ``average_tokens_across_devices``,
   distributed) batch that the Trainer passes as ``num_items_in_batch``.

With ``kd_ratio = 0`` and no teacher it is plain SFT through the same memory-efficient CE.
``chunked=False`` computes the same loss from the models' full logits with
:func:`logitkd.losses.kd.kd_loss` (for a sharded ``lm_head``: FSDP, DeepSpeed ZeRO-3).
The CE and KD terms are logged next to the Trainer's ``loss``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer

from logitkd.lm.chunked import chunked_distill_loss
from logitkd.lm.data import IGNORE_INDEX
from logitkd.lm.models import aligned_vocab_size, output_vocab_size
from logitkd.losses.kd import kd_loss

__all__ = ["DistillationTrainer", "head_weight"]


def head_weight(model: nn.Module) -> Tensor:
    """The ``lm_head`` weight ``(V, H)`` of a causal LM (the input embedding when tied).

    Raises ``ValueError`` for heads the chunked loss cannot reproduce (a bias).
    """
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no output embedding (lm_head) weight; the chunked loss "
            "needs a causal LM whose logits are last_hidden_state @ lm_head.weight.T"
        )
    if getattr(head, "bias", None) is not None:
        raise ValueError(
            f"{type(model).__name__}'s lm_head has a bias, which the chunked loss does not apply; "
            "set distill.chunked=false"
        )
    return head.weight


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` whose loss is ``(1 - kd_ratio) * CE + kd_ratio * KD``.

    Args:
        model: the student (any ``AutoModelForCausalLM``).
        args: ``transformers.TrainingArguments``.
        teacher_model: the teacher; required when ``kd_ratio > 0``. It is frozen, put in eval
            mode and placed on the student's device (prepared by Accelerate in evaluation
            mode, i.e. never wrapped for gradient synchronisation).
        kd_ratio: weight of the distillation term, ``0 <= kd_ratio <= 1`` (0.5 by default).
        temperature, loca_alpha, standardize, divergence, jsd_beta: the KD term, as in
            :func:`logitkd.losses.kd.kd_loss`.
        chunk_size: tokens per chunk of the chunked loss.
        chunked: ``False`` computes the loss from full logits (sharded ``lm_head``).
        vocab_size: width compared between teacher and student; by default
            :func:`logitkd.lm.models.aligned_vocab_size` with ``processing_class`` (the
            tokenizer), or the common output size when both heads agree.
        **kwargs: everything else ``transformers.Trainer`` takes (datasets, collator,
            ``processing_class``, callbacks, …).

    The labels must be the collator's ``labels`` (``-100`` off the response); the model itself
    receives no labels and computes no loss.
    """

    # The loss is normalised by ``num_items_in_batch`` (whole accumulated batch) here, so the
    # Trainer must neither divide it by the accumulation steps nor skip counting the tokens.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        args: Any = None,
        *,
        teacher_model: PreTrainedModel | nn.Module | None = None,
        kd_ratio: float = 0.5,
        temperature: float = 1.0,
        loca_alpha: float | None = None,
        standardize: bool = False,
        divergence: str = "forward_kl",
        jsd_beta: float = 0.5,
        chunk_size: int = 1024,
        chunked: bool = True,
        vocab_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(kd_ratio, bool) or not isinstance(kd_ratio, (int, float)):
            raise TypeError(f"kd_ratio must be a number in [0, 1], got {kd_ratio!r}")
        if not 0.0 <= kd_ratio <= 1.0:
            raise ValueError(f"kd_ratio must be in [0, 1], got {kd_ratio}")
        if kd_ratio > 0 and teacher_model is None:
            raise ValueError("kd_ratio > 0 needs a teacher_model (use kd_ratio=0 for SFT)")
        super().__init__(model=model, args=args, **kwargs)
        # Counted tokens (num_items_in_batch) are computed by the Trainer only for models that
        # "accept loss kwargs"; our compute_loss does, whatever the model's forward signature.
        self.model_accepts_loss_kwargs = True
        self.kd_ratio = float(kd_ratio)
        self.temperature = temperature
        self.loca_alpha = loca_alpha
        self.standardize = standardize
        self.divergence = divergence
        self.jsd_beta = jsd_beta
        self.chunk_size = chunk_size
        self.chunked = chunked
        if chunked and (self.is_fsdp_enabled or self._zero3()):
            raise ValueError(
                "the chunked loss reads the lm_head weight outside the model's forward, which a "
                "sharded lm_head (FSDP, DeepSpeed ZeRO-3) does not allow: set chunked=False "
                "(distill.chunked=false)"
            )
        self.teacher_model = None
        if teacher_model is not None and self.kd_ratio > 0:
            self.teacher_model = self._place_teacher(teacher_model)
        self.vocab_size = self._shared_vocab(vocab_size)
        self._checked_heads = False
        self._sums: dict[str, Tensor] = {}
        self._n_logged_tokens = 0

    # ------------------------------------------------------------------------------ set-up

    def _zero3(self) -> bool:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return bool(self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)

    def _place_teacher(self, teacher: nn.Module) -> nn.Module:
        teacher.eval()
        teacher.requires_grad_(False)
        if self._zero3():
            raise NotImplementedError(
                "a DeepSpeed ZeRO-3 teacher is not supported; use ZeRO-1/2 (the teacher is "
                "replicated) or FSDP with chunked=False"
            )
        if self.is_deepspeed_enabled:
            return teacher.to(self.args.device)
        # As TRL does: evaluation mode moves it to the device (and shards it under FSDP) but
        # never wraps it in DDP.
        return self.accelerator.prepare_model(teacher, evaluation_mode=True).eval()

    def _shared_vocab(self, vocab_size: int | None) -> int | None:
        if self.teacher_model is None:
            return None
        student = self.accelerator.unwrap_model(self.model)
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        v_s, v_t = output_vocab_size(student), output_vocab_size(teacher)
        if vocab_size is not None:
            if vocab_size > min(v_s, v_t):
                raise ValueError(
                    f"vocab_size ({vocab_size}) exceeds an output layer (student {v_s}, teacher "
                    f"{v_t} rows)"
                )
            return vocab_size
        tokenizer = self.processing_class
        if tokenizer is not None and hasattr(tokenizer, "__len__"):
            return aligned_vocab_size(teacher, student, tokenizer)
        if v_s != v_t:
            raise ValueError(
                f"teacher ({v_t}) and student ({v_s}) output vocabularies differ; pass the "
                "tokenizer as processing_class or vocab_size=aligned_vocab_size(...)"
            )
        return v_s

    # ------------------------------------------------------------------------------- loss

    def _forward(self, model: nn.Module, inputs: dict[str, Tensor]) -> Any:
        kwargs = dict(inputs)
        if self.chunked:
            kwargs["output_hidden_states"] = True
            if _accepts(self.accelerator.unwrap_model(model), "logits_to_keep"):
                kwargs["logits_to_keep"] = 1  # the model's own logits: last position only
        return model(**kwargs)

    def _check_head(self, name: str, outputs: Any, hidden: Tensor, weight: Tensor) -> None:
        """Once: the last position's logits must equal ``hidden @ W.T`` (else a soft-capped,
        scaled or otherwise post-processed head would be silently distilled wrongly)."""
        logits = getattr(outputs, "logits", None)
        if logits is None:
            return
        ref = logits[:, -1, : weight.shape[0]].detach().float()
        with torch.no_grad():
            mine = (hidden[:, -1].to(weight.dtype) @ weight.T).float()[:, : ref.shape[-1]]
        tol = 1e-4 if weight.dtype == torch.float32 else 3e-2
        scale = ref.abs().amax().clamp_min(1.0)
        if not torch.allclose(mine, ref, rtol=tol, atol=tol * float(scale)):
            raise ValueError(
                f"the {name}'s last hidden state times its lm_head weight does not reproduce its "
                f"logits (max difference {float((mine - ref).abs().max()):.3g}): the model "
                "post-processes its logits (soft-capping or scaling); set chunked=False"
            )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """``(1 - kd_ratio) * CE + kd_ratio * KD`` over the response tokens (module docstring)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("the batch has no 'labels'; use logitkd.lm.InstructionCollator")
        outputs = self._forward(model, inputs)
        target = labels[:, 1:].reshape(-1)
        teacher_out = None
        if self.teacher_model is not None:
            with torch.no_grad():
                teacher_out = self._forward(self.teacher_model, inputs)
        if self.chunked:
            terms = self._chunked_terms(model, outputs, teacher_out, target, num_items_in_batch)
        else:
            terms = self._logit_terms(outputs, teacher_out, target, num_items_in_batch)
        loss, ce, kd, n_tokens, denominator = terms
        if model.training:
            self._accumulate(ce, kd, n_tokens, denominator)
        if (
            num_items_in_batch is not None
            and getattr(self.args, "average_tokens_across_devices", False)
            and self.accelerator.num_processes > 1
        ):
            # num_items_in_batch counts every process's tokens and DDP averages gradients over
            # processes: scale back so the update is the mean over all tokens.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _chunked_terms(
        self,
        model: nn.Module,
        outputs: Any,
        teacher_out: Any,
        target: Tensor,
        num_items: Tensor | int | None,
    ) -> tuple[Tensor, Tensor, Tensor, int, float]:
        s_hidden_full = outputs.hidden_states[-1]
        s_weight = head_weight(self.accelerator.unwrap_model(model))
        t_hidden = t_weight = None
        if teacher_out is not None:
            t_hidden_full = teacher_out.hidden_states[-1]
            t_weight = head_weight(self.accelerator.unwrap_model(self.teacher_model))
            t_hidden = t_hidden_full[:, :-1].reshape(-1, t_hidden_full.shape[-1])
        if not self._checked_heads:
            self._check_head("student", outputs, s_hidden_full, s_weight)
            if teacher_out is not None:
                self._check_head("teacher", teacher_out, t_hidden_full, t_weight)
            self._checked_heads = True
        s_hidden = s_hidden_full[:, :-1].reshape(-1, s_hidden_full.shape[-1])
        res = chunked_distill_loss(
            s_hidden,
            s_weight,
            t_hidden,
            t_weight,
            target,
            ce_weight=1.0 - self.kd_ratio,
            kd_weight=self.kd_ratio,
            temperature=self.temperature,
            loca_alpha=self.loca_alpha,
            standardize=self.standardize,
            divergence=self.divergence,
            chunk_size=self.chunk_size,
            ignore_index=IGNORE_INDEX,
            num_items_in_batch=num_items,
            vocab_size=self.vocab_size,
            jsd_beta=self.jsd_beta,
        )
        denominator = float(num_items) if num_items is not None else float(res.n_tokens)
        return res.loss, res.ce, res.kd, res.n_tokens, denominator

    def _logit_terms(
        self, outputs: Any, teacher_out: Any, target: Tensor, num_items: Tensor | int | None
    ) -> tuple[Tensor, Tensor, Tensor, int, float]:
        logits = outputs.logits[:, :-1]
        flat = logits.reshape(-1, logits.shape[-1])
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # fp32 at least
        n_tokens = int((target != IGNORE_INDEX).sum())
        denominator = float(num_items) if num_items is not None else float(max(n_tokens, 1))
        ce = F.cross_entropy(flat, target, ignore_index=IGNORE_INDEX, reduction="sum") / denominator
        kd = ce.new_zeros(())
        if teacher_out is not None:
            v = self.vocab_size
            t_flat = teacher_out.logits[:, :-1].reshape(-1, teacher_out.logits.shape[-1])
            kd = (
                kd_loss(
                    flat[:, :v],
                    t_flat[:, :v],
                    target,
                    temperature=self.temperature,
                    loca_alpha=self.loca_alpha,
                    standardize=self.standardize,
                    ignore_index=IGNORE_INDEX,
                    divergence=self.divergence,
                    reduction="sum",
                    jsd_beta=self.jsd_beta,
                )
                / denominator
            )
        loss = (1.0 - self.kd_ratio) * ce + self.kd_ratio * kd
        return loss, ce.detach(), kd.detach(), n_tokens, denominator

    # ---------------------------------------------------------------------------- logging

    def _accumulate(self, ce: Tensor, kd: Tensor, n_tokens: int, denominator: float) -> None:
        # Undo the normalisation so the logged terms are per-token means over the logging window.
        for key, value in (("ce", ce), ("kd", kd)):
            total = value.detach().double() * denominator
            self._sums[key] = self._sums[key] + total if key in self._sums else total
        self._n_logged_tokens += n_tokens

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean ``ce`` (and ``kd``) per response token since the last training log."""
        if "loss" in logs and self._n_logged_tokens > 0:
            n = self._n_logged_tokens
            logs["ce"] = round(float(self._sums["ce"]) / n, 6)
            if self.teacher_model is not None:
                logs["kd"] = round(float(self._sums["kd"]) / n, 6)
            self._sums = {}
            self._n_logged_tokens = 0
        super().log(logs, *args, **kwargs)
