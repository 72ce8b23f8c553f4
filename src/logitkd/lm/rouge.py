"""Evaluation of instruction-following students: Rouge-L and the teacher's token mis-instruction.

Rouge-L is scored exactly as MiniLLM's ``rouge_metric.py`` (also used by DistiLLM and LoCa):
Google's ``rouge_score`` with ``RougeScorer(["rougeL"], use_stemmer=True)``. Its tokenizer
lower-cases, replaces every character outside ``[a-z0-9]`` by a space, splits on whitespace and
Porter-stems tokens longer than three characters (nltk's stemmer: pure code, nothing downloaded).
With ``LCS`` the longest common subsequence of the two token lists::

    P = LCS / len(prediction)    R = LCS / len(reference)    F = 2 P R / (P + R)   (0 if LCS = 0)

A sample scores the best F over its references; the corpus score is the mean over samples × 100.
MiniLLM's ``normalize_answer`` (punctuation removal) only feeds its exact-match metric, not
Rouge-L, so it is not applied here. Unlike MiniLLM, which silently truncates to the shorter of
predictions/references, a length mismatch is an error.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from logitkd.calibration import misinstruction_mask
from logitkd.lm.data import IGNORE_INDEX, TokenizationStats, collate_batch, tokenize_records

__all__ = [
    "MisinstructionStats",
    "evaluate_rouge",
    "rouge_l_fmeasure",
    "rouge_l_per_sample",
    "summarize_over_seeds",
    "token_misinstruction_on_records",
    "token_misinstruction_ratio",
]


@functools.lru_cache(maxsize=1)
def _scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Rouge-L needs the 'rouge-score' package: pip install 'logitkd[lm]'"
        ) from e
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_fmeasure(prediction: str, reference: str) -> float:
    """Rouge-L F-measure in [0, 1] of one prediction against one reference (module docstring)."""
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError(
            f"prediction and reference must be strings, got {type(prediction).__name__} and "
            f"{type(reference).__name__}"
        )
    return float(_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure)


def _check_references(references_list: Sequence[Sequence[str]], n: int) -> None:
    if isinstance(references_list, str) or len(references_list) != n:
        got = "a string" if isinstance(references_list, str) else f"{len(references_list)} entries"
        raise ValueError(f"references_list must have one entry per prediction ({n}), got {got}")
    for i, refs in enumerate(references_list):
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(
                f"references_list[{i}] must be a list of reference strings (wrap a single reference "
                f"as [ref]), got {type(refs).__name__}"
            )
        if len(refs) == 0:
            raise ValueError(f"references_list[{i}] is empty; every sample needs a reference")


def rouge_l_per_sample(
    predictions: Sequence[str], references_list: Sequence[Sequence[str]]
) -> list[float]:
    """Per-sample Rouge-L F in [0, 1]: the maximum over that sample's references."""
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise TypeError(f"predictions must be a list of strings, got {type(predictions).__name__}")
    _check_references(references_list, len(predictions))
    return [
        max(rouge_l_fmeasure(pred, ref) for ref in refs)
        for pred, refs in zip(predictions, references_list)
    ]


def evaluate_rouge(predictions: Sequence[str], references_list: Sequence[Sequence[str]]) -> float:
    """Corpus Rouge-L in [0, 100]: mean over samples of the best F over references, × 100."""
    if len(predictions) == 0:
        raise ValueError("predictions must not be empty")
    scores = rouge_l_per_sample(predictions, references_list)
    return 100.0 * math.fsum(scores) / len(scores)


def summarize_over_seeds(scores: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    """``(mean, std)`` of one score over generation seeds (the papers report 5 seeds).

    ``ddof=1`` (default) is the sample standard deviation, ``ddof=0`` numpy's population one. With
    fewer than ``ddof + 1`` scores the spread is undefined and ``std`` is ``nan``.
    """
    values = [float(s) for s in scores]
    if not values:
        raise ValueError("scores must not be empty")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"scores must be finite, got {values}")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
    mean = statistics.fmean(values)
    if len(values) <= ddof:
        return mean, float("nan")
    std = statistics.stdev(values) if ddof == 1 else statistics.pstdev(values)
    return mean, std


