"""Curriculum Temperature for KD (Li et al., "Curriculum Temperature for Knowledge
Distillation", AAAI 2023, arXiv 2211.16231).

The distillation temperature is learned *adversarially*: a temperature module predicts ``T``,
the student minimises the KD loss at that ``T``, and a gradient-reversal layer (GRL) between the
loss and the module makes the module *maximise* it::

    min_{theta_S} max_{theta_T}  L_KD(theta_S, T(theta_T))
    GRL(x) = x (forward),   dGRL/dx = -lambda (backward)

``lambda`` follows the paper's easy-to-hard cosine curriculum over ``N`` epochs::

    lambda_n = lambda_min + 1/2 (lambda_max - lambda_min) (1 + cos((1 + min(n, N) / N) pi))

which rises from ``lambda_min`` at ``n = 0`` to ``lambda_max`` at ``n >= N``. The temperature is
kept in a fixed range by a sigmoid, ``T = T_start + T_range * sigmoid(theta)``: global mode
learns one scalar ``theta``; instance mode maps the concatenated (detached) teacher and student
logits of each sample through a 2-layer MLP to a per-sample ``theta``.

Defaults, from the official code (zhengli97/CTKD ``train_student.py`` and
``scripts/run_cifar_distill.sh``): ``T_start = 1``, ``T_range = 20`` (the code's ``t_start``,
``t_end``; it computes ``t_start + t_end * sigmoid(theta)``, so ``T`` lies in ``(1, 21)``),
global ``theta`` initialised to 1 (``T_0 ~ 15.6``), ``lambda_min = 0``, ``lambda_max = 1``,
``N = 10`` epochs, CE weight 0.1 and KD weight 0.9 with KD, CE 1 and DKD 1 with DKD.

Differences from the released code, deliberate (this module follows the paper):

* **Sign and direction of the schedule.** The official GRL returns ``lambda * grad`` (no minus
  sign) and its ``CosineDecay(max_value=decay_max, min_value=decay_min, num_loops)`` returns
  ``min + (max - min) (1 + cos(i pi / N)) / 2``, i.e. it *decays* from ``decay_max`` to
  ``decay_min``. The reversal therefore exists only because the script passes a negative
  ``--decay_min -1`` with ``--decay_max 0``: the factor then goes 0 -> -1, which is the paper's
  ``-lambda_n`` with ``lambda: 0 -> 1`` (``cos((1 + x) pi) = -cos(x pi)``). Read literally,
  setting the paper's ``lambda_max = 1, lambda_min = 0`` as ``--decay_max 1 --decay_min 0`` makes
  ``lambda`` *fall* from 1 to 0 *and* un-reverses the gradient (the temperature then minimises
  the loss), and the argparse defaults (``0, 0``) give no temperature gradient at all. Here the
  GRL carries the minus sign and ``lambda`` is the paper's non-negative, rising ``lambda_n``.
* **Epoch counting.** The official loop calls ``get_value(epoch)`` with 1-based epochs, so its
  first epoch already uses ``lambda_1``. Here ``lambda`` is evaluated at whatever ``epoch`` the
  trainer passes (fractional epochs allowed, for a per-step schedule); a trainer that passes
  1-based epochs reproduces the official values, ``epoch=None`` means ``lambda_max``.
* **Logit standardization.** The LS code's CTKD fork (sunshangquan/logit-standardization-KD,
  ``CTKD/train_student.py`` at commit b3ff6334) selects
  ``DistillKL() if opt.logit_stand else DistillKL_logit_stand()``, so ``--logit_stand`` gives
  *plain* KD and omitting it gives the standardized loss; a later commit of that fork drops the
  flag and always standardizes the KD term (never the DKD term). Here ``standardize=True``
  z-scores both sides (``zscore(x, T)``, population std, ``eps`` added, the LS paper's
  Algorithm 1; the LS code uses Bessel's std) in whichever base loss is chosen, and ``False``
  does not.
* **Instance-wise temperature.** The released code ships only the global module (``mlp_name``
  other than ``'global'`` prints "mlp name wrong"). The paper's instance variant predicts one
  temperature per sample from the teacher's and student's outputs with a small MLP; the exact
  shape here (concatenated logits ``2C -> instance_hidden -> 1``, ReLU, width 256) is our
  choice. Its inputs are detached so that the student learns only through the KD loss, never
  through the adversarial temperature path.
* **Weight decay.** The official optimizer applies the student's weight decay (5e-4) to
  ``theta`` as well; whether a trainer does is its own choice (the parameters are ordinary
  ``nn.Parameter`` s of this module).

The module *owns learnable parameters*: a trainer must optimise ``loss_module.parameters()``
(or :meth:`CTKD.extra_parameters`) together with the student's, or the temperature never moves.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from logitkd.calibration import check_loca_alpha
from logitkd.losses._base import cross_entropy_term, linear_warmup
from logitkd.losses.dkd import dkd_terms
from logitkd.losses.kd import kd_loss

__all__ = [
    "CTKD",
    "GlobalTemperature",
    "GradientReversal",
    "InstanceTemperature",
    "curriculum_lambda",
    "grad_reverse",
]

BASES: tuple[str, ...] = ("kd", "dkd")
MODES: tuple[str, ...] = ("global", "instance")


class GradientReversal(torch.autograd.Function):
    """Gradient-reversal layer (Ganin & Lempitsky 2015): identity forward, ``-lambda * grad``
    backward."""

    @staticmethod
    def forward(ctx, x: Tensor, lambda_: float) -> Tensor:  # type: ignore[override]
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * (-ctx.lambda_), None


def _check_lambda(lambda_: float) -> None:
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)):
        raise TypeError(f"lambda_ must be a number, got {type(lambda_).__name__}")
    if not math.isfinite(lambda_):
        raise ValueError(f"lambda_ must be finite, got {lambda_}")


def grad_reverse(x: Tensor, lambda_: float) -> Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``-lambda_`` backward."""
    _check_lambda(lambda_)
    return GradientReversal.apply(x, float(lambda_))


