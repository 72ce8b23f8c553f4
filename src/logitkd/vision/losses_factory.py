"""Build the loss module of a run from its :class:`~logitkd.vision.config.MethodConfig`.

The trainer never knows which method it runs: it calls the module returned here with
``(student_logits, teacher_logits, target, epoch=..., student_logits_strong=...,
teacher_logits_strong=...)`` and sums the dict of named terms it returns.

Methods: ``ce`` (the student alone, or teacher training: cross-entropy only), ``kd`` (Hinton
et al. 2015), ``kd_star`` (KD on the rows the teacher gets right; LoCa Table 1's "KD*"),
``dkd`` (Zhao et al. 2022), ``ctkd`` (Li et al. 2023), ``mlkd`` (Jin et al. 2023). LoCa
(``loca_alpha``) and logit standardization (``standardize``) combine with every method but ``ce``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from logitkd.vision.config import MethodConfig

__all__ = [
    "METHODS",
    "CrossEntropy",
    "build_loss",
    "loss_kwargs",
    "needs_strong_view",
    "needs_teacher",
]


class CrossEntropy(nn.Module):
    """Plain supervised loss: ``{"ce": ce_weight * CE(student_logits, target)}``; the teacher
    logits (if any) are ignored."""

    def __init__(self, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.ce_weight = ce_weight

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, **_: object
    ) -> dict[str, Tensor]:
        return {"ce": self.ce_weight * F.cross_entropy(student_logits.float(), target)}


def _lazy(module: str, attr: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        return getattr(importlib.import_module(module), attr)(**kwargs)

    return build


# method name -> (constructor, {config field -> constructor argument}, fixed arguments)
_SPECS: dict[str, tuple[Callable[..., nn.Module], dict[str, str], dict[str, Any]]] = {
    "ce": (CrossEntropy, {"ce_weight": "ce_weight"}, {}),
    "kd": (
        _lazy("logitkd.losses.kd", "KD"),
        {
            "ce_weight": "ce_weight",
            "kd_weight": "kd_weight",
            "temperature": "temperature",
            "loca_alpha": "loca_alpha",
            "standardize": "standardize",
        },
        {},
    ),
    "dkd": (
        _lazy("logitkd.losses.dkd", "DKD"),
        {
            "ce_weight": "ce_weight",
            "dkd_alpha": "alpha",
            "dkd_beta": "beta",
            "temperature": "temperature",
            "warmup_epochs": "warmup_epochs",
            "loca_alpha": "loca_alpha",
            "standardize": "standardize",
        },
        {},
    ),
    "ctkd": (
        _lazy("logitkd.losses.ctkd", "CTKD"),
        {
            "ce_weight": "ce_weight",
            "kd_weight": "kd_weight",
            "ctkd_base": "base",
            "ctkd_mode": "temperature",
            "curriculum_epochs": "curriculum_epochs",
            "loca_alpha": "loca_alpha",
            "standardize": "standardize",
            "dkd_alpha": "dkd_alpha",
            "dkd_beta": "dkd_beta",
            "warmup_epochs": "dkd_warmup_epochs",
        },
        {},
    ),
    "mlkd": (
        _lazy("logitkd.losses.mlkd", "MLKD"),
        {
            "ce_weight": "ce_weight",
            "kd_weight": "kd_weight",
            "temperatures": "temperatures",
            "loca_alpha": "loca_alpha",
            "standardize": "standardize",
        },
        {},
    ),
}
_SPECS["kd_star"] = (_SPECS["kd"][0], _SPECS["kd"][1], {"drop_misinstructed": True})

METHODS: tuple[str, ...] = tuple(_SPECS)
# Fields of MethodConfig that are not loss-module arguments.
_NOT_LOSS_ARGS = frozenset({"name", "strong_erase"})


def needs_teacher(method: str) -> bool:
    return method != "ce"


def needs_strong_view(method: str) -> bool:
    """MLKD aligns predictions on a weakly and a strongly augmented view of each batch."""
    return method == "mlkd"


def loss_kwargs(cfg: MethodConfig) -> dict[str, Any]:
    """The constructor arguments ``build_loss`` will use; validates without building.

    Raises ``ValueError`` for an unknown method (listing the valid ones) or for a field set that
    the method does not use (e.g. ``dkd_beta`` with ``kd``), so a typo in a recipe never
    silently trains something else.
    """
    if cfg.name not in _SPECS:
        raise ValueError(f"unknown method.name {cfg.name!r}; valid methods: {', '.join(METHODS)}")
    _, mapping, fixed = _SPECS[cfg.name]
    kwargs: dict[str, Any] = dict(fixed)
    unused = []
    for f in cfg.__dataclass_fields__:
        if f in _NOT_LOSS_ARGS:
            continue
        value = getattr(cfg, f)
        default = MethodConfig.__dataclass_fields__[f].default
        if f not in mapping:
            if value is not None and value != default:
                unused.append(f"method.{f}={value!r}")
            continue
        if value is not None:
            kwargs[mapping[f]] = list(value) if isinstance(value, (list, tuple)) else value
    if unused:
        raise ValueError(
            f"method {cfg.name!r} does not use {', '.join(unused)}; its options are "
            f"{', '.join('method.' + k for k in mapping)}"
        )
    return kwargs


def build_loss(cfg: MethodConfig, num_classes: int | None = None) -> nn.Module:
    """The loss module for ``cfg.name`` with every non-``None`` field passed on (see
    :func:`loss_kwargs` for the checks). ``num_classes`` sizes CTKD's instance-wise MLP."""
    kwargs = loss_kwargs(cfg)
    if cfg.name == "ctkd" and kwargs.get("temperature") == "instance":
        kwargs["num_classes"] = num_classes
    return _SPECS[cfg.name][0](**kwargs)
