"""Instruction-following data: JSONL readers, the Alpaca prompt, response-only tokenisation, batching.

Formats read (one JSON object per line):

* databricks-dolly-15k: ``instruction``, ``context``, ``response``, ``category``.
* MiniLLM/DistiLLM: ``instruction``, ``input``, ``output`` and, for evaluation sets, ``prompt``
  and ``topic``. In Super-NaturalInstructions (S-NI) ``output`` is a JSON list of references.

Both become :class:`InstructionRecord`. The prompt is the record's own ``prompt`` when it has one,
else the Alpaca template MiniLLM's ``tools/process_data_dolly.py`` uses (:data:`PROMPT_WITH_INPUT`,
:data:`PROMPT_NO_INPUT`; verified to reproduce the ``prompt`` field of all 3,436 records of the
Dolly/S-NI/Self-Instruct evaluation sets).

Tokenisation (:func:`tokenize_record`) gives ``input_ids = prompt ++ response ++ [eos]`` with
``labels = [-100] * len(prompt) ++ response ++ [eos]``: the loss (and distillation) covers response
tokens only. The prompt and the response are encoded separately so that the prompt ids are exactly
those the model sees at generation time.

Truncation rule (defaults: prompt ≤ 256, total ≤ 512 tokens, MiniLLM's limits):

1. A prompt longer than ``max_prompt_length`` keeps its **last** tokens (``prompt_truncation=
   "left"``), after any special prefix such as Llama's ``<s>``, which is always kept. The tail
   holds the ``### Response:`` cue and the end of the input, which the response continues; cutting
   it would train the model to answer a prompt that never asks. MiniLLM's evaluation loader keeps
   the first tokens instead; pass ``prompt_truncation="right"`` to match it. (MiniLLM's training
   pre-processing *drops* such records; :func:`filter_records` does that.)
2. The response (with its eos) is then cut to ``max_length - len(prompt)`` tokens. A cut response
   loses its eos: the model must not learn to stop where the text did not end.

Both cuts are counted in :class:`TokenizationStats` and reported with a ``logging`` warning.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "PROMPT_NO_INPUT",
    "PROMPT_WITH_INPUT",
    "DollySplit",
    "InstructionCollator",
    "InstructionRecord",
    "TokenizationStats",
    "build_prompt",
    "collate_batch",
    "encode_prompt",
    "filter_records",
    "parse_instruction_record",
    "read_instruction_jsonl",
    "special_prefix_ids",
    "split_dolly",
    "tokenize_record",
    "tokenize_records",
]

logger = logging.getLogger(__name__)

#: Label value ignored by ``torch.nn.functional.cross_entropy`` and by the KD losses.
IGNORE_INDEX = -100

#: Alpaca prompt for a record with a non-empty input (MiniLLM ``tools/process_data_dolly.py``).
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
#: Alpaca prompt for a record whose input is empty.
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

Format = Literal["auto", "dolly", "minillm"]


@dataclass
class InstructionRecord:
    """One instruction-following sample.

    ``references`` holds one or more acceptable responses (S-NI has several); training uses the
    first, Rouge-L takes the best over all. ``prompt`` is the ready-made prompt when the source file
    has one (``None`` otherwise: :func:`build_prompt` applies the template). ``category`` is Dolly's
    ``category`` or MiniLLM's ``topic``.
    """

    instruction: str
    input: str = ""
    references: list[str] = field(default_factory=list)
    prompt: str | None = None
    category: str | None = None

    @property
    def response(self) -> str:
        """The first reference: the training target."""
        if not self.references:
            raise ValueError("record has no reference response")
        return self.references[0]


# --------------------------------------------------------------------------------------- reading


def _require_str(obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in obj or obj[key] is None:
        if default is not None:
            return default
        raise ValueError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _references(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(
        f"{where}: field {key!r} must be a string or a list of strings, got {type(value).__name__}"
    )


def parse_instruction_record(
    obj: Mapping[str, Any],
    format: Format = "auto",
    where: str = "record",
    allow_empty_response: bool = False,
) -> InstructionRecord:
    """Turn one decoded JSON object into an :class:`InstructionRecord`.

    ``format="auto"`` picks Dolly when the object has ``response`` and MiniLLM when it has
    ``output``. ``where`` prefixes error messages (the readers pass ``"file:line"``). A missing
    response, or one that is empty (every reference blank) unless ``allow_empty_response``, raises
    ``ValueError``.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if format == "auto":
        if "response" in obj:
            format = "dolly"
        elif "output" in obj:
            format = "minillm"
        else:
            raise ValueError(
                f"{where}: record has no response (neither a Dolly 'response' nor a MiniLLM "
                f"'output' field); fields present: {sorted(obj)}"
            )
    if format == "dolly":
        resp_key, input_key, cat_key = "response", "context", "category"
    elif format == "minillm":
        resp_key, input_key, cat_key = "output", "input", "topic"
    else:
        raise ValueError(f"format must be 'auto', 'dolly' or 'minillm', got {format!r}")
    if resp_key not in obj or obj[resp_key] is None:
        raise ValueError(f"{where}: record has no response (missing field {resp_key!r})")
    references = _references(obj[resp_key], resp_key, where)
    if not allow_empty_response and not any(r.strip() for r in references):
        raise ValueError(f"{where}: record has an empty response (field {resp_key!r})")
    prompt = obj.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
    category = obj.get(cat_key, obj.get("category"))
    return InstructionRecord(
        instruction=_require_str(
            obj, "instruction", where, default="" if prompt is not None else None
        ),
        input=_require_str(obj, input_key, where, default=""),
        references=references,
        prompt=prompt,
        category=category if isinstance(category, str) else None,
    )