def curriculum_lambda(
    epoch: float | None,
    lambda_min: float = 0.0,
    lambda_max: float = 1.0,
    curriculum_epochs: float = 10.0,
) -> float:
    """CTKD's cosine curriculum (paper, Sec. "Curriculum Temperature"):

    ``lambda_n = lambda_min + (lambda_max - lambda_min) (1 + cos((1 + n / N) pi)) / 2``, with
    ``n = clamp(epoch, 0, N)``; ``lambda_min`` at ``n = 0``, ``lambda_max`` from ``n = N`` on,
    non-decreasing in between. ``epoch=None`` or ``N = 0`` gives ``lambda_max``.
    """
    if curriculum_epochs < 0:
        raise ValueError(f"curriculum_epochs must be >= 0, got {curriculum_epochs}")
    if epoch is None or curriculum_epochs == 0:
        return float(lambda_max)
    n = min(max(float(epoch), 0.0), float(curriculum_epochs))
    return lambda_min + 0.5 * (lambda_max - lambda_min) * (
        1.0 + math.cos((1.0 + n / curriculum_epochs) * math.pi)
    )


def _check_range(t_start: float, t_range: float) -> None:
    if not t_start > 0 or not math.isfinite(t_start):
        raise ValueError(f"t_start must be finite and > 0 (the lowest temperature), got {t_start}")
    if not t_range >= 0 or not math.isfinite(t_range):
        raise ValueError(f"t_range must be finite and >= 0, got {t_range}")


class GlobalTemperature(nn.Module):
    """One learnable temperature ``T = t_start + t_range * sigmoid(theta)`` behind a GRL."""

    def __init__(
        self, t_start: float = 1.0, t_range: float = 20.0, theta_init: float = 1.0
    ) -> None:
        super().__init__()
        _check_range(t_start, t_range)
        self.t_start = float(t_start)
        self.t_range = float(t_range)
        self.theta = nn.Parameter(torch.tensor(float(theta_init)))

    def forward(self, teacher_logits: Tensor, student_logits: Tensor, lambda_: float) -> Tensor:
        """The scalar (0-dim) temperature; the logits are ignored (same call as the instance
        module)."""
        theta = self.theta
        if theta.device != student_logits.device:
            theta = theta.to(student_logits.device)
        temp = self.t_start + self.t_range * torch.sigmoid(theta)
        return grad_reverse(temp, lambda_)


