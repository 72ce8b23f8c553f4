"""The vision run configuration: typed dataclasses that the YAML recipes in ``configs/`` fill.

Defaults are mdistiller's CIFAR-100 recipe (Zhao et al., CVPR 2022, ``configs/cifar100/*``;
the same as RepDistiller's): 240 epochs, batch 64, SGD momentum 0.9, lr 0.05 (0.01 for
MobileNet/ShuffleNet students), ×0.1 at epochs 150/180/210, weight decay 5e-4.

A recipe only states what differs, e.g.::

    _base_: ../base.yaml
    teacher: {name: resnet56, checkpoint: checkpoints/cifar100/resnet56.pth}
    model: {name: resnet20}
    method: {name: kd, loca_alpha: 0.95}

and any field can be overridden on the command line as ``optim.lr=0.01``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from logitkd.config import ConfigError, config_to_dict, load_config

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "LoggingConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TeacherConfig",
    "VisionConfig",
    "default_lr",
    "load_vision_config",
    "resolve_config",
]

# Students for which mdistiller's recipes use lr 0.01 instead of 0.05.
LOW_LR_PREFIXES: tuple[str, ...] = ("MobileNet", "Shuffle", "mobilenet", "shuffle")


@dataclass
class DataConfig:
    """Which images, how they are batched and augmented.

    ``batch_size`` is **per process**: with DDP over ``W`` processes one optimiser step sees a
    global batch of ``batch_size · W`` (mdistiller's 64 is a global batch on one GPU; for
    ``torchrun --nproc_per_node 4`` set ``data.batch_size=16`` to keep it).
    """

    name: str = "cifar100"  # cifar10 | cifar100 | fashion_mnist | imagenet | digits
    root: str | None = "data"  # folder holding the dataset's files (ignored for digits)
    batch_size: int = 64  # per process
    eval_batch_size: int = 256  # per process
    augment: bool = True  # random crop (padding) + horizontal flip, batched on tensors
    padding: int = 4
    train_subset: int | None = None  # use only the first N training images (quick runs)
    test_subset: int | None = None
    num_workers: int = 4  # DataLoader workers, ImageFolder (ImageNet) trees only
    # In-memory sets only: zero-pad images to pad_to × pad_to and repeat a grey channel to
    # `channels`, e.g. Fashion-MNIST (1×28×28) through CIFAR-zoo models: pad_to=32, channels=3.
    pad_to: int | None = None
    channels: int | None = None


@dataclass
class ModelConfig:
    """The model being trained: the student in ``distill``, the teacher in ``train``."""

    name: str = "resnet8x4"
    num_classes: int | None = None  # default: the dataset's
    checkpoint: str | None = None  # optional initial weights (local file)


@dataclass
class TeacherConfig:
    """The frozen teacher of ``distill``: weights only from a local file, never downloaded."""

    name: str | None = None
    checkpoint: str | None = None
    num_classes: int | None = None  # default: the dataset's
    strict: bool = True


@dataclass
class MethodConfig:
    """The loss. ``name``: ``ce`` (student alone / teacher training), ``kd``, ``kd_star``
    (KD on the rows the teacher classifies correctly, LoCa Table 1), ``dkd``, ``ctkd``, ``mlkd``.

    ``None`` fields take the loss module's own default (the paper's); a field the chosen
    method does not use must stay ``None`` (a ``ValueError`` says so otherwise).
    """

    name: str = "ce"
    ce_weight: float | None = None
    kd_weight: float | None = None
    temperature: float | None = None
    loca_alpha: float | None = None  # LoCa (arXiv 2409.04778); CIFAR-100 0.95/0.98
    standardize: bool = False  # logit standardization (Sun et al., CVPR 2024)
    # DKD
    dkd_alpha: float | None = None
    dkd_beta: float | None = None
    warmup_epochs: int | None = None
    # CTKD
    ctkd_base: str | None = None  # kd | dkd
    ctkd_mode: str | None = None  # global | instance
    curriculum_epochs: float | None = None
    # MLKD
    temperatures: list[float] | None = None
    strong_erase: float = 0.5  # strong view (MLKD): side of the erased square, as a fraction


@dataclass
class OptimConfig:
    name: Literal["sgd"] = "sgd"
    lr: float | None = None  # None: 0.05, or 0.01 for MobileNet/ShuffleNet students
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    epochs: int = 240
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    max_steps_per_epoch: int | None = None  # cap steps per epoch (smoke tests, benchmarks)


@dataclass
class LoggingConfig:
    tensorboard: bool = True  # skipped (with a note) when tensorboard is not installed
    progress: bool = True  # tqdm progress bar on rank 0
    eval_every: int = 1  # test-set evaluation every N epochs (and always at the last one)


@dataclass
class CheckpointConfig:
    every_steps: int = 0  # also write last.pt every N optimiser steps (0: end of epoch only)
    keep_best: bool = True  # best.pt = highest test top-1


@dataclass
class VisionConfig:
    """One training run. See the module docstring for the defaults' source."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run_dir: str | None = None  # default: runs/<dataset>/<method>_<teacher>_<student>
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = True  # ~1.2x on the CPU KD step (benchmarks/train_throughput.py)
    compile: bool = False  # torch.compile the student and the teacher
    cpu_threads: int | None = None  # torch.set_num_threads; 1 is fastest for tiny models
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"


