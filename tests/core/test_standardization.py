"""Logit standardization (Sun et al., CVPR 2024, Algorithm 1)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import zscore_row

from logitkd import zscore


@st.composite
def logit_rows(draw):
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0, 1e4]))
    shift = draw(st.sampled_from([0.0, -7.0, 1e3]))
    return torch.randn(n, c, generator=g, dtype=torch.float64) * scale + shift


@settings(max_examples=60, deadline=None)
@given(logit_rows(), st.floats(0.5, 8.0))
def test_zscore_properties(x, tau):
    z = zscore(x, tau)
    k = x.shape[-1]
    torch.testing.assert_close(z.mean(-1), torch.zeros(len(x), dtype=z.dtype), atol=1e-9, rtol=0)
    # unit population std (times 1/tau), up to the eps in the denominator
    sigma = x.std(-1, correction=0)
    std = (z * tau).std(-1, correction=0)
    torch.testing.assert_close(std, sigma / (sigma + 1e-7), atol=1e-9, rtol=1e-9)
    # the paper's bound |z| <= sqrt(K-1)/tau
    assert bool((z.abs() <= math.sqrt(k - 1) / tau + 1e-9).all())
    # monotone: order of entries preserved
    order = torch.argsort(x, dim=-1)
    assert bool((z.gather(-1, order).diff(dim=-1) >= 0).all())


@settings(max_examples=40, deadline=None)
@given(logit_rows(), st.floats(0.5, 8.0), st.sampled_from([0, 1]))
def test_zscore_matches_reference(x, tau, correction):
    z = zscore(x, tau, correction=correction)
    ref = torch.tensor([zscore_row(r, tau, correction) for r in x.tolist()], dtype=z.dtype)
    torch.testing.assert_close(z, ref, rtol=1e-9, atol=1e-9)


def test_bessel_matches_official_torch_std():
    x = torch.randn(4, 10, dtype=torch.float64)
    official = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-7) / 2.0
    torch.testing.assert_close(zscore(x, 2.0, correction=1), official)


def test_neg_inf_padding_left_out():
    x = torch.tensor([[1.0, 2.0, 4.0, float("-inf"), float("-inf")]], dtype=torch.float64)
    z = zscore(x, 1.5)
    torch.testing.assert_close(z[:, :3], zscore(x[:, :3], 1.5))
    assert bool(torch.isneginf(z[:, 3:]).all())


def test_constant_row_is_finite_and_grad_flows():
    x = torch.full((2, 6), 3.0, dtype=torch.float64, requires_grad=True)
    z = zscore(x, 2.0)
    assert bool(torch.isfinite(z).all())
    (z.sum()).backward()
    assert bool(torch.isfinite(x.grad).all())


def test_gradcheck():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([[1.5], [2.0], [3.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: zscore(a, b), (x, tau))


def test_bad_input():
    with pytest.raises(TypeError, match="floating"):
        zscore(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="tau must be > 0"):
        zscore(torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="correction"):
        zscore(torch.randn(2, 3), correction=2)
