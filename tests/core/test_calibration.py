"""LoCa and mis-instruction: properties (hypothesis) and the paper-equation reference."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import loca_row

from logitkd import loca_calibrate, misinstruction_mask, misinstruction_ratio


@st.composite
def prob_rows(draw, min_c: int = 2, max_c: int = 12):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(min_c, max_c))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0]))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, c, (n,), generator=g)
    return torch.softmax(logits, -1), target


@settings(max_examples=60, deadline=None)
@given(prob_rows(), st.floats(0.05, 0.99))
def test_loca_guarantees(pt, alpha):
    p, y = pt
    out = loca_calibrate(p, y, alpha)
    mis = misinstruction_mask(p, y)
    torch.testing.assert_close(out.sum(-1), torch.ones(len(y), dtype=out.dtype))
    # argmax is the label on every calibrated (and every correct) row
    assert bool((out.argmax(-1) == y).all())
    # correct rows unchanged
    torch.testing.assert_close(out[~mis], p[~mis])
    # strictly positive where the input is
    assert bool((out[p > 0] > 0).all())
    # ratio between two non-target classes kept: out_i / out_j == p_i / p_j
    for r in range(len(y)):
        others = [i for i in range(p.shape[1]) if i != int(y[r])]
        if len(others) >= 2:
            i, j = others[0], others[-1]
            torch.testing.assert_close(out[r, i] * p[r, j], out[r, j] * p[r, i])


@settings(max_examples=40, deadline=None)
@given(prob_rows(), st.sampled_from([0.5, 0.9, 0.95, 0.98, 1.0, 1.01, 1.5]))
def test_loca_matches_paper_reference(pt, alpha):
    p, y = pt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loca_calibrate(p, y, alpha)
    expected = torch.tensor(
        [loca_row(r, int(t), alpha) for r, t in zip(p.tolist(), y.tolist())], dtype=torch.float64
    )
    torch.testing.assert_close(out, expected.to(out.dtype), rtol=1e-10, atol=1e-12)
    assert bool((out >= 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(len(y), dtype=out.dtype))


def test_alpha_ge_one_warns_and_clips_many_classes():
    c = 1000
    logits = torch.zeros(1, c, dtype=torch.float64)
    logits[0, 5] = 3.0
    y = torch.tensor([7])  # teacher wrong, label has tiny mass
    with pytest.warns(UserWarning, match="no longer guaranteed"):
        out = loca_calibrate(torch.softmax(logits, -1), y, 1.5)
    assert float(out[0, 7]) == 0.0
    assert bool((out >= 0).all())
    torch.testing.assert_close(out.sum(-1), torch.ones(1, dtype=out.dtype))


def test_ignored_rows_and_token_shapes():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 5, 9, generator=g), -1)
    y = torch.randint(0, 9, (2, 5), generator=g)
    y[0, 1] = -100
    out = loca_calibrate(p, y, 0.9)
    assert out.shape == p.shape
    torch.testing.assert_close(out[0, 1], p[0, 1])
    assert not bool(misinstruction_mask(p, y)[0, 1])


def test_half_precision_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    p32 = torch.softmax(torch.randn(16, 50, generator=g), -1)
    y = torch.randint(0, 50, (16,), generator=g)
    for dt in (torch.bfloat16, torch.float16):
        out = loca_calibrate(p32.to(dt), y, 0.95)
        assert out.dtype == torch.float32
        ref = loca_calibrate(p32.to(dt).float(), y, 0.95)
        torch.testing.assert_close(out, ref)


def test_no_gradient_needed():
    p = torch.softmax(torch.randn(3, 4, requires_grad=True), -1)
    out = loca_calibrate(p, torch.tensor([0, 1, 2]), 0.9)
    assert not out.requires_grad


def test_mask_ratio():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    y = torch.tensor([1, 1, -100])
    assert misinstruction_mask(scores, y).tolist() == [False, True, False]
    assert misinstruction_ratio(scores, y) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"alpha": 0.0}, ValueError, "alpha must be > 0"),
        ({"alpha": -0.5}, ValueError, "alpha must be > 0"),
        ({"alpha": "x"}, TypeError, "alpha"),
        ({"alpha": 0.9, "target": torch.tensor([0, 5])}, ValueError, r"outside \[0, 3\)"),
        ({"alpha": 0.9, "target": torch.tensor([0])}, ValueError, "target must have shape"),
        ({"alpha": 0.9, "target": torch.tensor([0.0, 1.0])}, TypeError, "integer"),
        ({"alpha": 0.9, "probs": torch.tensor([[1, 0, 0], [0, 1, 0]])}, TypeError, "floating"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {"probs": torch.full((2, 3), 1 / 3), "target": torch.tensor([0, 1])}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        loca_calibrate(args["probs"], args["target"], args["alpha"])
