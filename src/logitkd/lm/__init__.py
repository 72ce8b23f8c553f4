"""Language-model distillation: instruction data, models, generation and Rouge-L evaluation.

Submodules: :mod:`~logitkd.lm.data` (JSONL readers, prompt, tokenisation, collate, Dolly split),
:mod:`~logitkd.lm.models` (offline loading, tiny builders, tokenizer checks),
:mod:`~logitkd.lm.generate` (batched generation), :mod:`~logitkd.lm.rouge` (Rouge-L,
seed summaries, teacher mis-instruction). Names are resolved lazily, so ``import logitkd.lm``
stays cheap and works without ``transformers``; it is imported only when a model or tokenizer
function is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # data
    "IGNORE_INDEX": "data",
    "PROMPT_NO_INPUT": "data",
    "PROMPT_WITH_INPUT": "data",
    "DollySplit": "data",
    "InstructionCollator": "data",
    "InstructionRecord": "data",
    "TokenizationStats": "data",
    "build_prompt": "data",
    "collate_batch": "data",
    "encode_prompt": "data",
    "filter_records": "data",
    "parse_instruction_record": "data",
    "read_instruction_jsonl": "data",
    "special_prefix_ids": "data",
    "split_dolly": "data",
    "tokenize_record": "data",
    "tokenize_records": "data",
    # models
    "aligned_vocab_size": "models",
    "build_tiny_causal_lm": "models",
    "check_tokenizers_match": "models",
    "find_missing_files": "models",
    "load_causal_lm": "models",
    "load_model_and_tokenizer": "models",
    "load_tokenizer": "models",
    "output_vocab_size": "models",
    "train_tokenizer": "models",
    # generation and evaluation
    "generate_responses": "generate",
    "MisinstructionStats": "rouge",
    "evaluate_rouge": "rouge",
    "rouge_l_fmeasure": "rouge",
    "rouge_l_per_sample": "rouge",
    "summarize_over_seeds": "rouge",
    "token_misinstruction_on_records": "rouge",
    "token_misinstruction_ratio": "rouge",
    # distillation: chunked loss, trainer, configs, methods
    "ChunkedLoss": "chunked",
    "chunked_distill_loss": "chunked",
    "chunked_kd_loss": "chunked",
    "DistillationTrainer": "trainer",
    "LMConfig": "config",
    "make_tiny_assets": "methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'logitkd.lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"logitkd.lm.{module}"), name)
    globals()[name] = value  # cache: later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