class InstanceTemperature(nn.Module):
    """Per-sample temperature: ``T_i = t_start + t_range * sigmoid(MLP([z_T,i ; z_S,i]))``.

    A 2-layer MLP (``2C -> hidden -> 1``, ReLU) on the concatenated, detached teacher and student
    logits; the GRL is applied to its output. Returns a tensor shaped like the logits without
    their class dim.
    """

    def __init__(
        self, num_classes: int, hidden: int = 256, t_start: float = 1.0, t_range: float = 20.0
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"instance_hidden must be a positive int, got {hidden!r}")
        _check_range(t_start, t_range)
        self.num_classes = num_classes
        self.t_start = float(t_start)
        self.t_range = float(t_range)
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, teacher_logits: Tensor, student_logits: Tensor, lambda_: float) -> Tensor:
        if student_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"student_logits has {student_logits.shape[-1]} classes but the instance "
                f"temperature MLP was built for num_classes={self.num_classes}"
            )
        weight = self.mlp[0].weight
        x = torch.cat([teacher_logits.detach(), student_logits.detach()], dim=-1).to(weight.dtype)
        # -inf (masked vocabulary) entries would poison the MLP; they carry no logit value.
        x = torch.nan_to_num(x, neginf=0.0)
        raw = self.mlp(x).squeeze(-1)
        temp = self.t_start + self.t_range * torch.sigmoid(raw)
        return grad_reverse(temp, lambda_)


def _resolve_weight(value: float | None, base: str, kd_default: float, dkd_default: float) -> float:
    if value is not None:
        return float(value)
    return kd_default if base == "kd" else dkd_default


