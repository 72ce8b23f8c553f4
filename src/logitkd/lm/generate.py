"""Batched response generation for instruction-following evaluation (MiniLLM/DistiLLM protocol).

Prompts are encoded exactly as for training (:func:`logitkd.lm.data.encode_prompt`), left-padded
so that every prompt ends in the last column, and continued by ``model.generate``. The returned
string is the generated part only, cut at the first eos, decoded without special tokens and
stripped (as MiniLLM's ``evaluate_main.py`` post-processes its answers).

Every decoding parameter is set explicitly, so a checkpoint's ``generation_config.json`` (e.g. a
repetition penalty or sampling defaults shipped with an instruct model) never changes the protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

from logitkd.lm.data import (
    InstructionRecord,
    build_prompt,
    collate_batch,
    encode_prompt,
    special_prefix_ids,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["generate_responses", "stop_token_ids"]


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's eos id plus any eos ids in the model's generation config (Llama 3 has two)."""
    ids: list[int] = []
    candidates: list[int | list[int] | None] = [tokenizer.eos_token_id]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        candidates.append(gen_cfg.eos_token_id)
    for c in candidates:
        for i in c if isinstance(c, list) else [c]:
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError(
            "neither the tokenizer nor the model's generation config defines an eos token id"
        )
    return ids


def _check_args(
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    batch_size: int,
) -> None:
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if do_sample:
        if not (
            isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)
        ):
            raise ValueError(
                f"temperature must be finite and > 0 when sampling, got {temperature!r}"
            )
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative int (0 disables it), got {top_k!r}")


def _cut_at_stop(ids: list[int], stops: set[int]) -> list[int]:
    for j, t in enumerate(ids):
        if t in stops:
            return ids[:j]
    return ids


def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[InstructionRecord | str],
    max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 8,
    *,
    top_k: int = 0,
    max_prompt_length: int = 256,
    prompt_truncation: Literal["left", "right"] = "left",
) -> list[str]:
    """Generate one response per record (or raw prompt string), in order.

    Greedy by default; ``do_sample=True`` samples with ``temperature`` and nucleus ``top_p``
    (``top_k=0``: no top-k cut, MiniLLM's evaluation setting). With ``seed``, sampling is
    reproducible: the RNG is seeded once before the first batch inside a forked RNG state, so the
    caller's global RNG is untouched; the draws depend on ``batch_size`` and record order, so keep
    both fixed to reproduce a run. Prompts longer than ``max_prompt_length`` tokens are cut as in
    training (:func:`logitkd.lm.data.encode_prompt`).
    """
    from transformers import GenerationConfig

    _check_args(max_new_tokens, do_sample, temperature, top_p, top_k, batch_size)
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    if do_sample:
        sampling = {"temperature": float(temperature), "top_p": float(top_p), "top_k": top_k}
    else:  # the library defaults: no "unused sampling parameter" warnings
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=stops,
        pad_token_id=pad_id,
        **sampling,
    )
    prefix = special_prefix_ids(tokenizer)
    prompts = [r if isinstance(r, str) else build_prompt(r) for r in records]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                encoded = [
                    {"input_ids": ids, "attention_mask": [1] * len(ids)}
                    for ids, _ in (
                        encode_prompt(tokenizer, p, max_prompt_length, prompt_truncation, prefix)
                        for p in prompts[start : start + batch_size]
                    )
                ]
                batch = collate_batch(encoded, pad_id, padding_side="left")
                batch = {k: v.to(device) for k, v in batch.items()}
                out = model.generate(**batch, generation_config=gen_config)
                new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
                stop_set = set(stops)
                for ids in new_tokens:
                    text = tokenizer.decode(_cut_at_stop(ids, stop_set), skip_special_tokens=True)
                    outputs.append(text.strip())
    finally:
        model.train(was_training)
    return outputs
