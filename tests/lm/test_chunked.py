"""chunked_kd_loss / chunked_distill_loss against the materialised loss, references and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from logitkd.lm.chunked import chunked_distill_loss, chunked_kd_loss
from logitkd.losses.kd import kd_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from reference import kd_reference


def _inputs(seed, n=50, h=16, h_t=24, v=97, v_t=None, dtype=torch.float32, ignore="third"):
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_(True)
    s_w = (torch.randn(v, h, generator=g, dtype=dtype) * 0.5).requires_grad_(True)
    t_h = torch.randn(n, h_t, generator=g, dtype=dtype)
    t_w = torch.randn(v_t or v, h_t, generator=g, dtype=dtype) * 0.7
    y = torch.randint(0, v, (n,), generator=g)
    if ignore == "third":
        y[::3] = -100
    elif ignore == "prefix":
        y[: n // 2] = -100
    elif ignore == "random":
        y[torch.rand(n, generator=g) < 0.4] = -100
    return s_h, s_w, t_h, t_w, y


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    """Relative to the tensor's scale (tiny entries of a gradient are not meaningful alone)."""
    scale = float(b.detach().abs().max()) or 1.0
    torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=rtol * scale)


def _naive(s_h, s_w, t_h, t_w, y, **kw):
    return kd_loss(s_h @ s_w.T, t_h @ t_w.T, y, **kw)


OPTIONS = [
    {},
    {"loca_alpha": 0.9},
    {"standardize": True},
    {"loca_alpha": 0.8, "standardize": True},
    {"divergence": "reverse_kl"},
    {"divergence": "jsd"},
    {"divergence": "reverse_kl", "loca_alpha": 0.9, "standardize": True},
]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    option=st.sampled_from(OPTIONS),
    temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    chunk_size=st.sampled_from([1, 7, 16, 50, 1024]),
    ignore=st.sampled_from(["none", "third", "prefix", "random"]),
)
def test_equals_materialised_kd_loss_fp32(seed, option, temperature, chunk_size, ignore):
    s_h, s_w, t_h, t_w, y = _inputs(seed, ignore=ignore)
    got = chunked_kd_loss(s_h, s_w, t_h, t_w, y, temperature, chunk_size=chunk_size, **option)
    g_got = torch.autograd.grad(got, (s_h, s_w))
    ref = _naive(s_h, s_w, t_h, t_w, y, temperature=temperature, **option)
    g_ref = torch.autograd.grad(ref, (s_h, s_w))
    _close(got, ref, 1e-5)
    for a, b in zip(g_got, g_ref):
        _close(a, b, 1e-5)


@pytest.mark.parametrize(
    "option", [{}, {"loca_alpha": 0.7}, {"standardize": True}, {"divergence": "jsd"}]
)
def test_equals_independent_reference_fp64(option):
    s_h, s_w, t_h, t_w, y = _inputs(3, n=12, h=5, h_t=6, v=9, dtype=torch.float64)
    got = chunked_kd_loss(s_h, s_w, t_h, t_w, y, 2.0, chunk_size=5, **option)
    ref = kd_reference(s_h @ s_w.T, t_h @ t_w.T, y, 2.0, **option)
    assert float(got.detach()) == pytest.approx(ref, rel=1e-10)


def test_gradcheck_through_hidden_and_weight():
    s_h, s_w, t_h, t_w, y = _inputs(5, n=6, h=3, h_t=4, v=7, dtype=torch.float64, ignore="none")
    y[1] = -100

    def f(h, w):
        return chunked_kd_loss(
            h, w, t_h, t_w, y, 1.5, loca_alpha=0.9, standardize=True, chunk_size=4
        )

    assert torch.autograd.gradcheck(f, (s_h, s_w))


def test_bf16_inputs_match_materialised_loss_loosely():
    s_h, s_w, t_h, t_w, y = _inputs(11, dtype=torch.bfloat16)
    got = chunked_kd_loss(s_h, s_w, t_h, t_w, y, 2.0, loca_alpha=0.9, chunk_size=16)
    g_got = torch.autograd.grad(got, (s_h, s_w))
    ref = _naive(s_h, s_w, t_h, t_w, y, temperature=2.0, loca_alpha=0.9)
    g_ref = torch.autograd.grad(ref, (s_h, s_w))
    assert got.dtype == torch.float32
    assert g_got[0].dtype == g_got[1].dtype == torch.bfloat16
    _close(got, ref, 1e-3)
    for a, b in zip(g_got, g_ref):
        _close(a.float(), b.float(), 3e-2)


