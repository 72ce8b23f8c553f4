"""Statistics over seeds, checked against formulas written out by hand.

References: the sample std and Student-t interval by their definitions; the paired t statistic
``mean(d) / (s_d / sqrt(n))``; the Wilcoxon signed-rank p-value by enumerating all ``2^n`` sign
assignments (the exact null distribution for ``n`` distinct non-zero differences).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from logitkd.analysis.stats import compare_to_baseline, paired_tests, summarize

finite = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False)


def hand_mean_std(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def test_summarize_matches_definitions() -> None:
    xs = [71.2, 72.5, 70.9, 73.1, 71.8]
    s = summarize(xs)
    m, sd = hand_mean_std(xs)
    assert s.n == 5
    assert s.mean == pytest.approx(m, abs=1e-12)
    assert s.std == pytest.approx(sd, abs=1e-12)
    t975_4 = 2.7764451051977987  # Student t quantile, 4 d.o.f. (statistical tables)
    half = t975_4 * sd / math.sqrt(5)
    assert s.ci_low == pytest.approx(m - half, abs=1e-9)
    assert s.ci_high == pytest.approx(m + half, abs=1e-9)
    assert s.ci_half_width == pytest.approx(half, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_summarize_property(xs: list[float], conf: float) -> None:
    s = summarize(xs, confidence=conf)
    m, sd = hand_mean_std(xs)
    assert s.mean == pytest.approx(m, abs=1e-9)
    assert s.std == pytest.approx(sd, abs=1e-9)
    half = sps.t.ppf((1 + conf) / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    assert s.ci_low == pytest.approx(m - half, abs=1e-8)
    assert s.ci_low <= s.mean <= s.ci_high


def test_summarize_small_and_constant() -> None:
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.reason
    one = summarize([3.0])
    assert one.mean == 3.0 and math.isnan(one.std) and math.isnan(one.ci_low) and one.reason
    const = summarize([2.0, 2.0, 2.0])
    assert const.std == 0.0 and const.ci_low == const.ci_high == 2.0


def test_paired_t_matches_hand_formula() -> None:
    xs = [72.1, 73.0, 71.6, 72.9]
    bs = [71.5, 72.2, 71.9, 72.0]
    d = [x - b for x, b in zip(xs, bs)]
    md, sd = hand_mean_std(d)
    t = md / (sd / math.sqrt(len(d)))
    p = 2 * sps.t.sf(abs(t), len(d) - 1)
    res = paired_tests(xs, bs)
    assert res.mean_diff == pytest.approx(md, abs=1e-12)
    assert res.t_stat == pytest.approx(t, rel=1e-9)
    assert res.t_pvalue == pytest.approx(p, rel=1e-9)
    assert res.n == 4 and not res.t_reason


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=10))
def test_paired_t_property(pairs: list[tuple[float, float]]) -> None:
    xs = [a for a, _ in pairs]
    bs = [b for _, b in pairs]
    d = [x - b for x, b in zip(xs, bs)]
    res = paired_tests(xs, bs)
    md = sum(d) / len(d)
    if max(d) - min(d) <= 1e-12 * max(1.0, max(abs(v) for v in d)):
        assert math.isnan(res.t_pvalue) and res.t_reason
        return
    _, sd = hand_mean_std(d)
    t = md / (sd / math.sqrt(len(d)))
    assert res.t_stat == pytest.approx(t, rel=1e-6, abs=1e-9)
    assert 0.0 <= res.t_pvalue <= 1.0


def exact_wilcoxon_p(d: list[float]) -> float:
    """Two-sided exact p-value: enumerate every sign assignment of the ranks of |d|."""
    n = len(d)
    order = sorted(range(n), key=lambda i: abs(d[i]))
    rank = {i: r + 1 for r, i in enumerate(order)}
    w_plus = sum(rank[i] for i in range(n) if d[i] > 0)
    sums = [
        sum(r for r, s in zip(range(1, n + 1), signs) if s)
        for signs in itertools.product([0, 1], repeat=n)
    ]
    total = len(sums)
    lower = sum(s <= w_plus for s in sums) / total
    upper = sum(s >= w_plus for s in sums) / total
    return min(1.0, 2 * min(lower, upper))


@pytest.mark.parametrize(
    "d",
    [
        [0.5, -0.2, 0.9, 1.3, 0.1],
        [0.31, 0.52, 0.13, -0.04, 0.77, 0.21, 0.45],
        [-1.0, -2.5, 0.25],
        [0.4, 0.9, 1.1, 2.0, 3.5, 0.05, 0.6, 1.7],
    ],
)
def test_wilcoxon_matches_enumeration(d: list[float]) -> None:
    base = [70.0 + i for i in range(len(d))]
    res = paired_tests([b + x for b, x in zip(base, d)], base)
    assert res.w_pvalue == pytest.approx(exact_wilcoxon_p(d), rel=1e-9)
    n = len(d)
    order = sorted(range(n), key=lambda i: abs(d[i]))
    w_plus = sum(r + 1 for r, i in enumerate(order) if d[i] > 0)
    assert res.w_stat == min(w_plus, n * (n + 1) // 2 - w_plus)


def test_degenerate_pairs_give_nan_with_reason() -> None:
    one = paired_tests([1.0], [0.5])
    assert one.mean_diff == 0.5 and math.isnan(one.t_pvalue) and math.isnan(one.w_pvalue)
    assert "at least 2" in one.t_reason and "at least 2" in one.w_reason
    none = paired_tests([], [])
    assert math.isnan(none.mean_diff) and math.isnan(none.t_pvalue)
    zeros = paired_tests([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert zeros.mean_diff == 0.0
    assert math.isnan(zeros.t_pvalue) and math.isnan(zeros.w_pvalue)
    assert zeros.t_reason and zeros.w_reason
    # Equal non-zero differences (up to round-off): t undefined, Wilcoxon still defined.
    shift = paired_tests([0.1 + 0.2, 1.3, 2.3], [0.0 + 0.0, 1.0, 2.0])
    assert math.isnan(shift.t_pvalue) and "equal" in shift.t_reason
    assert shift.w_pvalue == pytest.approx(0.25)


def test_compare_to_baseline_pairs_by_seed() -> None:
    method = {0: 72.0, 1: 73.5, 2: 71.0, 5: 99.0}
    base = {2: 70.0, 0: 71.0, 1: 72.0, 3: 10.0}
    res = compare_to_baseline(method, base)
    assert res.seeds == (0, 1, 2)
    ref = paired_tests([72.0, 73.5, 71.0], [71.0, 72.0, 70.0])
    assert res.t_stat == pytest.approx(ref.t_stat) and res.mean_diff == pytest.approx(ref.mean_diff)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"values\[1\] must be finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(TypeError, match="values"):
        summarize("123")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"values\[0\]"):
        summarize(["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="paired"):
        paired_tests([1.0, 2.0], [1.0])
    with pytest.raises(TypeError, match="by_seed"):
        compare_to_baseline([1.0], {0: 1.0})  # type: ignore[arg-type]
