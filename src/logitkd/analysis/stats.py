"""Statistics over seeds: mean ± std, t confidence intervals, paired tests against a baseline.

The papers report "mean over N trials"; whether a +0.3 point gain is real needs more than that.
For ``n`` values ``x_1..x_n`` of one configuration (one value per seed)::

    mean = sum(x) / n          s = sqrt(sum((x - mean)^2) / (n - 1))          (sample std)
    CI_95 = mean ± t_{0.975, n-1} · s / sqrt(n)                               (Student t)

A method is compared with a baseline on *matched seeds* (the same seed gives both runs the same
initialisation and data order), through the differences ``d_i = x_i - b_i``:

* paired t-test: ``t = mean(d) / (s_d / sqrt(n))`` with ``n - 1`` degrees of freedom,
  two-sided p-value (``scipy.stats.ttest_rel``);
* Wilcoxon signed-rank test on ``d`` (``scipy.stats.wilcoxon``, two-sided, zero differences
  dropped — Wilcoxon's convention; exact distribution for small ``n`` without ties).

Degenerate cases (fewer than two values or matched pairs, differences that are all equal) give a
NaN p-value together with a ``reason`` string, never an exception or a misleading number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "PairedComparison",
    "SeedSummary",
    "compare_to_baseline",
    "paired_tests",
    "summarize",
]

NAN = float("nan")


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample std and a Student-t confidence interval of one configuration's values.

    ``std``, ``ci_low`` and ``ci_high`` are NaN when ``n < 2`` (``reason`` then says why);
    ``mean`` is NaN only when ``n == 0``.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float = 0.95
    reason: str = ""

    @property
    def ci_half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2.0


@dataclass(frozen=True)
class PairedComparison:
    """A configuration against the baseline over the seeds both have (``seeds``).

    ``mean_diff`` is ``mean(x - baseline)``; ``t_stat``/``t_pvalue`` come from the paired t-test
    and ``w_stat``/``w_pvalue`` from the Wilcoxon signed-rank test. A test that is undefined for
    these data has NaN statistic and p-value and its ``*_reason`` says why.
    """

    seeds: tuple[int, ...]
    mean_diff: float
    t_stat: float
    t_pvalue: float
    w_stat: float
    w_pvalue: float
    t_reason: str = ""
    w_reason: str = ""

    @property
    def n(self) -> int:
        return len(self.seeds)


def _as_finite_floats(name: str, values: Sequence[float]) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    out: list[float] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:  # numpy / torch scalars
                v = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise TypeError(f"{name}[{i}] must be a number, got {type(v).__name__}") from None
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] must be finite, got {v}")
        out.append(float(v))
    return out


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise TypeError(f"confidence must be a number in (0, 1), got {type(confidence).__name__}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def summarize(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample std (``n - 1``) and the two-sided Student-t CI of ``values`` (module doc)."""
    from scipy import stats

    _check_confidence(confidence)
    xs = _as_finite_floats("values", values)
    n = len(xs)
    if n == 0:
        return SeedSummary(0, NAN, NAN, NAN, NAN, confidence, reason="no values")
    mean = math.fsum(xs) / n
    if n == 1:
        return SeedSummary(1, mean, NAN, NAN, NAN, confidence, reason="one value: no spread")
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return SeedSummary(n, mean, std, mean - half, mean + half, confidence)


def _all_equal(d: Sequence[float]) -> bool:
    # Relative tolerance: seeds' accuracy differences that differ only by float round-off (e.g.
    # 0.1 + 0.2 - 0.3) must count as equal, or the t statistic becomes a huge meaningless number.
    scale = max(1.0, max(abs(x) for x in d))
    return max(d) - min(d) <= 1e-12 * scale


def paired_tests(values: Sequence[float], baseline: Sequence[float]) -> PairedComparison:
    """Paired t-test and Wilcoxon signed-rank test of ``values`` against ``baseline``.

    The two sequences are aligned pairs (same seed at the same index). ``seeds`` of the result
    are the indices ``0..n-1``; use :func:`compare_to_baseline` to pair by seed.
    """
    xs = _as_finite_floats("values", values)
    bs = _as_finite_floats("baseline", baseline)
    if len(xs) != len(bs):
        raise ValueError(
            f"values and baseline must be paired (same length), got {len(xs)} and {len(bs)}"
        )
    return _paired(tuple(range(len(xs))), xs, bs)


def _paired(seeds: tuple[int, ...], xs: list[float], bs: list[float]) -> PairedComparison:
    from scipy import stats

    n = len(xs)
    d = [x - b for x, b in zip(xs, bs)]
    mean_diff = math.fsum(d) / n if n else NAN
    if n < 2:
        why = f"{n} matched seed(s): a paired test needs at least 2"
        return PairedComparison(seeds, mean_diff, NAN, NAN, NAN, NAN, why, why)
    t_stat = t_p = NAN
    t_reason = ""
    if _all_equal(d):
        t_reason = f"all {n} differences equal ({d[0]:+.6g}): zero variance, t undefined"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = stats.ttest_rel(xs, bs)
        t_stat, t_p = float(res.statistic), float(res.pvalue)
    w_stat = w_p = NAN
    w_reason = ""
    if all(x == 0.0 for x in d):
        w_reason = "all differences are zero: the signed-rank test has nothing to rank"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (RuntimeWarning, UserWarning))
            try:
                res_w = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
                w_stat, w_p = float(res_w.statistic), float(res_w.pvalue)
            except ValueError as err:  # scipy refuses some degenerate inputs
                w_reason = f"scipy.stats.wilcoxon: {err}"
    return PairedComparison(seeds, mean_diff, t_stat, t_p, w_stat, w_p, t_reason, w_reason)


def compare_to_baseline(
    by_seed: Mapping[int, float], baseline_by_seed: Mapping[int, float]
) -> PairedComparison:
    """Paired tests over the seeds present in both mappings (``{seed: metric}``).

    Seeds that only one side has (a crashed or missing run) are left out of the pairing, never
    imputed; ``seeds`` of the result lists the ones used, in increasing order.
    """
    for name, m in (("by_seed", by_seed), ("baseline_by_seed", baseline_by_seed)):
        if not isinstance(m, Mapping):
            raise TypeError(f"{name} must be a mapping {{seed: value}}, got {type(m).__name__}")
    seeds = tuple(sorted(set(by_seed) & set(baseline_by_seed)))
    xs = _as_finite_floats("by_seed values", [by_seed[s] for s in seeds])
    bs = _as_finite_floats("baseline_by_seed values", [baseline_by_seed[s] for s in seeds])
    return _paired(seeds, xs, bs)
