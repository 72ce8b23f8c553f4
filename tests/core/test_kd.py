"""kd_loss against the paper-equation reference, gradients, dtypes, extreme and bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import kd_reference

from logitkd import KD, kd_loss
from logitkd.losses._rows import divergence_rows


def _pair(seed: int, shape: tuple[int, ...], scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g, dtype=dtype)
    t = torch.randn(*shape, generator=g, dtype=dtype) * scale
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return s, t, y


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 7),
    c=st.integers(2, 15),
    temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    loca=st.sampled_from([None, 0.5, 0.9, 0.98]),
    standardize=st.booleans(),
    drop=st.booleans(),
    divergence=st.sampled_from(["forward_kl", "reverse_kl", "jsd"]),
    ignore_some=st.booleans(),
)
def test_kd_matches_reference(
    seed, n, c, temperature, loca, standardize, drop, divergence, ignore_some
):
    s, t, y = _pair(seed, (n, c))
    if ignore_some:
        y[0] = -100
    got = kd_loss(
        s,
        t,
        y,
        temperature,
        loca_alpha=loca,
        standardize=standardize,
        drop_misinstructed=drop,
        divergence=divergence,
    )
    want = kd_reference(s, t, y, temperature, loca, standardize, drop, divergence=divergence)
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("loca", [None, 0.9])
@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("tensor_temp", [False, True])
def test_gradcheck_both_paths(loca, standardize, tensor_temp):
    s, t, y = _pair(3, (5, 6))
    y[1] = -100
    s.requires_grad_(True)
    temp = torch.tensor(2.5, dtype=torch.float64) if tensor_temp else 2.5
    assert torch.autograd.gradcheck(
        lambda x: kd_loss(x, t, y, temp, loca_alpha=loca, standardize=standardize), (s,)
    )


@pytest.mark.parametrize("loca", [None, 0.95])
@pytest.mark.parametrize("standardize", [False, True])
def test_fused_equals_autograd_path_on_tokens(loca, standardize):
    s, t, y = _pair(5, (2, 9, 30), dtype=torch.float32)
    y[0, :3] = -100
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    fused = kd_loss(s1, t, y, 2.0, loca_alpha=loca, standardize=standardize)
    auto = kd_loss(s2, t, y, torch.tensor(2.0), loca_alpha=loca, standardize=standardize)
    fused.backward()
    auto.backward()
    torch.testing.assert_close(fused, auto, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-7)
    assert float(s1.grad[0, :3].abs().sum()) == 0.0  # ignored tokens get no gradient


def test_token_mean_is_over_non_ignored_tokens():
    s, t, y = _pair(7, (3, 4, 11))
    y[1] = -100
    per = kd_loss(s, t, y, 1.0, reduction="none")
    assert per.shape == (3, 4)
    assert float(per[1].abs().sum()) == 0.0
    torch.testing.assert_close(kd_loss(s, t, y, 1.0), per.sum() / 8)
    torch.testing.assert_close(kd_loss(s, t, y, 1.0, reduction="sum"), per.sum())
    torch.testing.assert_close(kd_loss(s, t, y, 1.0, num_items_in_batch=20), per.sum() / 20)


def test_tensor_temperature_per_row_matches_scalar_rows():
    s, t, y = _pair(8, (4, 7))
    temps = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    per = kd_loss(s, t, y, temps, reduction="none")
    for i in range(4):
        single = kd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], float(temps[i].detach()))
        torch.testing.assert_close(per[i], single)
    per.sum().backward()
    assert temps.grad is not None and bool(torch.isfinite(temps.grad).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loca", [None, 0.9])
def test_half_inputs_computed_in_float32(dtype, loca):
    s, t, y = _pair(9, (16, 40), dtype=torch.float32)
    sh = s.to(dtype).requires_grad_(True)
    loss = kd_loss(sh, t.to(dtype), y, 4.0, loca_alpha=loca, standardize=True)
    assert loss.dtype == torch.float32
    ref = kd_loss(
        sh.detach().float(), t.to(dtype).float(), y, 4.0, loca_alpha=loca, standardize=True
    )
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert sh.grad.dtype == dtype and bool(torch.isfinite(sh.grad.float()).all())


@pytest.mark.parametrize("loca", [None, 0.9, 1.01])
@pytest.mark.parametrize("standardize", [False, True])
def test_extreme_but_valid_inputs(loca, standardize):
    cases = []
    big = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]])
    cases.append((big.clone(), -big.clone(), torch.tensor([0, 2])))  # +-1e4 logits
    onehot_t = torch.tensor([[0.0, 1e4, 0.0, 0.0]] * 3)
    cases.append((torch.randn(3, 4), onehot_t, torch.tensor([0, 1, 3])))  # one-hot teacher
    cases.append((torch.randn(5, 2), torch.randn(5, 2), torch.randint(0, 2, (5,))))  # C=2
    t_all_wrong = torch.tensor([[5.0, 0.0, 0.0]] * 4)
    cases.append((torch.randn(4, 3), t_all_wrong, torch.tensor([1, 2, 1, 2])))  # all mis-instructed
    cases.append((torch.randn(4, 3), t_all_wrong, torch.zeros(4, dtype=torch.long)))  # none
    cases.append((torch.randn(4, 3), torch.randn(4, 3), torch.full((4,), -100)))  # all ignored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s, t, y in cases:
            for drop in (False, True):
                leaf = s.detach().clone().requires_grad_(True)
                loss = kd_loss(
                    leaf,
                    t,
                    y,
                    2.0,
                    loca_alpha=loca,
                    standardize=standardize,
                    drop_misinstructed=drop,
                )
                loss.backward()
                assert bool(torch.isfinite(loss)), (s, t, y)
                assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())


def test_all_ignored_is_zero():
    s = torch.randn(2, 3, 5, requires_grad=True)
    loss = kd_loss(s, torch.randn(2, 3, 5), torch.full((2, 3), -100), 1.0, loca_alpha=0.9)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert float(s.grad.abs().sum()) == 0.0


def test_padded_vocabulary_neg_inf():
    s, t, y = _pair(11, (6, 10))
    s[:, 8:] = float("-inf")
    t[:, 8:] = float("-inf")
    y = y.clamp_max(7)
    s.requires_grad_(True)
    for loca in (None, 0.9):
        for standardize in (False, True):
            got = kd_loss(s, t, y, 2.0, loca_alpha=loca, standardize=standardize)
            want = kd_loss(
                s[:, :8].detach(), t[:, :8], y, 2.0, loca_alpha=loca, standardize=standardize
            )
            torch.testing.assert_close(got.detach(), want)
            (g,) = torch.autograd.grad(got, s)
            assert bool(torch.isfinite(g).all()) and float(g[:, 8:].abs().sum()) == 0.0


def test_loca_changes_only_misinstructed_rows():
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    s = torch.randn(2, 3, dtype=torch.float64)
    y = torch.tensor([0, 0])  # row 0 correct, row 1 mis-instructed
    plain = kd_loss(s, t, y, 1.0, reduction="none")
    loca = kd_loss(s, t, y, 1.0, loca_alpha=0.9, reduction="none")
    assert float(plain[0]) == pytest.approx(float(loca[0]), rel=1e-12)
    assert float(plain[1]) != pytest.approx(float(loca[1]), rel=1e-3)


def test_logit_standardization_toy_case():
    """LS paper, "Issue 2": plain KD prefers a student that predicts the wrong class.

    Student A has the teacher's logits at a tenth of their scale (right ranking); student B is
    closer in KL but ranks class 1 first. With z-scoring, A matches the teacher exactly.
    """
    teacher = torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.float64)
    student_a = teacher / 10
    student_b = torch.tensor([[2.9, 3.0, 1.0]], dtype=torch.float64)
    assert student_a.argmax() == teacher.argmax() and student_b.argmax() != teacher.argmax()
    kd_a = float(kd_loss(student_a, teacher, temperature=1.0))
    kd_b = float(kd_loss(student_b, teacher, temperature=1.0))
    assert kd_b < kd_a  # plain KD ranks the wrong student better
    ls_a = float(kd_loss(student_a, teacher, temperature=1.0, standardize=True))
    ls_b = float(kd_loss(student_b, teacher, temperature=1.0, standardize=True))
    assert ls_a < 1e-10 < ls_b


def test_divergence_rows_rejects_unknown():
    s, t, y = _pair(1, (2, 3))
    with pytest.raises(ValueError, match="divergence"):
        divergence_rows(s, t, y, torch.tensor(1.0), None, False, "bogus")


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda s, t, y: kd_loss(s, t[:, :4], y), ValueError, "same number of classes"),
        (lambda s, t, y: kd_loss(s, t[:2], y), ValueError, "same shape"),
        (lambda s, t, y: kd_loss(s, t, y.clamp_max(0) + 9), ValueError, r"outside \[0, 5\)"),
        (lambda s, t, y: kd_loss(s, t, y.clamp_max(0) - 3), ValueError, "outside"),
        (
            lambda s, t, y: kd_loss(s * float("nan"), t, y),
            ValueError,
            "student_logits contains NaN",
        ),
        (
            lambda s, t, y: kd_loss(s, t + float("inf"), y),
            ValueError,
            r"teacher_logits contains \+inf",
        ),
        (lambda s, t, y: kd_loss(s, t, y, loca_alpha=0.0), ValueError, "alpha must be > 0"),
        (lambda s, t, y: kd_loss(s, t, y, temperature=0.0), ValueError, "temperature"),
        (lambda s, t, y: kd_loss(s, t, y, temperature=-1.0), ValueError, "temperature"),
        (lambda s, t, y: kd_loss(s, t, loca_alpha=0.9), ValueError, "loca_alpha needs target"),
        (lambda s, t, y: kd_loss(s, t, drop_misinstructed=True), ValueError, "needs target"),
        (lambda s, t, y: kd_loss(s.long(), t, y), TypeError, "floating-point"),
        (lambda s, t, y: kd_loss(s, t, y.float()), TypeError, "integer"),
        (lambda s, t, y: kd_loss(s, t, y, divergence="kl"), ValueError, "divergence"),
        (lambda s, t, y: kd_loss(s, t, y, reduction="avg"), ValueError, "reduction"),
    ],
)
def test_bad_input(call, exc, match):
    s, t, y = _pair(0, (3, 5), dtype=torch.float32)
    with pytest.raises(exc, match=match):
        call(s, t, y)


def test_student_neg_inf_where_teacher_finite_raises():
    s, t, y = _pair(0, (3, 5), dtype=torch.float32)
    s[0, 1] = float("-inf")
    with pytest.raises(ValueError, match="-inf where teacher_logits is finite"):
        kd_loss(s, t, y)


def test_kd_module_terms():
    s, t, y = _pair(2, (8, 10), dtype=torch.float32)
    module = KD(ce_weight=0.1, kd_weight=0.9, temperature=4.0, loca_alpha=0.95)
    terms = module(s, t, y)
    assert set(terms) == {"ce", "kd"}
    torch.testing.assert_close(terms["ce"], 0.1 * torch.nn.functional.cross_entropy(s, y))
    torch.testing.assert_close(terms["kd"], 0.9 * kd_loss(s, t, y, 4.0, loca_alpha=0.95))
    with pytest.raises(ValueError, match="alpha"):
        KD(loca_alpha=-1.0)


def test_check_inputs_false_skips_scans_but_keeps_values():
    s, t, y = _pair(4, (6, 9), dtype=torch.float32)
    for loca in (None, 0.9):
        for standardize in (False, True):
            a = kd_loss(s, t, y, 2.0, loca_alpha=loca, standardize=standardize)
            b = kd_loss(s, t, y, 2.0, loca_alpha=loca, standardize=standardize, check_inputs=False)
            torch.testing.assert_close(a, b)
    module = KD(loca_alpha=0.9, check_inputs=False)
    torch.testing.assert_close(module(s, t, y)["kd"], KD(loca_alpha=0.9)(s, t, y)["kd"])
    # the shape check stays on
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, t[:2], y, check_inputs=False)


def test_loca_tie_for_top_follows_argmax_semantics():
    """A label tied for the teacher's top value is mis-instructed iff argmax (first index) differs."""
    t = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s = torch.randn(3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])  # row 0: argmax 0 == label; rows 1, 2: argmax 0 != label
    got = kd_loss(s, t, y, 1.0, loca_alpha=0.9, reduction="none")
    for i in range(3):
        want = kd_reference(s[i : i + 1], t[i : i + 1], y[i : i + 1], 1.0, 0.9)
        assert float(got[i]) == pytest.approx(want, rel=1e-10)
    plain = kd_loss(s, t, y, 1.0, reduction="none")
    assert float(got[0]) == pytest.approx(float(plain[0]))
    assert float(got[1]) != pytest.approx(float(plain[1]))
