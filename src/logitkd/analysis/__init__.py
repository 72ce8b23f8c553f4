"""Evidence: statistics over seeds, sweeps, plots, time cost, mis-instruction and LS views.

Submodules: :mod:`~logitkd.analysis.stats` (mean ± std, t CIs, paired t / Wilcoxon tests),
:mod:`~logitkd.analysis.sweep` (grids of methods × hyper-parameters × seeds, run and
tabulated), :mod:`~logitkd.analysis.plots` (PNG figures, Agg canvas),
:mod:`~logitkd.analysis.timing` (LoCa Table 7), :mod:`~logitkd.analysis.misinstruction`
(LoCa Fig. 2) and :mod:`~logitkd.analysis.ls_views` (the LS poster's views). Names are resolved
lazily so that ``import logitkd.analysis`` does not pull in scipy or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "PairedComparison": "stats",
    "SeedSummary": "stats",
    "compare_to_baseline": "stats",
    "paired_tests": "stats",
    "summarize": "stats",
    "GridSpec": "sweep",
    "SweepError": "sweep",
    "load_grid": "sweep",
    "run_sweep": "sweep",
    "measure_timing": "timing",
    "timing_markdown": "timing",
    "MisinstructionReport": "misinstruction",
    "lm_misinstruction": "misinstruction",
    "misinstruction_bar_plot": "misinstruction",
    "per_class_counts": "misinstruction",
    "teacher_misinstruction": "misinstruction",
    "difference_heatmap": "ls_views",
    "logit_difference": "ls_views",
    "logit_mean_std": "ls_views",
    "mean_std_histogram": "ls_views",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'logitkd.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"logitkd.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
