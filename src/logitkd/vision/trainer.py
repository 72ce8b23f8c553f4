"""The one vision trainer: teacher training and distillation with any logitkd loss module.

One step, whatever the method (the trainer only sums the dict the loss module returns)::

    images, labels --(batched crop/flip)--> weak view [--(strong_augment)--> strong view, MLKD]
    teacher (frozen, eval, torch.inference_mode) -> teacher logits (cloned out of inference mode)
    student -> student logits
    loss module(student, teacher, labels, epoch=1-based, *_strong=...) -> {"ce": .., "kd": ..}
    sum -> backward (DDP averages gradients) -> SGD step

Logged every epoch to ``metrics.jsonl``, ``metrics.csv`` and TensorBoard (rank 0 only): each
loss term, train/test top-1 and top-5, the teacher's mis-instruction ratio on the training
batches (share of samples whose teacher argmax is not the label; LoCa, arXiv 2409.04778), the
learning rate and images/s. ``summary.json`` reports both the best and the last test top-1.

Reproducibility: the epoch order is drawn from ``(seed, epoch)`` and the augmentation and torch
RNG are reseeded from ``(seed, epoch, step, rank)`` before every step, so a run resumed from any
checkpoint (end of epoch, or mid-epoch with ``checkpoint.every_steps``) replays exactly the
batches and random draws of an uninterrupted run; with ``deterministic=True`` the final weights
are bitwise equal (see ``tests/vision/test_checkpoint_resume.py``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from logitkd.config import config_to_dict
from logitkd.vision.checkpoint import FORMAT, atomic_save, capture_rng, load_checkpoint, restore_rng
from logitkd.vision.config import VisionConfig, resolve_config, resume_mismatch
from logitkd.vision.data import (
    ArrayDataset,
    build_dataset,
    epoch_indices,
    load_digits_split,
    normalize,
    pad_to_size,
    random_crop_flip,
    repeat_channels,
    to_unit_float,
)
from logitkd.vision.distributed import (
    DistInfo,
    all_reduce_sum,
    average_gradients,
    cleanup_distributed,
    init_distributed,
)
from logitkd.vision.losses_factory import (
    build_loss,
    loss_kwargs,
    needs_strong_view,
    needs_teacher,
)
from logitkd.vision.models import load_pretrained
from logitkd.vision.models_small import build_model

__all__ = [
    "TrainResult",
    "Trainer",
    "build_datasets",
    "evaluate_model",
    "resolve_device",
    "seed_everything",
    "strong_augment",
    "topk_correct",
]

StepCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU and CUDA); with ``deterministic`` also ask torch for
    deterministic kernels (``use_deterministic_algorithms``, cuDNN deterministic, no benchmark;
    ``CUBLAS_WORKSPACE_CONFIG`` is set as CUDA requires)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so per-step seeds never collide in practice."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + ((h << 6) & (2**64 - 1)) + (h >> 2))) & (2**64 - 1)
        h = (h * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return h & (2**63 - 1)


def resolve_device(spec: str, dist_info: DistInfo | None = None) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank if dist_info else 0)
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} but CUDA is not available; use device=cpu")
    if device.type == "cuda" and device.index is None and dist_info is not None:
        device = torch.device("cuda", dist_info.local_rank)
    return device


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have ``target`` among the top-``k`` logits, for each ``k`` (clipped to C)."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices
    hit = top == target.unsqueeze(-1)
    return [int(hit[:, : min(k, kmax)].any(dim=-1).sum()) for k in ks]


def strong_augment(
    images: Tensor,
    generator: torch.Generator,
    padding: int = 4,
    erase: float = 0.5,
    jitter: float = 0.4,
) -> Tensor:
    """The strong view for MLKD, batched on tensors (values in ``[0, 1]`` or uint8, before
    normalisation); returns float32 in ``[0, 1]``.

    Per sample, independently: random crop (zero padding ``padding``) + horizontal flip as the
    weak view; brightness and contrast jitter, ``x ← clamp((x - m)·c + m·b, 0, 1)`` with
    ``b, c ~ U(1 - jitter, 1 + jitter)`` and ``m`` the image mean; then one square of side
    ``round(erase · min(H, W))`` at a uniform position set to 0 (Cutout, DeVries & Taylor 2017).
    This stands in for the AutoAugment policy of the MLKD code: a stronger perturbation of the
    same images, cheap on CPU and GPU; it is not the same policy.
    """
    x = to_unit_float(random_crop_flip(images, padding, generator) if padding else images)
    n, _, h, w = x.shape
    dev = x.device
    u = torch.rand(n, 2, generator=generator).to(dev)
    bright = (1 - jitter + 2 * jitter * u[:, 0]).view(n, 1, 1, 1)
    contrast = (1 - jitter + 2 * jitter * u[:, 1]).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean * bright).clamp_(0, 1)
    side = round(erase * min(h, w))
    if side > 0:
        top = torch.randint(0, h - side + 1, (n,), generator=generator).to(dev)
        left = torch.randint(0, w - side + 1, (n,), generator=generator).to(dev)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + side).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + side).view(n, 1, 1))
        )
        x = x.masked_fill(inside.unsqueeze(1), 0.0)
    return x


def build_datasets(cfg: VisionConfig) -> tuple[Any, Any]:
    """``(train, test)`` of ``cfg.data`` (digits: the fixed stratified split of seed 0)."""
    name = cfg.data.name.lower().replace("-", "_")
    if name == "digits":
        train, test = _digits()
    else:
        if cfg.data.root is None:
            raise ValueError(f"data.root must name the folder holding {cfg.data.name}")
        train = build_dataset(name, cfg.data.root, "train")
        test = build_dataset(name, cfg.data.root, "test" if name != "imagenet" else "val")
    if cfg.data.train_subset is not None:
        train = _subset(train, cfg.data.train_subset)
    if cfg.data.test_subset is not None:
        test = _subset(test, cfg.data.test_subset)
    return _adapt_shape(train, cfg), _adapt_shape(test, cfg)


def _adapt_shape(ds: Any, cfg: VisionConfig) -> Any:
    if cfg.data.pad_to is None and cfg.data.channels is None:
        return ds
    if not isinstance(ds, ArrayDataset):
        raise ValueError(
            f"data.pad_to / data.channels apply to in-memory sets (cifar10, cifar100, "
            f"fashion_mnist, digits), not {cfg.data.name!r}"
        )
    if cfg.data.pad_to is not None:
        ds = pad_to_size(ds, cfg.data.pad_to)
    if cfg.data.channels is not None:
        ds = repeat_channels(ds, cfg.data.channels)
    return ds


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[ArrayDataset, ArrayDataset]:
    # Importing scikit-learn costs seconds; the demo builds many runs in one process.
    return load_digits_split(seed=0)


def _subset(ds: Any, n: int) -> Any:
    n = min(n, len(ds))
    if isinstance(ds, ArrayDataset):
        return ds.subset(torch.arange(n))
    return torch.utils.data.Subset(ds, range(n))


def _num_classes(ds: Any) -> int:
    base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
    return int(base.num_classes)


def _image_shape(ds: Any) -> tuple[int, int, int]:
    if isinstance(ds, ArrayDataset):
        return ds.image_shape
    return (3, 224, 224)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    ds: Any,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dist_info: DistInfo | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean CE of ``model`` on ``ds``, sharded over DDP ranks
    without padding (``arange(n)[rank::world]``) and summed, so the numbers are exact."""
    info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # n, top1, top5, ce_sum
    ctx = autocast or contextlib.nullcontext
    with torch.inference_mode():
        for images, labels in _eval_batches(ds, batch_size, device, info, channels_last):
            with ctx():
                logits = model(images)
            logits = logits.float()
            c1, c5 = topk_correct(logits, labels)
            ce = F.cross_entropy(logits, labels, reduction="sum")
            stats += torch.tensor([labels.numel(), c1, c5, float(ce)], dtype=torch.float64)
    model.train(was_training)
    stats = all_reduce_sum(stats.to(device)).cpu() if info.enabled else stats
    n = max(float(stats[0]), 1.0)
    return {
        "top1": 100.0 * float(stats[1]) / n,
        "top5": 100.0 * float(stats[2]) / n,
        "loss": float(stats[3]) / n,
    }