def read_instruction_jsonl(
    path: str | os.PathLike[str],
    format: Format = "auto",
    allow_empty_response: bool = False,
    limit: int | None = None,
) -> list[InstructionRecord]:
    """Read a Dolly- or MiniLLM-format JSONL file into records (see the module docstring).

    Every line must hold one JSON object: an empty or malformed line raises ``ValueError`` naming
    the file and the 1-based line number, as does a record without a response. ``limit`` stops
    after that many records.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"instruction file {str(p)!r} does not exist")
    records: list[InstructionRecord] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and len(records) >= limit:
                break
            where = f"{p}:{lineno}"
            if not line.strip():
                raise ValueError(f"{where}: empty line (every line must hold one JSON object)")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            records.append(parse_instruction_record(obj, format, where, allow_empty_response))
    return records


# ---------------------------------------------------------------------------------------- prompt


def build_prompt(record: InstructionRecord) -> str:
    """The record's own ``prompt`` if it has one, else the Alpaca template (module docstring).

    As in MiniLLM, an input counts as absent only when it is the empty string.
    """
    if record.prompt is not None:
        return record.prompt
    if len(record.input) == 0:
        return PROMPT_NO_INPUT.format(instruction=record.instruction)
    return PROMPT_WITH_INPUT.format(instruction=record.instruction, input=record.input)


# ---------------------------------------------------------------------------------- tokenisation


@dataclass
class TokenizationStats:
    """Counts from :func:`tokenize_records`: how many prompts/responses were cut."""

    n_examples: int = 0
    n_prompt_truncated: int = 0
    n_response_truncated: int = 0
    n_prompt_tokens: int = 0
    n_response_tokens: int = 0

    def log_warnings(self, max_prompt_length: int, max_length: int, prompt_truncation: str) -> None:
        """Emit one ``logging`` warning when anything was cut."""
        if self.n_prompt_truncated or self.n_response_truncated:
            logger.warning(
                "truncated %d of %d prompts to %d tokens (keeping the %s) and %d of %d responses "
                "to fit %d tokens in total",
                self.n_prompt_truncated,
                self.n_examples,
                max_prompt_length,
                "end" if prompt_truncation == "left" else "start",
                self.n_response_truncated,
                self.n_examples,
                max_length,
            )


def special_prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special ids a tokenizer puts *before* the text with ``add_special_tokens=True``.

    ``[bos]`` for Llama-style tokenizers, ``[]`` for GPT-2-style ones. Found by encoding a probe
    with and without special tokens.
    """
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _check_lengths(max_prompt_length: int, max_length: int | None, n_prefix: int) -> None:
    if isinstance(max_prompt_length, bool) or not isinstance(max_prompt_length, int):
        raise TypeError(f"max_prompt_length must be an int, got {type(max_prompt_length).__name__}")
    if max_prompt_length <= n_prefix:
        raise ValueError(
            f"max_prompt_length must exceed the {n_prefix} special prefix token(s), got {max_prompt_length}"
        )
    if max_length is not None and max_length <= max_prompt_length:
        raise ValueError(
            f"max_length ({max_length}) must be greater than max_prompt_length ({max_prompt_length}) "
            "so that every example keeps at least one response token"
        )


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_prompt_length: int = 256,
    prompt_truncation: Literal["left", "right"] = "left",
    prefix: Sequence[int] | None = None,
) -> tuple[list[int], bool]:
    """Encode a prompt as ``prefix ++ body``, cut to ``max_prompt_length``; return ``(ids, cut)``.

    ``prefix`` defaults to :func:`special_prefix_ids` (e.g. ``[bos]``) and is always kept; the body
    keeps its last tokens (``"left"``: drop from the left) or its first (``"right"``). Special
    tokens a tokenizer appends after the text (an eos) are never added: the response follows.
    """
    if prompt_truncation not in ("left", "right"):
        raise ValueError(f"prompt_truncation must be 'left' or 'right', got {prompt_truncation!r}")
    pre = list(special_prefix_ids(tokenizer) if prefix is None else prefix)
    _check_lengths(max_prompt_length, None, len(pre))
    body = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    room = max_prompt_length - len(pre)
    if len(body) <= room:
        return pre + body, False
    body = body[-room:] if prompt_truncation == "left" else body[:room]
    return pre + body, True