def test_padded_vocab_compares_the_shared_rows():
    v = 90
    s_h, s_w, t_h, t_w, y = _inputs(2, v=v + 6, v_t=v + 38)  # both heads padded, differently
    y[y >= v] = 1  # real tokens only
    got = chunked_kd_loss(s_h, s_w, t_h, t_w, y, 2.0, vocab_size=v, chunk_size=9)
    g_got = torch.autograd.grad(got, (s_h, s_w))
    ref = kd_loss((s_h @ s_w.T)[:, :v], (t_h @ t_w.T)[:, :v], y, temperature=2.0)
    g_ref = torch.autograd.grad(ref, (s_h, s_w))
    _close(got, ref, 1e-5)
    for a, b in zip(g_got, g_ref):
        _close(a, b, 1e-5)
    assert torch.all(g_got[1][v:] == 0)  # the student's padded rows get no KD gradient


def test_different_vocab_without_vocab_size_is_an_error():
    s_h, s_w, t_h, t_w, y = _inputs(2, v=50, v_t=64)
    with pytest.raises(ValueError, match="vocab_size"):
        chunked_kd_loss(s_h, s_w, t_h, t_w, y)
    with pytest.raises(ValueError, match="exceeds"):
        chunked_kd_loss(s_h, s_w, t_h, t_w, y, vocab_size=60)


def test_gradient_accumulation_with_num_items_in_batch_equals_full_batch():
    s_h, s_w, t_h, t_w, y = _inputs(4, n=40, ignore="random")
    full = chunked_kd_loss(s_h, s_w, t_h, t_w, y, 2.0, loca_alpha=0.9)
    g_full = torch.autograd.grad(full, (s_h, s_w))
    n_items = int((y != -100).sum())
    parts = [slice(0, 9), slice(9, 40)]  # unequal micro-batches: a per-batch mean would be wrong
    total = sum(
        chunked_kd_loss(
            s_h[p], s_w, t_h[p], t_w, y[p], 2.0, loca_alpha=0.9, num_items_in_batch=n_items
        )
        for p in parts
    )
    g_total = torch.autograd.grad(total, (s_h, s_w))
    _close(total, full, 1e-5)
    for a, b in zip(g_total, g_full):
        _close(a, b, 1e-5)
    # and num_items_in_batch matches kd_loss's own convention
    ref = _naive(s_h, s_w, t_h, t_w, y, temperature=2.0, num_items_in_batch=100)
    got = chunked_kd_loss(s_h, s_w, t_h, t_w, y, 2.0, num_items_in_batch=torch.tensor(100))
    _close(got, ref, 1e-5)


def test_distill_loss_combines_ce_and_kd():
    s_h, s_w, t_h, t_w, y = _inputs(6, ignore="random")
    res = chunked_distill_loss(
        s_h, s_w, t_h, t_w, y, ce_weight=0.3, kd_weight=0.7, temperature=2.0, standardize=True,
        chunk_size=13,
    )  # fmt: skip
    g_got = torch.autograd.grad(res.loss, (s_h, s_w))
    logits = s_h @ s_w.T
    ce = F.cross_entropy(logits, y, ignore_index=-100)
    kd = kd_loss(logits, t_h @ t_w.T, y, temperature=2.0, standardize=True)
    ref = 0.3 * ce + 0.7 * kd
    g_ref = torch.autograd.grad(ref, (s_h, s_w))
    _close(res.loss, ref, 1e-5)
    _close(res.ce, ce, 1e-5)
    _close(res.kd, kd, 1e-5)
    assert res.n_tokens == int((y != -100).sum())
    assert not res.ce.requires_grad and not res.kd.requires_grad
    for a, b in zip(g_got, g_ref):
        _close(a, b, 1e-5)


def test_sft_needs_no_teacher():
    s_h, s_w, _, _, y = _inputs(7)
    res = chunked_distill_loss(s_h, s_w, None, None, y, ce_weight=1.0, kd_weight=0.0)
    _close(res.loss, F.cross_entropy(s_h @ s_w.T, y, ignore_index=-100), 1e-5)
    with pytest.raises(ValueError, match="teacher"):
        chunked_distill_loss(s_h, s_w, None, None, y, ce_weight=0.5, kd_weight=0.5)