# Fields that may differ between a run and its --resume without changing the result.
RESUME_FREE_KEYS: tuple[str, ...] = (
    "run_dir",
    "device",
    "logging.",
    "data.num_workers",
    "schedule.epochs",
    "ddp_backend",
    "cpu_threads",
)


def default_lr(student: str) -> float:
    """mdistiller's CIFAR-100 lr: 0.01 for MobileNet/ShuffleNet students, else 0.05."""
    return 0.01 if student.startswith(LOW_LR_PREFIXES) else 0.05


def default_run_name(cfg: VisionConfig) -> str:
    """``<method>[_ls][_loca<α>]_<teacher>_<student>[_seed<s>]``: the recipes of one pair (KD,
    KD+LoCa 0.95 / 0.98, KD+LS) and its seeds get folders of their own by default."""
    parts = [cfg.method.name]
    if cfg.method.standardize:
        parts.append("ls")
    if cfg.method.loca_alpha is not None:
        parts.append(f"loca{cfg.method.loca_alpha:g}")
    parts += [cfg.teacher.name or "none", cfg.model.name]
    if cfg.seed != 0:
        parts.append(f"seed{cfg.seed}")
    return "_".join(parts)


def resolve_config(cfg: VisionConfig) -> VisionConfig:
    """Fill the ``None`` defaults that depend on other fields and check cross-field rules.

    Returns a new config (the one saved as ``config.yaml`` in the run directory).
    """
    optim = cfg.optim
    if optim.lr is None:
        optim = dataclasses.replace(optim, lr=default_lr(cfg.model.name))
    run_dir = cfg.run_dir
    if run_dir is None:
        run_dir = str(Path("runs") / cfg.data.name / default_run_name(cfg))
    out = dataclasses.replace(cfg, optim=optim, run_dir=run_dir)
    check_config(out)
    return out


def check_config(cfg: VisionConfig) -> None:
    """Cross-field checks that the dataclass types cannot express."""
    if cfg.data.batch_size < 1 or cfg.data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be >= 1")
    for key in ("pad_to", "channels"):
        value = getattr(cfg.data, key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key} must be a positive int or null, got {value}")
        if value is not None and cfg.data.name.lower() == "imagenet":
            raise ConfigError(
                f"data.{key} applies to in-memory sets (cifar10, cifar100, fashion_mnist, "
                "digits), not imagenet"
            )
    if cfg.schedule.epochs < 1:
        raise ConfigError(f"schedule.epochs must be >= 1, got {cfg.schedule.epochs}")
    if sorted(cfg.schedule.milestones) != list(cfg.schedule.milestones):
        raise ConfigError(f"schedule.milestones must be increasing, got {cfg.schedule.milestones}")
    if cfg.optim.lr is not None and not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.method.name != "ce" and cfg.teacher.name is None:
        raise ConfigError(
            f"method.name={cfg.method.name!r} distils from a teacher: set teacher.name (and "
            "teacher.checkpoint); use method.name=ce to train without one"
        )
    if (
        cfg.teacher.num_classes is not None
        and cfg.model.num_classes is not None
        and cfg.teacher.num_classes != cfg.model.num_classes
    ):
        raise ConfigError(
            f"teacher.num_classes={cfg.teacher.num_classes} differs from "
            f"model.num_classes={cfg.model.num_classes}: logit distillation needs the same classes"
        )


def load_vision_config(
    path: str | Path | None = None, overrides: list[str] | tuple = ()
) -> VisionConfig:
    """Load a recipe (``_base_`` inheritance) plus ``key=value`` overrides, then resolve it."""
    return resolve_config(load_config(VisionConfig, path, list(overrides)))


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(config_diff(va, vb, f"{dotted}."))
        elif va != vb:
            out.append(dotted)
    return out


def resume_mismatch(saved: dict[str, Any], current: VisionConfig) -> list[str]:
    """Keys (with both values) where ``current`` differs from a run's saved config in a way that
    would change the result; empty when resuming is safe."""
    now = config_to_dict(current)
    keys = [
        k for k in config_diff(saved, now) if not any(k.startswith(f) for f in RESUME_FREE_KEYS)
    ]

    def get(d: dict[str, Any], dotted: str) -> Any:
        for part in dotted.split("."):
            d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
        return d

    return [f"{k}: saved {get(saved, k)!r}, now {get(now, k)!r}" for k in keys]
