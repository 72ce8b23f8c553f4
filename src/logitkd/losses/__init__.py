"""The logit-KD loss family: one method per file, each a functional form plus a thin module.

Every module's ``forward(student_logits, teacher_logits, target, **context)`` returns a dict of
named, already-weighted loss terms that a trainer sums and logs. ``context`` may carry
``epoch`` (DKD warm-up, CTKD curriculum) and method-specific extras; modules ignore what they
do not use.
"""

from __future__ import annotations

from logitkd.losses.dkd import DKD, dkd_loss, dkd_terms
from logitkd.losses.kd import KD, kd_loss

__all__ = ["DKD", "KD", "dkd_loss", "dkd_terms", "kd_loss"]