def test_upstream_gradient_scales_and_teacher_gets_none():
    s_h, s_w, t_h, t_w, y = _inputs(8)
    t_h.requires_grad_(True)
    t_w.requires_grad_(True)
    ref_grads = torch.autograd.grad(chunked_kd_loss(s_h, s_w, t_h, t_w, y), (s_h, s_w))
    (3.0 * chunked_kd_loss(s_h, s_w, t_h, t_w, y)).backward()
    _close(s_h.grad, 3.0 * ref_grads[0], 1e-6)
    _close(s_w.grad, 3.0 * ref_grads[1], 1e-6)
    assert t_h.grad is None and t_w.grad is None


def test_no_grad_mode_gives_the_same_value_without_a_graph():
    s_h, s_w, t_h, t_w, y = _inputs(9)
    with_grad = chunked_kd_loss(s_h, s_w, t_h, t_w, y, loca_alpha=0.9)
    with torch.no_grad():
        without = chunked_kd_loss(s_h, s_w, t_h, t_w, y, loca_alpha=0.9)
    assert without.grad_fn is None
    _close(without, with_grad, 1e-6)


def test_all_tokens_ignored_gives_zero_and_zero_gradients():
    s_h, s_w, t_h, t_w, y = _inputs(10)
    y[:] = -100
    loss = chunked_kd_loss(s_h, s_w, t_h, t_w, y, loca_alpha=0.9)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.all(s_h.grad == 0) and torch.all(s_w.grad == 0)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {**a, "student_hidden": a["student_hidden"][:, :5]}, ValueError, "share H"),
        (lambda a: {**a, "teacher_hidden": a["teacher_hidden"][:-1]}, ValueError, "rows"),
        (lambda a: {**a, "target": a["target"].float()}, TypeError, "integer"),
        (lambda a: {**a, "target": a["target"][:-2]}, ValueError, "aligned"),
        (lambda a: {**a, "target": a["target"].clamp_min(0) + 200}, ValueError, r"\[0, 97\)"),
        (
            lambda a: {**a, "student_hidden": a["student_hidden"].reshape(5, 10, 16)},
            ValueError,
            "2-D",
        ),
        (lambda a: {**a, "chunk_size": 0}, ValueError, "chunk_size"),
        (lambda a: {**a, "temperature": torch.tensor(2.0)}, TypeError, "temperature"),
        (lambda a: {**a, "temperature": -1.0}, ValueError, "temperature"),
        (lambda a: {**a, "divergence": "kl"}, ValueError, "divergence"),
        (lambda a: {**a, "loca_alpha": 0.0}, ValueError, "alpha"),
        (lambda a: {**a, "num_items_in_batch": 0}, ValueError, "num_items_in_batch"),
    ],
)
def test_bad_input_is_named(change, error, match):
    s_h, s_w, t_h, t_w, y = _inputs(1)
    args = {
        "student_hidden": s_h,
        "student_weight": s_w,
        "teacher_hidden": t_h,
        "teacher_weight": t_w,
        "target": y,
    }
    with pytest.raises(error, match=match):
        chunked_kd_loss(**change(args))


def test_chunk_is_capped_by_max_chunk_elements(monkeypatch):
    import logitkd.lm.chunked as chunked

    rows: list[int] = []
    real = chunked._chunk_terms

    def spy(s_logits, *args):
        rows.append(s_logits.shape[0])
        return real(s_logits, *args)

    monkeypatch.setattr(chunked, "_chunk_terms", spy)
    s_h, s_w, t_h, t_w, y = _inputs(12, n=50, v=97, ignore="none")
    capped = chunked_kd_loss(s_h, s_w, t_h, t_w, y, chunk_size=64, max_chunk_elements=97 * 8 + 5)
    assert rows == [8] * 6 + [2]  # 8 tokens of 97 logits fit the cap; 50 = 6 * 8 + 2
    rows.clear()
    free = chunked_kd_loss(s_h, s_w, t_h, t_w, y, chunk_size=64, max_chunk_elements=None)
    assert rows == [50]
    _close(capped, free, 1e-6)
    with pytest.raises(ValueError, match="max_chunk_elements"):
        chunked_kd_loss(s_h, s_w, t_h, t_w, y, max_chunk_elements=0)