class CTKD(nn.Module):
    """CTKD for trainers: ``{"ce": w_ce * CE, "kd": w_kd * L(T)}`` with a learnable ``T``.

    ``base="kd"``: ``L = kd_loss`` at ``T`` (defaults CE 0.1, KD 0.9, the official CIFAR-100
    script). ``base="dkd"``: ``L = warmup * (alpha TCKD + beta NCKD)`` at ``T`` (defaults CE 1,
    KD 1, alpha 1, beta 8, a 20-epoch linear warm-up as in DKD/mdistiller; the official CTKD+DKD
    run uses beta 2 for resnet56->resnet20 and no warm-up). ``temperature="global"`` learns one
    scalar, ``"instance"`` a per-sample temperature (needs ``num_classes``). ``loca_alpha`` and
    ``standardize`` are passed to the base loss, which applies them at the learned ``T``.

    The module holds learnable parameters: add ``loss_module.parameters()`` (equivalently
    :meth:`extra_parameters`) to the optimizer. After each forward, ``last_temperature`` holds the
    mean temperature (float) and ``last_lambda`` the reversal weight used, for logging.
    """

    def __init__(
        self,
        ce_weight: float | None = None,
        kd_weight: float | None = None,
        base: str = "kd",
        temperature: str = "global",
        num_classes: int | None = None,
        t_start: float = 1.0,
        t_range: float = 20.0,
        theta_init: float = 1.0,
        instance_hidden: int = 256,
        lambda_min: float = 0.0,
        lambda_max: float = 1.0,
        curriculum_epochs: float = 10.0,
        loca_alpha: float | None = None,
        standardize: bool = False,
        dkd_alpha: float = 1.0,
        dkd_beta: float = 8.0,
        dkd_warmup_epochs: int = 20,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        if temperature not in MODES:
            raise ValueError(f"temperature must be one of {MODES}, got {temperature!r}")
        if loca_alpha is not None:
            check_loca_alpha(loca_alpha)
        if curriculum_epochs < 0:
            raise ValueError(f"curriculum_epochs must be >= 0, got {curriculum_epochs}")
        if not (math.isfinite(lambda_min) and math.isfinite(lambda_max)):
            raise ValueError(
                f"lambda_min/lambda_max must be finite, got {lambda_min}, {lambda_max}"
            )
        if dkd_warmup_epochs < 0:
            raise ValueError(f"dkd_warmup_epochs must be >= 0, got {dkd_warmup_epochs}")
        self.temperature_module: nn.Module
        if temperature == "global":
            self.temperature_module = GlobalTemperature(t_start, t_range, theta_init)
        else:
            if num_classes is None:
                raise ValueError('temperature="instance" needs num_classes (the MLP input is 2C)')
            self.temperature_module = InstanceTemperature(
                num_classes, instance_hidden, t_start, t_range
            )
        self.ce_weight = _resolve_weight(ce_weight, base, 0.1, 1.0)
        self.kd_weight = _resolve_weight(kd_weight, base, 0.9, 1.0)
        self.base = base
        self.mode = temperature
        self.lambda_min = float(lambda_min)
        self.lambda_max = float(lambda_max)
        self.curriculum_epochs = float(curriculum_epochs)
        self.loca_alpha = loca_alpha
        self.standardize = standardize
        self.dkd_alpha = dkd_alpha
        self.dkd_beta = dkd_beta
        self.dkd_warmup_epochs = dkd_warmup_epochs
        self.ignore_index = ignore_index
        self.last_temperature: float = float("nan")
        self.last_lambda: float = float("nan")

    def extra_parameters(self) -> list[nn.Parameter]:
        """The temperature module's parameters (what the trainer must add to the optimizer)."""
        return list(self.temperature_module.parameters())

    def lambda_at(self, epoch: float | None) -> float:
        """The GRL weight ``lambda_n`` of :func:`curriculum_lambda` at ``epoch``."""
        return curriculum_lambda(epoch, self.lambda_min, self.lambda_max, self.curriculum_epochs)

    def temperature_at(
        self, student_logits: Tensor, teacher_logits: Tensor, epoch: float | None = None
    ) -> Tensor:
        """The (reversed-gradient) temperature: 0-dim (global) or ``logits.shape[:-1]``."""
        return self.temperature_module(teacher_logits, student_logits, self.lambda_at(epoch))

    def dkd_warmup(self, epoch: float | None) -> float:
        return linear_warmup(epoch, self.dkd_warmup_epochs)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        target: Tensor,
        epoch: float | None = None,
        **_: object,
    ) -> dict[str, Tensor]:
        if target is None:
            raise ValueError("CTKD needs target (the labels) for its cross-entropy term")
        lam = self.lambda_at(epoch)
        temp = self.temperature_module(teacher_logits, student_logits, lam)
        self.last_lambda = lam
        self.last_temperature = float(temp.detach().double().mean())
        if self.base == "kd":
            distill = kd_loss(
                student_logits,
                teacher_logits,
                target,
                temperature=temp,
                loca_alpha=self.loca_alpha,
                standardize=self.standardize,
                ignore_index=self.ignore_index,
            )
        else:
            tckd, nckd = dkd_terms(
                student_logits,
                teacher_logits,
                target,
                temperature=temp,
                loca_alpha=self.loca_alpha,
                standardize=self.standardize,
                ignore_index=self.ignore_index,
            )
            distill = self.dkd_warmup(epoch) * (self.dkd_alpha * tckd + self.dkd_beta * nckd)
        ce = cross_entropy_term(student_logits, target, self.ignore_index)
        return {"ce": self.ce_weight * ce, "kd": self.kd_weight * distill}

    def extra_repr(self) -> str:
        return (
            f"base={self.base}, temperature={self.mode}, ce_weight={self.ce_weight}, "
            f"kd_weight={self.kd_weight}, lambda=[{self.lambda_min}, {self.lambda_max}] over "
            f"{self.curriculum_epochs} epochs, loca_alpha={self.loca_alpha}, "
            f"standardize={self.standardize}"
        )