def _eval_batches(
    ds: Any, batch_size: int, device: torch.device | str, info: DistInfo, channels_last: bool
) -> Iterator[tuple[Tensor, Tensor]]:
    idx = torch.arange(len(ds))[info.rank :: info.world_size]
    if isinstance(ds, ArrayDataset):
        for start in range(0, len(idx), batch_size):
            ix = idx[start : start + batch_size]
            x = normalize(ds.images[ix].to(device), ds.mean, ds.std)
            yield _layout(x, channels_last), ds.labels[ix].to(device)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx.tolist()), batch_size=batch_size, shuffle=False
    )
    for x, y in loader:
        yield _layout(x.to(device), channels_last), y.to(device)


def _layout(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


class MetricsLogger:
    """Appends one row per epoch to ``metrics.jsonl`` and ``metrics.csv`` (header written once;
    the columns are fixed by the first row) and mirrors scalars to TensorBoard when available."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("note: tensorboard not installed; skipping TensorBoard logs", file=sys.stderr)

    def log(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        new = not self.csv.exists()
        fields = list(row) if new else next(csv.reader(self.csv.open()))
        with self.csv.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``summary.json``)."""

    best_top1: float
    best_epoch: int
    last_top1: float
    last_top5: float
    teacher_top1: float | None
    teacher_misinstruction: float | None  # on the training batches of the last epoch
    epochs: int
    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``cfg.model`` with the loss ``cfg.method`` (distilling from ``cfg.teacher`` unless
    the method is ``ce``). Datasets/models may be passed in (tests, the demo, benchmarks);
    otherwise they are built from the config.

    ``step_callback(epoch, step)`` runs after every optimiser step (and after any checkpoint of
    that step); raising in it stops the run as a crash would.
    """

    def __init__(
        self,
        cfg: VisionConfig,
        *,
        train_set: Any = None,
        test_set: Any = None,
        student: nn.Module | None = None,
        teacher: nn.Module | None = None,
        resume: bool = False,
        step_callback: StepCallback | None = None,
        write_outputs: bool = True,
    ) -> None:
        self.cfg = resolve_config(cfg)
        cfg = self.cfg
        self.dist = init_distributed(cfg.ddp_backend, resolve_device(cfg.device, None))
        self.device = resolve_device(cfg.device, self.dist)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        loss_kwargs(cfg.method)  # fail on a bad method before loading data or weights
        self.step_callback = step_callback
        self.write_outputs = write_outputs and self.dist.is_main
        self.run_dir = Path(cfg.run_dir or "runs/unnamed")
        if cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        seed_everything(cfg.seed, cfg.deterministic)

        if train_set is None or test_set is None:
            built = build_datasets(cfg)
            train_set = train_set if train_set is not None else built[0]
            test_set = test_set if test_set is not None else built[1]
        self.train_set, self.test_set = train_set, test_set
        num_classes = cfg.model.num_classes or _num_classes(train_set)
        if num_classes != _num_classes(train_set):
            raise ValueError(
                f"model.num_classes={num_classes} but dataset {cfg.data.name!r} has "
                f"{_num_classes(train_set)} classes"
            )
        self.num_classes = num_classes
        in_shape = _image_shape(train_set)

        # Student (or the teacher being trained).
        self.student = (
            student if student is not None else build_model(cfg.model.name, num_classes, in_shape)
        )
        if student is None and cfg.model.checkpoint:
            load_pretrained(self.student, cfg.model.checkpoint, strict=True)
        self.student.to(self.device)
        # Teacher.
        self.teacher: nn.Module | None = None
        if needs_teacher(cfg.method.name):
            self.teacher = teacher if teacher is not None else self._build_teacher(in_shape)
            self.teacher.to(self.device).eval().requires_grad_(False)
            self._check_class_counts(in_shape)
        if cfg.channels_last:
            self.student.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        self.loss_module = build_loss(cfg.method, num_classes).to(self.device)
        self.strong_view = needs_strong_view(cfg.method.name)

        # Optimiser over the student and any learnable loss parameters (CTKD's temperature).
        self.loss_params = [p for p in self.loss_module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            [*self.student.parameters(), *self.loss_params],
            lr=float(cfg.optim.lr or 0.05),
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
            nesterov=cfg.optim.nesterov,
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.schedule.milestones), gamma=cfg.schedule.gamma
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=cfg.amp == "fp16" and self.device.type == "cuda"
        )

        # DDP wrapping (the unwrapped module stays self.student for state dicts).
        self.model: nn.Module = self.student
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        self.student_fwd: nn.Module = self.model
        self.teacher_fwd: nn.Module | None = self.teacher
        if cfg.compile:
            self.student_fwd = torch.compile(self.model)  # type: ignore[assignment]
            if self.teacher is not None:
                self.teacher_fwd = torch.compile(self.teacher)  # type: ignore[assignment]

        # Progress state.
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.acc: dict[str, float | Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self.teacher_eval: dict[str, float] | None = None
        self._prepare_run_dir(resume)

    # ---------------------------------------------------------------- construction helpers

    def _build_teacher(self, in_shape: tuple[int, int, int]) -> nn.Module:
        cfg = self.cfg.teacher
        assert cfg.name is not None
        t_classes = cfg.num_classes or self.num_classes
        if t_classes != self.num_classes:
            raise ValueError(
                f"teacher.num_classes={t_classes} but the student has {self.num_classes} classes; "
                "logit distillation compares the two class distributions, so they must match"
            )
        model = build_model(cfg.name, t_classes, in_shape)
        if cfg.checkpoint is None:
            raise ValueError(
                f"teacher.checkpoint is not set: distilling from a randomly initialised "
                f"{cfg.name} is never what you want. Train one with `logitkd train` and pass "
                "teacher.checkpoint=RUN_DIR/best.pt (weights are never downloaded)"
            )
        return load_pretrained(model, cfg.checkpoint, strict=cfg.strict)

    def _check_class_counts(self, in_shape: tuple[int, int, int]) -> None:
        assert self.teacher is not None
        x = torch.zeros(2, *in_shape, device=self.device)
        with torch.inference_mode():
            was = self.student.training
            self.student.eval()
            s, t = self.student(x), self.teacher(x)
            self.student.train(was)
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(
                f"teacher outputs {t.shape[-1]} classes but the student {s.shape[-1]}: "
                "teacher and student must be built for the same classes"
            )

    def _prepare_run_dir(self, resume: bool) -> None:
        last = self.run_dir / "last.pt"
        saved_cfg = self.run_dir / "config.yaml"
        if resume:
            if not last.is_file():
                raise FileNotFoundError(
                    f"--resume: no checkpoint {last} to resume from (start a fresh run without "
                    "--resume, or point run_dir= at the run to continue)"
                )
            if saved_cfg.is_file():
                diff = resume_mismatch(yaml.safe_load(saved_cfg.read_text()) or {}, self.cfg)
                if diff:
                    raise ValueError(
                        f"cannot resume {self.run_dir}: its saved config.yaml differs from the "
                        "config given now:\n  " + "\n  ".join(diff) + "\nResume with the same "
                        "config (omit --config to reuse the saved one) or start a new run_dir"
                    )
            self._load_state(load_checkpoint(last))
        elif last.is_file():
            raise FileExistsError(
                f"{self.run_dir} already holds a run (last.pt); pass --resume to continue it or "
                "choose another run_dir=..."
            )
        if self.write_outputs:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False)
            )

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss_module": self.loss_module.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "rng": capture_rng(),
            "accumulators": self._global_accumulators(),
            "best": {"top1": self.best_top1, "epoch": self.best_epoch},
            "teacher_eval": self.teacher_eval,
            "config": config_to_dict(self.cfg),
        }

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        try:
            self.student.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise ValueError(
                f"the checkpoint's model does not fit {self.cfg.model.name}: {err}"
            ) from err
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.loss_module.load_state_dict(ckpt["loss_module"])
        self.epoch = int(ckpt["epoch"])
        self.step_in_epoch = int(ckpt["step_in_epoch"])
        self.global_step = int(ckpt["global_step"])
        restore_rng(ckpt["rng"])
        # Accumulated sums of the interrupted epoch are global; rank 0 carries them.
        self.acc = dict(ckpt["accumulators"]) if self.dist.is_main else {}
        self.best_top1 = float(ckpt["best"]["top1"])
        self.best_epoch = int(ckpt["best"]["epoch"])
        self.teacher_eval = ckpt.get("teacher_eval")
        self.history = self._truncate_logs(self.epoch)

    def _truncate_logs(self, epochs: int) -> list[dict[str, Any]]:
        """Rows of epochs ``<= epochs`` from ``metrics.jsonl``; rank 0 rewrites the JSONL and CSV
        files without later rows (logged by a run killed before its checkpoint landed)."""
        jsonl, csv_path = self.run_dir / "metrics.jsonl", self.run_dir / "metrics.csv"
        if not jsonl.is_file():
            return []
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r["epoch"] <= epochs]
        if self.write_outputs and len(kept) != len(rows):
            jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
            if csv_path.is_file():
                with csv_path.open() as fh:
                    lines = fh.read().splitlines()
                csv_path.write_text("\n".join(lines[: 1 + len(kept)]) + "\n")
        return kept

    def _global_accumulators(self) -> dict[str, float]:
        """The epoch's sums so far as floats, summed over ranks (a collective under DDP)."""
        if not self.acc:
            return {}
        keys = sorted(self.acc)
        t = torch.stack(
            [torch.as_tensor(self.acc[k], dtype=torch.float64, device=self.device) for k in keys]
        )
        if self.dist.enabled:
            all_reduce_sum(t)
        return dict(zip(keys, t.cpu().tolist()))

    def save_checkpoint(self, name: str = "last.pt") -> None:
        """Write ``name`` in the run directory atomically (rank 0; every rank joins the reduce)."""
        state = self.state_dict()
        if self.write_outputs:
            atomic_save(state, self.run_dir / name)

    # ---------------------------------------------------------------- batches

    def _steps_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.train_set) / self.dist.world_size)
        steps = math.ceil(per_rank / self.cfg.data.batch_size)
        cap = self.cfg.schedule.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    def _train_batches(
        self, epoch: int, start: int
    ) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
        """``(weak, strong or None, labels)`` for steps ``start..`` of ``epoch`` on this rank."""
        cfg, ds, bs = self.cfg, self.train_set, self.cfg.data.batch_size
        order_gen = torch.Generator().manual_seed(_mix(cfg.seed, epoch))
        idx = epoch_indices(
            len(ds),
            shuffle=True,
            generator=order_gen,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        gen = torch.Generator()
        steps = self._steps_per_epoch()
        if not isinstance(ds, ArrayDataset):
            yield from self._loader_batches(idx, epoch, start, steps, gen)
            return
        for step in range(start, steps):
            ix = idx[step * bs : (step + 1) * bs]
            raw = ds.images[ix].to(self.device, non_blocking=True)
            labels = ds.labels[ix].to(self.device, non_blocking=True)
            gen.manual_seed(_mix(cfg.seed, epoch, step, self.dist.rank, 1))
            weak = random_crop_flip(raw, cfg.data.padding, gen) if cfg.data.augment else raw
            strong = None
            if self.strong_view:
                strong = strong_augment(
                    raw, gen, cfg.data.padding if cfg.data.augment else 0, cfg.method.strong_erase
                )
                strong = normalize(strong, ds.mean, ds.std)
            yield normalize(weak, ds.mean, ds.std), strong, labels

    def _loader_batches(
        self, idx: Tensor, epoch: int, start: int, steps: int, gen: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor | None, Tensor]]:
        """ImageFolder trees: a DataLoader over this rank's shard (transforms do crop/flip)."""
        bs = self.cfg.data.batch_size
        torch.manual_seed(_mix(self.cfg.seed, epoch, start, self.dist.rank, 2))  # worker seeds
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.train_set, idx[start * bs : steps * bs].tolist()),
            batch_size=bs,
            shuffle=False,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for step, (x, y) in enumerate(loader, start=start):
            x = x.to(self.device, non_blocking=True)
            strong = None
            if self.strong_view:
                gen.manual_seed(_mix(self.cfg.seed, epoch, step, self.dist.rank, 1))
                strong = strong_augment(x, gen, padding=0, erase=self.cfg.method.strong_erase)
            yield x, strong, y.to(self.device, non_blocking=True)

    # ---------------------------------------------------------------- one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def teacher_logits(self, images: Tensor) -> Tensor:
        """Frozen teacher forward under ``torch.inference_mode``; the result is cloned outside
        inference mode because loss functions save it for their backward pass (inference
        tensors cannot be saved), a ``(B, C)`` copy."""
        assert self.teacher_fwd is not None
        with torch.inference_mode(), self._autocast():
            out = self.teacher_fwd(images)
        return out.clone()

    def train_step(
        self, images: Tensor, labels: Tensor, strong: Tensor | None = None, epoch: int = 0
    ) -> tuple[dict[str, Tensor], Tensor, Tensor | None]:
        """One optimiser step; returns ``(loss terms, student logits, teacher logits)``
        (detached). ``epoch`` is 0-based; loss modules get it 1-based (DKD warm-up, CTKD)."""
        images = _layout(images, self.cfg.channels_last)
        strong = _layout(strong, self.cfg.channels_last) if strong is not None else None
        t_logits = t_strong = None
        if self.teacher is not None:
            if strong is not None:
                both = self.teacher_logits(torch.cat([images, strong]))
                t_logits, t_strong = both[: images.shape[0]], both[images.shape[0] :]
            else:
                t_logits = self.teacher_logits(images)
        # MLKD runs the student twice per step; DDP's hooks expect one forward per backward,
        # so gradients are averaged by hand for it.
        manual_sync = self.dist.enabled and strong is not None
        sync_ctx = self.model.no_sync() if manual_sync else contextlib.nullcontext()  # type: ignore[operator]
        with sync_ctx:
            with self._autocast():
                s_logits = self.student_fwd(images)
                extra: dict[str, Any] = {"epoch": epoch + 1}
                if strong is not None:
                    extra["student_logits_strong"] = self.student_fwd(strong)
                    extra["teacher_logits_strong"] = t_strong
                terms = self.loss_module(s_logits, t_logits, labels, **extra)
            loss = torch.stack([v.float() for v in terms.values()]).sum()
            # A host sync: every step on CPU (free), every 50th on GPU.
            check = self.device.type != "cuda" or self.global_step % 50 == 0
            if check and not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {float(loss)} at epoch {epoch + 1}, step {self.step_in_epoch}: "
                    f"terms { ({k: float(v) for k, v in terms.items()}) }; lower optim.lr or "
                    "check the teacher checkpoint"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        if manual_sync:
            average_gradients(self.student.parameters())
        average_gradients(self.loss_params)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        detached = {k: v.detach() for k, v in terms.items()}
        return detached, s_logits.detach(), t_logits

    # ---------------------------------------------------------------- loops

    def _accumulate(self, terms: dict[str, Tensor], s: Tensor, t: Tensor | None, y: Tensor) -> None:
        """Add this batch's sums to the epoch accumulators, on the device (no host sync per
        step; :meth:`_global_accumulators` reads them once)."""
        n = y.numel()
        sums = {f"train/{k}": v.detach().double() * n for k, v in terms.items()}
        sums["train/loss"] = torch.stack(list(sums.values())).sum()
        hit = s.topk(min(5, s.shape[-1]), dim=-1).indices == y.unsqueeze(-1)
        sums["train/top1"] = hit[:, :1].any(dim=-1).sum()
        sums["train/top5"] = hit.any(dim=-1).sum()
        if t is not None:
            # calibration.misinstruction_mask's definition (teacher argmax != label), without
            # its input validation, which would sync with the GPU every step.
            sums["train/misinstruction"] = (t.argmax(dim=-1) != y).sum()
        self.acc["n"] = self.acc.get("n", 0.0) + n
        for k, v in sums.items():
            self.acc[k] = self.acc.get(k, 0.0) + v

    def _epoch_metrics(self) -> dict[str, float]:
        acc = self._global_accumulators()
        n = max(acc.pop("n", 0.0), 1.0)
        out = {}
        for k, v in sorted(acc.items()):
            # accuracies in %, the mis-instruction share as a ratio in [0, 1], losses as means
            out[k] = 100.0 * v / n if k.endswith(("top1", "top5")) else v / n
        return out

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Test-set top-1/top-5 (%) and CE of the student (or ``model``)."""
        return evaluate_model(
            model if model is not None else self.student,
            self.test_set,
            self.cfg.data.eval_batch_size,
            self.device,
            self.dist,
            self._autocast,
            self.cfg.channels_last,
        )

    def fit(self) -> TrainResult:
        """Train to ``schedule.epochs`` (continuing a resumed run), then return the summary."""
        cfg = self.cfg
        logger = (
            MetricsLogger(self.run_dir, cfg.logging.tensorboard) if self.write_outputs else None
        )
        try:
            if self.teacher is not None and self.teacher_eval is None:
                self.teacher_eval = self.evaluate(self.teacher)
                self._print(
                    f"teacher {cfg.teacher.name}: test top-1 {self.teacher_eval['top1']:.2f}%"
                )
            while self.epoch < cfg.schedule.epochs:
                self.history.append(self._run_epoch(self.epoch, logger))
            return self._finish()
        finally:
            if logger is not None:
                logger.close()

    def _run_epoch(self, epoch: int, logger: MetricsLogger | None = None) -> dict[str, Any]:
        cfg = self.cfg
        steps = self._steps_per_epoch()
        self.student.train()
        lr = self.optimizer.param_groups[0]["lr"]
        bar = None
        if cfg.logging.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=steps,
                initial=self.step_in_epoch,
                desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}",
                leave=False,
                dynamic_ncols=True,
            )
        seen = 0
        start_time = time.perf_counter()
        for images, strong, labels in self._train_batches(epoch, self.step_in_epoch):
            torch.manual_seed(_mix(cfg.seed, epoch, self.step_in_epoch, self.dist.rank, 3))
            terms, s, t = self.train_step(images, labels, strong, epoch)
            self._accumulate(terms, s, t, labels)
            seen += labels.numel()
            self.step_in_epoch += 1
            self.global_step += 1
            if bar is not None:
                bar.update(1)
                if self.step_in_epoch % 10 == 1:  # a host sync; not every step
                    bar.set_postfix(loss=f"{sum(float(v) for v in terms.values()):.3f}")
            every = cfg.checkpoint.every_steps
            if every and self.step_in_epoch % every == 0 and self.step_in_epoch < steps:
                self.save_checkpoint()
            if self.step_callback is not None:
                self.step_callback(epoch, self.step_in_epoch)
        elapsed = time.perf_counter() - start_time
        if bar is not None:
            bar.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        row.update(self._epoch_metrics())
        row["images_per_s"] = seen * self.dist.world_size / max(elapsed, 1e-9)
        temp = getattr(self.loss_module, "last_temperature", None)
        if temp is not None:
            row["ctkd/temperature"] = float(temp)
        last = epoch + 1 == cfg.schedule.epochs
        if last or (epoch + 1) % max(cfg.logging.eval_every, 1) == 0:
            test = self.evaluate()
            row.update({f"test/{k}": v for k, v in test.items()})
            if test["top1"] > self.best_top1:
                self.best_top1, self.best_epoch = test["top1"], epoch + 1
                if cfg.checkpoint.keep_best and self.write_outputs:
                    atomic_save(
                        {
                            "format": FORMAT,
                            "model": self.student.state_dict(),
                            "epoch": epoch + 1,
                            "top1": test["top1"],
                            "model_name": cfg.model.name,
                        },
                        self.run_dir / "best.pt",
                    )
        row["best_top1"] = self.best_top1
        if logger is not None:  # logged before the checkpoint; a resume drops later rows
            logger.log(row)
        self.scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.acc = {}
        self.save_checkpoint()
        self._print(_format_row(row))
        return row

    def _finish(self) -> TrainResult:
        last = next((r for r in reversed(self.history) if "test/top1" in r), {})
        mis = next(
            (
                r["train/misinstruction"]
                for r in reversed(self.history)
                if "train/misinstruction" in r
            ),
            None,
        )
        result = TrainResult(
            best_top1=self.best_top1,
            best_epoch=self.best_epoch,
            last_top1=float(last.get("test/top1", float("nan"))),
            last_top5=float(last.get("test/top5", float("nan"))),
            teacher_top1=self.teacher_eval["top1"] if self.teacher_eval else None,
            teacher_misinstruction=mis,
            epochs=self.epoch,
            run_dir=str(self.run_dir),
            history=self.history,
        )
        if self.write_outputs:
            summary = {k: v for k, v in result.__dict__.items() if k != "history"}
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self._print(
            f"done: best test top-1 {result.best_top1:.2f}% (epoch {result.best_epoch}), "
            f"last {result.last_top1:.2f}% — run dir {self.run_dir}"
        )
        return result

    def _print(self, msg: str) -> None:
        if self.dist.is_main and self.cfg.logging.progress:
            print(msg, flush=True)

    def close(self) -> None:
        """Tear down the process group (barrier first); call once at the end of a DDP run."""
        cleanup_distributed()


def _format_row(row: dict[str, Any]) -> str:
    keys = ("train/loss", "train/top1", "train/misinstruction", "test/top1", "test/top5")
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.4g}"]
    parts += [f"{k} {row[k]:.4g}" for k in keys if k in row]
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return " | ".join(parts)
