"""Time cost of LoCa and logit standardization (LoCa, Table 7): loss, batch and epoch time.

Three numbers per loss variant, each the median of repeated measurements on random data:

* **loss time** — forward + backward of the distillation loss alone on ``(B, C)`` logits;
* **batch time** — one training step: teacher forward (eval, inference mode) + student forward,
  ``CE + loss`` backward and an SGD step;
* **epoch time** — batch time × ``ceil(dataset_size / B)`` (an estimate: no data loading).

Variants are measured interleaved (one repetition of each in turn), so slow drift of the machine
(thermal, other processes) affects all of them alike; the overhead columns are relative to the
first variant (plain KD by default).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from logitkd.losses import dkd_loss, kd_loss

__all__ = [
    "VARIANTS",
    "TimingRow",
    "loss_function",
    "measure_timing",
    "median_seconds",
    "time_loss",
    "timing_markdown",
]

# name -> (loss family, uses LoCa, uses standardization)
VARIANTS: dict[str, tuple[str, bool, bool]] = {
    "KD": ("kd", False, False),
    "KD+LoCa": ("kd", True, False),
    "KD+LS": ("kd", False, True),
    "KD+LS+LoCa": ("kd", True, True),
    "DKD": ("dkd", False, False),
    "DKD+LoCa": ("dkd", True, False),
}
DEFAULT_VARIANTS: tuple[str, ...] = ("KD", "KD+LoCa", "KD+LS", "KD+LS+LoCa")

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TimingRow:
    """Medians for one variant: seconds per loss call and per batch, and the epoch estimate."""

    variant: str
    loss_s: float
    batch_s: float
    epoch_s: float
    loss_overhead: float  # relative to the reference variant: loss_s / ref - 1
    batch_overhead: float


def loss_function(variant: str, temperature: float = 4.0, loca_alpha: float = 0.9) -> LossFn:
    """The distillation loss of a named variant (:data:`VARIANTS`) as ``f(student, teacher, y)``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    family, loca, ls = VARIANTS[variant]
    alpha = loca_alpha if loca else None
    if family == "kd":
        return lambda s, t, y: kd_loss(
            s, t, y, temperature=temperature, loca_alpha=alpha, standardize=ls
        )
    return lambda s, t, y: dkd_loss(
        s, t, y, temperature=temperature, loca_alpha=alpha, standardize=ls
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats=} {warmup=}")
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_loss(
    loss: LossFn,
    batch_size: int,
    num_classes: int,
    *,
    repeats: int = 30,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> float:
    """Median seconds of ``loss(student, teacher, y).backward()`` on random ``(B, C)`` logits."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch_size, num_classes, generator=g).to(device).requires_grad_()
    teacher = torch.randn(batch_size, num_classes, generator=g).to(device)
    target = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)

    def step() -> None:
        student.grad = None
        loss(student, teacher, target).backward()

    return median_seconds(step, repeats, warmup, device)


def _model(spec: str | nn.Module, num_classes: int, image_shape: tuple[int, int, int]) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    # Any model the trainer builds: the CIFAR zoo, the small models (mlp, digits_cnn), ImageNet.
    from logitkd.vision.models_small import build_model

    return build_model(spec, num_classes, image_shape)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def measure_timing(
    teacher: str | nn.Module,
    student: str | nn.Module,
    *,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    batch_size: int = 64,
    num_classes: int = 100,
    image_shape: tuple[int, int, int] = (3, 32, 32),
    dataset_size: int = 50_000,
    repeats: int = 5,
    warmup: int = 1,
    loss_repeats: int = 30,
    temperature: float = 4.0,
    loca_alpha: float = 0.9,
    ce_weight: float = 1.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[TimingRow]:
    """Loss, batch and epoch time of each variant for a teacher → student pair (module doc).

    ``teacher``/``student`` are model names the trainer accepts
    (:func:`logitkd.vision.models_small.build_model`: CIFAR zoo, small models, ImageNet) or
    modules; weights are random (time does not depend on them). Returns one row per variant in
    order; overheads are relative to the first variant.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("num_classes", num_classes),
        ("dataset_size", dataset_size),
        ("repeats", repeats),
        ("loss_repeats", loss_repeats),
    ):
        _check_positive_int(name, value)
    if not variants:
        raise ValueError("variants must name at least one variant")
    losses = {v: loss_function(v, temperature, loca_alpha) for v in variants}
    device = torch.device(device)
    torch.manual_seed(seed)
    t_model = _model(teacher, num_classes, image_shape).to(device).eval()
    s_model = _model(student, num_classes, image_shape).to(device).train()
    opt = torch.optim.SGD(s_model.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, *image_shape, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)

    def step(loss: LossFn) -> None:
        with torch.inference_mode():
            t_logits = t_model(images)
        s_logits = s_model(images)
        total = ce_weight * F.cross_entropy(s_logits, labels) + loss(s_logits, t_logits, labels)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    for _ in range(warmup):
        for loss in losses.values():
            step(loss)
    batch_times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(repeats):  # interleaved: every variant once per round
        for v, loss in losses.items():
            _sync(device)
            start = time.perf_counter()
            step(loss)
            _sync(device)
            batch_times[v].append(time.perf_counter() - start)
    loss_times = {
        v: time_loss(loss, batch_size, num_classes, repeats=loss_repeats, device=device, seed=seed)
        for v, loss in losses.items()
    }
    steps = math.ceil(dataset_size / batch_size)
    ref = variants[0]
    ref_loss, ref_batch = loss_times[ref], statistics.median(batch_times[ref])
    rows = []
    for v in variants:
        batch_s = statistics.median(batch_times[v])
        rows.append(
            TimingRow(
                variant=v,
                loss_s=loss_times[v],
                batch_s=batch_s,
                epoch_s=batch_s * steps,
                loss_overhead=loss_times[v] / ref_loss - 1.0,
                batch_overhead=batch_s / ref_batch - 1.0,
            )
        )
    return rows


def timing_markdown(rows: Sequence[TimingRow], caption: str = "") -> str:
    """A Markdown table: loss ms, batch ms, epoch estimate and overheads vs the first row."""
    if not rows:
        raise ValueError("rows must not be empty")
    ref = rows[0].variant
    lines = [caption, ""] if caption else []
    lines += [
        f"| variant | KD-loss time (ms) | vs {ref} | batch time (ms) | vs {ref} | epoch estimate |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        minutes, seconds = divmod(r.epoch_s, 60.0)
        lines.append(
            f"| {r.variant} | {r.loss_s * 1e3:.3f} | {r.loss_overhead:+.1%} | "
            f"{r.batch_s * 1e3:.1f} | {r.batch_overhead:+.1%} | {int(minutes)} min {seconds:.0f} s |"
        )
    return "\n".join(lines) + "\n"
