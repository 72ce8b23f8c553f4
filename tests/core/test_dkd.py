"""DKD (Zhao et al., CVPR 2022) against the paper's equations; LoCa moves TCKD only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import dkd_reference

from logitkd import DKD, dkd_loss
from logitkd.losses import dkd_terms


def _pair(seed: int, n: int, c: int):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64)
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    return s, t, torch.randint(0, c, (n,), generator=g)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    c=st.integers(2, 12),
    temperature=st.sampled_from([1.0, 2.0, 4.0]),
    loca=st.sampled_from([None, 0.9, 0.98]),
    standardize=st.booleans(),
)
def test_dkd_terms_match_reference(seed, n, c, temperature, loca, standardize):
    s, t, y = _pair(seed, n, c)
    tckd, nckd = dkd_terms(s, t, y, temperature, loca, standardize)
    want_t, want_n = dkd_reference(s, t, y, temperature, loca, standardize)
    assert float(tckd) == pytest.approx(want_t, rel=1e-8, abs=1e-12)
    assert float(nckd) == pytest.approx(want_n, rel=1e-8, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.1, 0.99))
def test_loca_keeps_nckd_moves_tckd(seed, alpha):
    s, t, y = _pair(seed, 6, 9)
    t[:, 0] += 10.0  # teacher favours class 0 ...
    y[:] = 3  # ... but the label is 3: every row mis-instructed
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    tckd_l, nckd_l = dkd_terms(s, t, y, 4.0, loca_alpha=alpha)
    torch.testing.assert_close(nckd, nckd_l)
    assert abs(float(tckd) - float(tckd_l)) > 1e-6


def test_dkd_loss_weights_and_gradcheck():
    s, t, y = _pair(1, 4, 5)
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    torch.testing.assert_close(dkd_loss(s, t, y, alpha=2.0, beta=3.0), 2 * tckd + 3 * nckd)
    s.requires_grad_(True)
    for loca in (None, 0.9):
        assert torch.autograd.gradcheck(
            lambda x, a=loca: dkd_loss(x, t, y, loca_alpha=a, standardize=True), (s,)
        )


def test_dkd_tokens_with_ignore_index():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    y = torch.randint(0, 7, (2, 5), generator=g)
    y[1, 2:] = -100
    keep = y != -100
    got = dkd_loss(s, t, y)
    torch.testing.assert_close(got, dkd_loss(s[keep], t[keep], y[keep]))


def test_dkd_module_warmup():
    s, t, y = _pair(2, 8, 10)
    module = DKD(ce_weight=1.0, alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
    full = dkd_loss(s, t, y, 1.0, 8.0, 4.0)
    torch.testing.assert_close(module(s, t, y, epoch=5)["dkd"], 0.25 * full)
    torch.testing.assert_close(module(s, t, y, epoch=40)["dkd"], full)
    torch.testing.assert_close(module(s, t, y)["dkd"], full)


def test_dkd_bad_input():
    s, t, y = _pair(0, 3, 4)
    with pytest.raises(ValueError, match="needs target"):
        dkd_loss(s, t, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same number of classes"):
        dkd_loss(s, t[:, :3], y)
    with pytest.raises(ValueError, match="warmup_epochs"):
        DKD(warmup_epochs=-1)
