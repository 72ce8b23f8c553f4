"""The logit-KD loss family: one method per file, each a functional form plus a thin module.

Every module's ``forward(student_logits, teacher_logits, target, **context)`` returns a dict of
named, already-weighted loss terms that a trainer sums and logs. ``context`` may carry
``epoch`` (DKD warm-up, CTKD curriculum) and method-specific extras; modules ignore what they
do not use.
"""

from __future__ import annotations

from logitkd.losses.ctkd import CTKD, curriculum_lambda, grad_reverse
from logitkd.losses.dkd import DKD, dkd_loss, dkd_terms
from logitkd.losses.kd import KD, kd_loss
from logitkd.losses.mlkd import MLKD, mlkd_loss, mlkd_terms

__all__ = [
    "CTKD",
    "DKD",
    "KD",
    "MLKD",
    "curriculum_lambda",
    "dkd_loss",
    "dkd_terms",
    "grad_reverse",
    "kd_loss",
    "mlkd_loss",
    "mlkd_terms",
]