def tokenize_record(
    tokenizer: PreTrainedTokenizerBase,
    record: InstructionRecord,
    max_prompt_length: int = 256,
    max_length: int = 512,
    prompt_truncation: Literal["left", "right"] = "left",
    prefix: Sequence[int] | None = None,
) -> tuple[dict[str, list[int]], bool, bool]:
    """Tokenise one record for training; return ``(example, prompt_cut, response_cut)``.

    ``example`` has ``input_ids``, ``attention_mask`` (all ones) and ``labels`` (``-100`` on the
    prompt, the token ids on the response and its eos). See the module docstring for the rule.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; it is appended to every response")
    pre = list(special_prefix_ids(tokenizer) if prefix is None else prefix)
    _check_lengths(max_prompt_length, max_length, len(pre))
    prompt_ids, prompt_cut = encode_prompt(
        tokenizer, build_prompt(record), max_prompt_length, prompt_truncation, prefix=pre
    )
    response_ids = [*tokenizer(record.response, add_special_tokens=False)["input_ids"], eos]
    room = max_length - len(prompt_ids)
    response_cut = len(response_ids) > room
    response_ids = response_ids[:room]
    example = {
        "input_ids": prompt_ids + response_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(response_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }
    return example, prompt_cut, response_cut


def tokenize_records(
    tokenizer: PreTrainedTokenizerBase,
    records: Iterable[InstructionRecord],
    max_prompt_length: int = 256,
    max_length: int = 512,
    prompt_truncation: Literal["left", "right"] = "left",
) -> tuple[list[dict[str, list[int]]], TokenizationStats]:
    """Tokenise records with :func:`tokenize_record`; count and log-warn the truncations."""
    pre = special_prefix_ids(tokenizer)
    examples: list[dict[str, list[int]]] = []
    stats = TokenizationStats()
    for record in records:
        ex, p_cut, r_cut = tokenize_record(
            tokenizer, record, max_prompt_length, max_length, prompt_truncation, prefix=pre
        )
        examples.append(ex)
        stats.n_examples += 1
        stats.n_prompt_truncated += int(p_cut)
        stats.n_response_truncated += int(r_cut)
        n_prompt = sum(1 for v in ex["labels"] if v == IGNORE_INDEX)
        stats.n_prompt_tokens += n_prompt
        stats.n_response_tokens += len(ex["labels"]) - n_prompt
    stats.log_warnings(max_prompt_length, max_length, prompt_truncation)
    return examples, stats


# ------------------------------------------------------------------------------------- batching

_PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX}


def collate_batch(
    examples: Sequence[Mapping[str, Sequence[int]]],
    pad_token_id: int,
    padding_side: Literal["right", "left"] = "right",
    pad_to_multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """Pad examples to the longest in the batch and stack them into ``long`` tensors.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` with 0, ``labels`` with
    ``-100`` (any other key with ``pad_token_id``). Right padding for training (positions stay
    0..n-1 without position ids); left padding for generation (every prompt ends at the last
    column, where new tokens are appended).
    """
    if not examples:
        raise ValueError("examples must be a non-empty sequence")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise ValueError(
            f"pad_token_id must be an int (set tokenizer.pad_token), got {pad_token_id!r}"
        )
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    keys = list(examples[0])
    if "input_ids" not in keys:
        raise ValueError(f"examples must have 'input_ids', got keys {keys}")
    lengths = [len(ex["input_ids"]) for ex in examples]
    for i, ex in enumerate(examples):
        if list(ex) != keys or any(len(ex[k]) != lengths[i] for k in keys):
            raise ValueError(f"example {i} has keys/lengths inconsistent with example 0 ({keys})")
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    batch: dict[str, Tensor] = {}
    for key in keys:
        out = torch.full(
            (len(examples), width), _PAD_VALUES.get(key, pad_token_id), dtype=torch.long
        )
        for i, ex in enumerate(examples):
            row = torch.as_tensor(list(ex[key]), dtype=torch.long)
            if padding_side == "right":
                out[i, : len(row)] = row
            else:
                out[i, width - len(row) :] = row
        batch[key] = out
    return batch


@dataclass(frozen=True)
class InstructionCollator:
    """``collate_fn`` for a ``DataLoader`` over tokenised examples (see :func:`collate_batch`)."""

    pad_token_id: int
    padding_side: Literal["right", "left"] = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Tensor]:
        return collate_batch(
            examples, self.pad_token_id, self.padding_side, self.pad_to_multiple_of
        )


# ---------------------------------------------------------------------------------- splitting


def filter_records(
    records: Iterable[InstructionRecord],
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_length: int = 256,
) -> tuple[list[InstructionRecord], int, int]:
    """Drop what MiniLLM's pre-processing drops; return ``(kept, n_empty, n_long_prompt)``.

    A record goes when its response is empty/whitespace, or (given a ``tokenizer``) when its
    prompt takes more than ``max_prompt_length`` tokens, special prefix included (MiniLLM
    ``tools/process_data_dolly.py`` skips those rather than truncating them).
    """
    pre = special_prefix_ids(tokenizer) if tokenizer is not None else []
    kept: list[InstructionRecord] = []
    n_empty = n_long = 0
    for r in records:
        if not r.references or not r.references[0].strip():
            n_empty += 1
            continue
        if tokenizer is not None:
            n = len(pre) + len(tokenizer(build_prompt(r), add_special_tokens=False)["input_ids"])
            if n > max_prompt_length:
                n_long += 1
                continue
        kept.append(r)
    return kept, n_empty, n_long


@dataclass
class DollySplit:
    """Train/valid/test records from :func:`split_dolly` and how many were filtered out."""

    train: list[InstructionRecord]
    valid: list[InstructionRecord]
    test: list[InstructionRecord]
    n_dropped_empty: int = 0
    n_dropped_long_prompt: int = 0


def split_dolly(
    records: Sequence[InstructionRecord],
    seed: int,
    n_valid: int = 1000,
    n_test: int = 500,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_prompt_length: int = 256,
) -> DollySplit:
    """MiniLLM's Dolly protocol: filter, shuffle with ``seed``, hold out ``n_test`` then ``n_valid``.

    Records are first filtered by :func:`filter_records` (empty responses; with a ``tokenizer``,
    prompts over ``max_prompt_length`` tokens). The kept records are shuffled by
    ``random.Random(seed)``; the first ``n_test`` form the test set, the next ``n_valid`` the
    validation set, the rest the training set. Deterministic: the same records and seed give the
    same split on every machine. (MiniLLM filters after taking its 1,000 validation rows, so its
    validation set has slightly fewer than 1,000; filtering first gives exact sizes.)
    """
    for name, n in (("n_valid", n_valid), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    kept, n_empty, n_long = filter_records(records, tokenizer, max_prompt_length)
    if len(kept) < n_valid + n_test:
        raise ValueError(
            f"only {len(kept)} records remain after filtering ({n_empty} empty responses, {n_long} "
            f"prompts over {max_prompt_length} tokens); need n_test + n_valid = {n_test + n_valid}"
        )
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    shuffled = [kept[i] for i in order]
    return DollySplit(
        train=shuffled[n_test + n_valid :],
        valid=shuffled[n_test : n_test + n_valid],
        test=shuffled[:n_test],
        n_dropped_empty=n_empty,
        n_dropped_long_prompt=n_long,
    )
