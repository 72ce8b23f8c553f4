"""How often does a teacher mis-instruct? (LoCa, Fig. 2: the teacher's top class is not the label.)

For a dataset of ``N`` samples with labels ``y_i`` and teacher logits ``z_i``::

    mis_c   = #{i : y_i = c, argmax z_i != y_i}       n_c = #{i : y_i = c}
    ratio_c = mis_c / n_c                              overall = sum_c mis_c / N

LoCa measures it on the training set, where augmentation (random crop + flip) makes a well-fit
teacher err more often than on the clean images it memorised; both are reported here. For
language models the ratio is over response tokens, split by position type (the first response
token vs the rest), via :func:`logitkd.lm.rouge.token_misinstruction_ratio`;
:func:`lm_misinstruction_on_records` feeds it instruction records tokenised and batched exactly as
``logitkd lm evaluate`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from logitkd.calibration import misinstruction_mask

__all__ = [
    "MisinstructionReport",
    "collect_logits",
    "lm_misinstruction",
    "lm_misinstruction_bar_plot",
    "lm_misinstruction_counts",
    "lm_misinstruction_markdown",
    "lm_misinstruction_on_records",
    "misinstruction_bar_plot",
    "misinstruction_markdown",
    "per_class_bar_plot",
    "per_class_counts",
    "teacher_misinstruction",
]


@dataclass(frozen=True)
class MisinstructionReport:
    """Per-class mis-instruction counts of one teacher on one dataset pass."""

    label: str
    augmented: bool
    mis_counts: tuple[int, ...]
    totals: tuple[int, ...]
    class_names: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return sum(self.totals)

    @property
    def overall(self) -> float:
        """``sum_c mis_c / N`` (NaN for an empty pass)."""
        return sum(self.mis_counts) / self.n if self.n else float("nan")

    @property
    def per_class(self) -> tuple[float, ...]:
        """``mis_c / n_c`` per class; NaN for a class with no samples."""
        return tuple(m / t if t else float("nan") for m, t in zip(self.mis_counts, self.totals))


def per_class_counts(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(mis_c, n_c)`` for ``c`` in ``[0, num_classes)`` as int64 tensors (module docstring).

    ``logits`` is ``(N, C)`` with ``C == num_classes``, ``labels`` ``(N,)`` class indices.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(
            f"logits must be a (N, C) tensor, got shape {tuple(getattr(logits, 'shape', ()))}"
        )
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} classes but num_classes={num_classes}; the model's "
            "output size must match the dataset"
        )
    mis = misinstruction_mask(logits, labels)  # validates dtype, shape and label range
    if bool((labels < 0).any()):  # misinstruction_mask lets ignore_index (-100) through
        raise ValueError("labels must be class indices >= 0 (no ignored positions here)")
    totals = torch.bincount(labels.cpu(), minlength=num_classes)
    mis_counts = torch.bincount(labels.cpu()[mis.cpu()], minlength=num_classes)
    return mis_counts, totals


@torch.inference_mode()
def collect_logits(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 256,
    augment: Callable[[Tensor], Tensor] | None = None,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
    limit: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run ``model`` (eval mode) over an :class:`~logitkd.vision.data.ArrayDataset` in order.

    Batches come from :func:`logitkd.vision.data.iterate_batches` (``augment`` sees raw images
    before normalisation, as in training); ``input_transform`` is applied to the normalised batch
    (e.g. repeating a grey channel for a 3-channel model). ``limit`` keeps the first ``limit``
    samples. Returns float32 CPU logits ``(N, C)`` and int64 labels ``(N,)``; the model's
    train/eval mode is restored.
    """
    from logitkd.vision.data import iterate_batches

    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        dataset = dataset.subset(range(min(limit, len(dataset))))
    was_training = model.training
    model.eval()
    outs: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        for images, y in iterate_batches(
            dataset, batch_size, shuffle=False, augment=augment, device=device
        ):
            if input_transform is not None:
                images = input_transform(images)
            outs.append(model(images).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def teacher_misinstruction(
    model: nn.Module,
    dataset: Any,
    *,
    label: str = "teacher",
    augment: bool = False,
    padding: int = 4,
    seed: int = 0,
    batch_size: int = 256,
    input_transform: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
    limit: int | None = None,
) -> MisinstructionReport:
    """Mis-instruction counts of ``model`` on ``dataset``, on clean images or (``augment``) with
    the training augmentation :func:`logitkd.vision.data.random_crop_flip` (``padding``, drawn
    from a generator seeded with ``seed``, so a pass is reproducible)."""
    from logitkd.vision.data import random_crop_flip

    aug = None
    if augment:
        g = torch.Generator().manual_seed(seed)

        def aug(x: Tensor) -> Tensor:
            return random_crop_flip(x, padding, generator=g)

    logits, labels = collect_logits(
        model,
        dataset,
        batch_size=batch_size,
        augment=aug,
        input_transform=input_transform,
        device=device,
        limit=limit,
    )
    mis, totals = per_class_counts(logits, labels, int(dataset.num_classes))
    return MisinstructionReport(
        label=label,
        augmented=augment,
        mis_counts=tuple(int(v) for v in mis),
        totals=tuple(int(v) for v in totals),
        class_names=tuple(getattr(dataset, "classes", ()) or ()),
    )


def misinstruction_markdown(reports: Sequence[MisinstructionReport]) -> str:
    """A Markdown table: one row per (teacher, augmentation) pass, overall then per class (%)."""
    if not reports:
        raise ValueError("reports must not be empty")
    num_classes = len(reports[0].totals)
    names = reports[0].class_names or tuple(str(c) for c in range(num_classes))
    header = ["teacher", "augmentation", "samples", "overall %", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in reports:
        cells = [
            r.label,
            "crop+flip" if r.augmented else "none",
            str(r.n),
            f"{100 * r.overall:.2f}",
        ]
        cells += [f"{100 * v:.2f}" for v in r.per_class]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def misinstruction_bar_plot(
    reports: Sequence[MisinstructionReport], path: str | Path, title: str = ""
) -> Path:
    """Grouped bars (LoCa Fig. 2): overall ratio per teacher, one bar per augmentation setting."""
    from logitkd.analysis.plots import grouped_bar_plot

    if not reports:
        raise ValueError("reports must not be empty")
    teachers = list(dict.fromkeys(r.label for r in reports))
    series: dict[str, list[float]] = {}
    for aug in (False, True):
        by_teacher = {r.label: r.overall for r in reports if r.augmented == aug}
        if by_teacher:
            name = "with crop+flip" if aug else "clean images"
            series[name] = [by_teacher.get(t, float("nan")) for t in teachers]
    return grouped_bar_plot(
        teachers,
        series,
        path,
        ylabel="mis-instruction ratio",
        title=title or "Teacher mis-instruction",
    )


def per_class_bar_plot(
    reports: Sequence[MisinstructionReport], path: str | Path, title: str = ""
) -> Path:
    """Grouped bars: per-class ratio, one bar per pass (teacher × augmentation)."""
    from logitkd.analysis.plots import grouped_bar_plot

    if not reports:
        raise ValueError("reports must not be empty")
    n = len(reports[0].totals)
    if any(len(r.totals) != n for r in reports):
        raise ValueError("all reports must have the same number of classes")
    names = reports[0].class_names or tuple(str(c) for c in range(n))
    series = {
        f"{r.label} ({'aug' if r.augmented else 'clean'})": list(r.per_class) for r in reports
    }
    return grouped_bar_plot(
        names, series, path, ylabel="mis-instruction ratio", title=title or "Per class"
    )


def lm_misinstruction(
    teacher_model: nn.Module, batches: Iterable[Mapping[str, Tensor]], vocab_size: int | None = None
) -> Any:
    """Token-level mis-instruction of a causal-LM teacher, overall and per position type (first
    response token vs the rest): :func:`logitkd.lm.rouge.token_misinstruction_ratio`, returned as
    its :class:`~logitkd.lm.rouge.MisinstructionStats`."""
    from logitkd.lm.rouge import token_misinstruction_ratio

    return token_misinstruction_ratio(teacher_model, batches, vocab_size=vocab_size)


def lm_misinstruction_bar_plot(
    stats_by_teacher: Mapping[str, Any], path: str | Path, title: str = ""
) -> Path:
    """Grouped bars per LM teacher: overall, first-token and later-token ratios."""
    from logitkd.analysis.plots import grouped_bar_plot

    if not stats_by_teacher:
        raise ValueError("stats_by_teacher must not be empty")
    teachers = list(stats_by_teacher)
    series = {
        "all response tokens": [stats_by_teacher[t].ratio for t in teachers],
        "first response token": [stats_by_teacher[t].ratio_first for t in teachers],
        "later tokens": [stats_by_teacher[t].ratio_rest for t in teachers],
    }
    return grouped_bar_plot(
        teachers,
        series,
        path,
        ylabel="mis-instruction ratio",
        title=title or "Token mis-instruction",
    )


def lm_misinstruction_on_records(
    teacher_model: nn.Module, tokenizer: Any, records: Sequence[Any], **kwargs: Any
) -> tuple[Any, Any]:
    """Token mis-instruction of ``teacher_model`` on instruction records, tokenised and batched
    exactly as ``logitkd lm evaluate`` does: :func:`logitkd.lm.rouge.token_misinstruction_on_records`
    (same keyword arguments). Returns ``(MisinstructionStats, TokenizationStats)``."""
    from logitkd.lm.rouge import token_misinstruction_on_records

    return token_misinstruction_on_records(teacher_model, tokenizer, records, **kwargs)


def lm_misinstruction_counts(stats: Any) -> dict[str, int]:
    """The integer counts of a :class:`~logitkd.lm.rouge.MisinstructionStats` by group (all
    response tokens, the first response token, later tokens), under the JSON report's keys."""
    return {
        "tokens": stats.n_tokens,
        "mis": stats.n_mis,
        "first_tokens": stats.n_first,
        "mis_first": stats.n_mis_first,
        "later_tokens": stats.n_rest,
        "mis_later": stats.n_mis_rest,
    }


def lm_misinstruction_markdown(stats_by_teacher: Mapping[str, Any]) -> str:
    """A Markdown table: one row per LM teacher with its response-token count and the
    mis-instruction ratio (%) overall, on the first response token and on the later tokens."""
    if not stats_by_teacher:
        raise ValueError("stats_by_teacher must not be empty")

    def pct(v: float) -> str:
        return "n/a" if v != v else f"{100 * v:.2f}"  # NaN: a group without tokens

    header = ["teacher", "tokens", "overall %", "first response token %", "later tokens %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, s in stats_by_teacher.items():
        cells = [label, str(s.n_tokens), pct(s.ratio), pct(s.ratio_first), pct(s.ratio_rest)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
