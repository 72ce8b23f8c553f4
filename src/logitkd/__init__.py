"""logitkd — logit-based knowledge distillation with LoCa and logit standardization.

The public API: the pure tensor math (:func:`misinstruction_mask`, :func:`loca_calibrate`,
:func:`zscore`), the functional losses (:func:`kd_loss`, :func:`dkd_loss`) and the trainer-facing
loss modules (:class:`KD`, :class:`DKD`, :class:`CTKD`, :class:`MLKD`).
"""

from __future__ import annotations

from logitkd.calibration import loca_calibrate, misinstruction_mask, misinstruction_ratio
from logitkd.losses import CTKD, DKD, KD, MLKD, dkd_loss, kd_loss, mlkd_loss
from logitkd.standardization import zscore

__version__ = "0.1.0"

__all__ = [
    "CTKD",
    "DKD",
    "KD",
    "MLKD",
    "__version__",
    "dkd_loss",
    "kd_loss",
    "loca_calibrate",
    "misinstruction_mask",
    "misinstruction_ratio",
    "mlkd_loss",
    "zscore",
]