@dataclass(frozen=True)
class MisinstructionStats:
    """Teacher mis-instruction over response tokens (LoCa, Fig. 2 for LMs).

    ``ratio`` over all scored tokens; ``ratio_first`` over the first response token of each
    sequence (the hardest to predict from the prompt alone); ``ratio_rest`` over the others.
    A group with no tokens has ratio ``nan``. The counts are the state; the ratios derive from
    them (``ratio = n_mis / n_tokens``), so exact counts are always at hand.
    """

    n_tokens: int
    n_first: int
    n_mis: int
    n_mis_first: int

    @property
    def n_rest(self) -> int:
        return self.n_tokens - self.n_first

    @property
    def n_mis_rest(self) -> int:
        return self.n_mis - self.n_mis_first

    @property
    def ratio(self) -> float:
        return _ratio(self.n_mis, self.n_tokens)

    @property
    def ratio_first(self) -> float:
        return _ratio(self.n_mis_first, self.n_first)

    @property
    def ratio_rest(self) -> float:
        return _ratio(self.n_mis_rest, self.n_rest)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def token_misinstruction_ratio(
    teacher_model: nn.Module,
    batches: Iterable[Mapping[str, Tensor]],
    vocab_size: int | None = None,
) -> MisinstructionStats:
    """Fraction of response tokens whose teacher argmax differs from the reference next token.

    Each batch holds ``input_ids``, ``attention_mask`` and ``labels`` as produced by
    :func:`logitkd.lm.data.collate_batch` (labels aligned with the inputs, ``-100`` off the
    response). As in causal-LM training, the logits at position ``t`` predict ``labels[t + 1]``.
    ``vocab_size`` slices the logits to the vocabulary shared with a student (see
    :func:`logitkd.lm.models.aligned_vocab_size`) so that a padded row can never be the argmax.
    """
    device = next(teacher_model.parameters()).device
    was_training = teacher_model.training
    teacher_model.eval()
    n_mis = n_tok = mis_first = n_first = 0
    try:
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                missing = {"input_ids", "labels"} - set(batch)
                if missing:
                    raise ValueError(
                        f"batch {i} lacks {sorted(missing)}; expected collate_batch output"
                    )
                labels = batch["labels"].to(device)
                kwargs = {"input_ids": batch["input_ids"].to(device)}
                if "attention_mask" in batch:
                    kwargs["attention_mask"] = batch["attention_mask"].to(device)
                logits = teacher_model(**kwargs).logits
                if vocab_size is not None:
                    logits = logits[..., :vocab_size]
                target = labels[:, 1:]
                valid = target != IGNORE_INDEX
                first = valid & (labels[:, :-1] == IGNORE_INDEX)
                mis = misinstruction_mask(logits[:, :-1][valid].float(), target[valid])
                n_mis += int(mis.sum())
                n_tok += int(valid.sum())
                mis_first += int(mis[first[valid]].sum())
                n_first += int(first.sum())
    finally:
        teacher_model.train(was_training)
    if n_tok == 0:
        raise ValueError("batches contain no response tokens (every label is -100)")
    return MisinstructionStats(n_tokens=n_tok, n_first=n_first, n_mis=n_mis, n_mis_first=mis_first)


def token_misinstruction_on_records(
    teacher_model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    *,
    max_prompt_length: int = 256,
    max_length: int = 512,
    prompt_truncation: str = "left",
    batch_size: int = 8,
    vocab_size: int | None = None,
) -> tuple[MisinstructionStats, TokenizationStats]:
    """:func:`token_misinstruction_ratio` of ``teacher_model`` on instruction records.

    The records (:class:`~logitkd.lm.data.InstructionRecord`) are tokenised by
    :func:`~logitkd.lm.data.tokenize_records` (Alpaca template, response-only labels, the
    truncation rule of :mod:`logitkd.lm.data`) and batched by
    :func:`~logitkd.lm.data.collate_batch` (right padding) over consecutive groups of
    ``batch_size``. The one path behind ``logitkd lm evaluate``'s teacher ratio and ``logitkd
    analyze lm-misinstruction``. Defaults are those of :class:`logitkd.lm.config.DataSection`.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not records:
        raise ValueError("records must not be empty")
    examples, tok_stats = tokenize_records(
        tokenizer, records, max_prompt_length, max_length, prompt_truncation
    )
    pad = tokenizer.pad_token_id
    # A generator: only one padded batch is alive at a time.
    batches = (
        collate_batch(examples[i : i + batch_size], pad)
        for i in range(0, len(examples), batch_size)
    )
    return token_misinstruction_ratio(teacher_model, batches, vocab_size), tok_stats
