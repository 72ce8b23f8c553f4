"""MLKD: values against a loop reference from the paper's equations, masks, views, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from logitkd.losses.mlkd import MLKD, confidence_masks, mlkd_loss, mlkd_terms

# --------------------------------------------------------------------------------------------
# Independent reference: plain Python floats, loops over rows, pairs and temperatures.
# --------------------------------------------------------------------------------------------

Row = list[float]


def _softmax(x: Row) -> Row:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    z = sum(e)
    return [v / z for v in e]


def _scaled(x: Row, temp: float, standardize: bool) -> Row:
    if not standardize:
        return [v / temp for v in x]
    mean = sum(x) / len(x)
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))  # population std (LS Alg. 1)
    return [(v - mean) / (std + 1e-7) / temp for v in x]


def _loca(p: Row, gt: int, alpha: float) -> Row:
    """LoCa eqs. 14-18 (0 < alpha < 1)."""
    if max(range(len(p)), key=lambda i: (p[i], -i)) == gt:
        return p
    s = alpha / (1.0 - p[gt] + max(p))
    out = [s * v for v in p]
    out[gt] = 1.0 - sum(out[i] for i in range(len(p)) if i != gt)
    return out


def _median(vals: Row) -> float:
    v = sorted(vals)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def ref_masks(t: list[Row]) -> tuple[list[float], list[float]]:
    p = [_softmax(r) for r in t]
    conf = [max(r) for r in p]
    cls = [sum(r[a] for r in p) for a in range(len(t[0]))]
    mc, cc = _median(conf), _median(cls)
    return [1.0 if v <= mc else 0.0 for v in conf], [1.0 if v <= cc else 0.0 for v in cls]


def ref_kl_rows(s, t, y, temp, standardize, loca_alpha) -> Row:
    out = []
    for i in range(len(s)):
        q = _softmax(_scaled(s[i], temp, standardize))
        p = _softmax(_scaled(t[i], temp, standardize))
        if loca_alpha is not None:
            p = _loca(p, y[i], loca_alpha)
        kl = sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)
        out.append(temp * temp * kl)
    return out


def ref_batch(ps: list[Row], pt: list[Row], m: Row) -> float:
    b, c = len(ps), len(ps[0])
    total = 0.0
    for i in range(b):
        for j in range(b):
            gt = sum(pt[i][k] * pt[j][k] for k in range(c))
            gs = sum(ps[i][k] * ps[j][k] for k in range(c))
            total += m[i] * m[j] * (gt - gs) ** 2
    return total / b


def ref_class(ps: list[Row], pt: list[Row], cm: Row) -> float:
    b, c = len(ps), len(ps[0])
    total = 0.0
    for a in range(c):
        for d in range(c):
            mt = sum(pt[i][a] * pt[i][d] for i in range(b))
            ms = sum(ps[i][a] * ps[i][d] for i in range(b))
            total += cm[a] * cm[d] * (mt - ms) ** 2
    return total / c


def ref_mlkd(sw, tw, ss, ts, y, temps, loca_alpha, standardize, mask) -> dict[str, float]:
    sw, tw = sw.tolist(), tw.tolist()
    ss = None if ss is None else ss.tolist()
    ts = None if ts is None else ts.tolist()
    y = None if y is None else y.tolist()
    b, c = len(sw), len(sw[0])
    m, cm = ref_masks(tw) if mask else ([1.0] * b, [1.0] * c)
    inst = bat = cls = 0.0
    for temp in temps:
        rows = ref_kl_rows(sw, tw, y, temp, standardize, loca_alpha)
        inst += sum(mi * r for mi, r in zip(m, rows)) / b
        if ss is not None:
            inst += sum(ref_kl_rows(ss, ts, y, temp, standardize, loca_alpha)) / b
        ps = [_softmax(_scaled(r, temp, standardize)) for r in sw]
        pt = [_softmax(_scaled(r, temp, standardize)) for r in tw]
        bat += ref_batch(ps, pt, m)
        cls += ref_class(ps, pt, cm)
    return {"instance": inst, "batch": bat, "class": cls}


def _views(seed: int, b: int, c: int, scale: float = 3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sw = torch.randn(b, c, generator=g, dtype=dtype)
    tw = torch.randn(b, c, generator=g, dtype=dtype) * scale
    ss = torch.randn(b, c, generator=g, dtype=dtype)
    ts = torch.randn(b, c, generator=g, dtype=dtype) * scale
    y = torch.randint(0, c, (b,), generator=g)
    return sw, tw, ss, ts, y


def _close(got: dict[str, torch.Tensor], want: dict[str, float], rel: float = 1e-9) -> None:
    for k in ("instance", "batch", "class"):
        assert float(got[k].detach()) == pytest.approx(want[k], rel=rel, abs=1e-12), k


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(2, 6),
    c=st.integers(2, 6),
    temps=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), min_size=1, max_size=5),
    strong=st.booleans(),
    loca_alpha=st.sampled_from([None, 0.9]),
    standardize=st.booleans(),
    mask=st.booleans(),
)
def test_terms_match_reference(seed, b, c, temps, strong, loca_alpha, standardize, mask) -> None:
    sw, tw, ss, ts, y = _views(seed, b, c)
    if not strong:
        ss = ts = None
    got = mlkd_terms(sw, tw, ss, ts, y, temps, loca_alpha, standardize, confidence_mask=mask)
    _close(got, ref_mlkd(sw, tw, ss, ts, y, temps, loca_alpha, standardize, mask))
    total = mlkd_loss(sw, tw, ss, ts, y, temps, loca_alpha, standardize, confidence_mask=mask)
    assert float(total) == pytest.approx(float(sum(got.values())), rel=1e-12)


def test_default_temperatures_are_two_to_six() -> None:
    sw, tw, ss, ts, y = _views(1, 5, 4)
    got = mlkd_terms(sw, tw, ss, ts, y)
    _close(got, ref_mlkd(sw, tw, ss, ts, y, [2, 3, 4, 5, 6], None, False, True))


def test_strong_view_compares_strong_student_with_strong_teacher() -> None:
    """The official code used weak-view logits for T=2 and T=6 inside its strong-view term; here
    the strong-view addition is exactly sum_T T^2 mean_i KL(strong teacher || strong student)."""
    sw, tw, ss, ts, y = _views(2, 6, 5)
    temps = (2.0, 3.0, 4.0, 5.0, 6.0)
    with_strong = mlkd_terms(sw, tw, ss, ts, y, temps)["instance"]
    weak_only = mlkd_terms(sw, tw, None, None, y, temps)["instance"]
    want = sum(sum(ref_kl_rows(ss.tolist(), ts.tolist(), None, t, False, None)) / 6 for t in temps)
    assert float(with_strong - weak_only) == pytest.approx(want, rel=1e-10)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [4, 5, 8])
def test_masks_keep_the_less_confident_half(b: int) -> None:
    _, tw, _, _, _ = _views(3, b, 7)
    m, cm = confidence_masks(tw)
    want_m, want_c = ref_masks(tw.tolist())
    assert m.tolist() == [bool(v) for v in want_m]
    assert cm.tolist() == [bool(v) for v in want_c]
    assert int(m.sum()) == (b + 1) // 2  # distinct confidences: the median splits them
    conf = torch.softmax(tw, -1).max(-1).values
    assert float(conf[m].max()) < float(conf[~m].min())


def test_masked_sample_contributes_nothing() -> None:
    """A sample whose teacher confidence is above the median contributes neither value nor
    gradient to the masked instance and batch terms."""
    sw, tw, _, _, y = _views(4, 6, 5)
    m, _ = confidence_masks(tw)
    k = int((~m).nonzero()[0])
    sw = sw.clone().requires_grad_(True)
    terms = mlkd_terms(sw, tw, target=y, loca_alpha=0.9, standardize=True)
    (terms["instance"] + terms["batch"]).backward()
    assert bool((sw.grad[k] == 0).all())
    assert bool((sw.grad[m] != 0).any())
    moved = sw.detach().clone()
    moved[k] += torch.tensor([5.0, -3.0, 1.0, 0.0, 2.0], dtype=torch.float64)
    again = mlkd_terms(moved, tw, target=y, loca_alpha=0.9, standardize=True)
    for key in ("instance", "batch"):
        assert float(again[key]) == pytest.approx(float(terms[key].detach()), rel=1e-13)
    assert float(again["class"]) != pytest.approx(float(terms["class"].detach()), rel=1e-6)


def test_masked_class_pairs_contribute_nothing() -> None:
    """The class term equals the reference over kept class pairs only; with all classes kept it
    is larger or equal."""
    sw, tw, _, _, _ = _views(5, 6, 6)
    _, cm = confidence_masks(tw)
    assert 0 < int(cm.sum()) < 6
    masked = float(mlkd_terms(sw, tw, temperatures=(4.0,))["class"])
    full = float(mlkd_terms(sw, tw, temperatures=(4.0,), confidence_mask=False)["class"])
    assert masked < full
    ps = [_softmax(_scaled(r, 4.0, False)) for r in sw.tolist()]
    pt = [_softmax(_scaled(r, 4.0, False)) for r in tw.tolist()]
    assert masked == pytest.approx(ref_class(ps, pt, [float(v) for v in cm.tolist()]), rel=1e-10)


def test_masks_ignore_standardize_and_loca() -> None:
    """Masks come from the raw weak-view teacher at T=1, whatever the options."""
    sw, tw, _, _, y = _views(6, 7, 5)
    a = mlkd_terms(sw, tw, target=y, loca_alpha=0.9, standardize=True, temperatures=(1.0,))
    m, _ = confidence_masks(tw)
    rows = ref_kl_rows(sw.tolist(), tw.tolist(), y.tolist(), 1.0, True, 0.9)
    want = sum(r for r, keep in zip(rows, m.tolist()) if keep) / 7
    assert float(a["instance"]) == pytest.approx(want, rel=1e-10)


# --------------------------------------------------------------------------------------------
# Properties and gradients
# --------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 6),
    c=st.integers(2, 7),
    standardize=st.booleans(),
    mask=st.booleans(),
    scale=st.floats(0.1, 10.0),
)
def test_zero_when_student_equals_teacher(seed, b, c, standardize, mask, scale) -> None:
    _, tw, _, ts, _ = _views(seed, b, c, scale=scale)
    terms = mlkd_terms(
        tw.clone(), tw, ts.clone(), ts, standardize=standardize, confidence_mask=mask
    )
    for k, v in terms.items():
        assert abs(float(v)) < 1e-10, k


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(2, 6), c=st.integers(2, 6))
def test_terms_are_nonnegative(seed, b, c) -> None:
    sw, tw, ss, ts, y = _views(seed, b, c)
    for v in mlkd_terms(sw, tw, ss, ts, y, loca_alpha=0.95).values():
        assert float(v) >= 0.0


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("loca_alpha", [None, 0.9])
def test_gradcheck(standardize: bool, loca_alpha: float | None) -> None:
    sw, tw, ss, ts, y = _views(7, 4, 3)

    def fn(a, b):
        return mlkd_loss(a, tw, b, ts, y, (2.0, 5.0), loca_alpha, standardize)

    inputs = (sw.requires_grad_(True), ss.requires_grad_(True))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_teacher_gets_no_gradient() -> None:
    sw, tw, ss, ts, y = _views(8, 4, 3)
    tw.requires_grad_(True)
    ts.requires_grad_(True)
    sw.requires_grad_(True)
    mlkd_loss(sw, tw, ss, ts, y).backward()
    assert tw.grad is None and ts.grad is None
    assert sw.grad is not None


def test_float32_and_half_inputs() -> None:
    sw, tw, ss, ts, y = _views(9, 6, 5, dtype=torch.float32)
    want = ref_mlkd(
        sw.double(), tw.double(), ss.double(), ts.double(), y, [2, 3, 4, 5, 6], None, False, True
    )
    _close(mlkd_terms(sw, tw, ss, ts, y), want, rel=1e-4)
    half = mlkd_terms(sw.half(), tw.half(), ss.half(), ts.half(), y)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in half.values())


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


def test_module_weights_and_ce_on_both_views() -> None:
    sw, tw, ss, ts, y = _views(10, 5, 4)
    mod = MLKD()
    assert (mod.ce_weight, mod.kd_weight, mod.temperatures) == (0.1, 0.9, (2.0, 3.0, 4.0, 5.0, 6.0))
    out = mod(sw, tw, y, student_logits_strong=ss, teacher_logits_strong=ts, epoch=3)
    assert set(out) == {"ce", "kd_instance", "kd_batch", "kd_class"}
    want = ref_mlkd(sw, tw, ss, ts, y, [2, 3, 4, 5, 6], None, False, True)
    assert float(out["kd_instance"]) == pytest.approx(0.9 * want["instance"], rel=1e-9)
    assert float(out["kd_batch"]) == pytest.approx(0.9 * want["batch"], rel=1e-9)
    assert float(out["kd_class"]) == pytest.approx(0.9 * want["class"], rel=1e-9)
    ce = F.cross_entropy(sw, y) + F.cross_entropy(ss, y)
    assert float(out["ce"]) == pytest.approx(0.1 * float(ce), rel=1e-12)
    weak = MLKD(ce_weight=1.0, kd_weight=9.0, standardize=True, loca_alpha=0.9)(sw, tw, y)
    want = ref_mlkd(sw, tw, None, None, y, [2, 3, 4, 5, 6], 0.9, True, True)
    assert float(weak["ce"]) == pytest.approx(float(F.cross_entropy(sw, y)), rel=1e-12)
    assert float(weak["kd_instance"]) == pytest.approx(9.0 * want["instance"], rel=1e-9)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_input() -> None:
    sw, tw, ss, ts, y = _views(11, 4, 3)
    with pytest.raises(ValueError, match="target"):
        mlkd_loss(sw, tw, loca_alpha=0.9)
    with pytest.raises(ValueError, match="student_strong"):
        mlkd_loss(sw, tw, ss[:3], ts, y)
    with pytest.raises(ValueError, match="student_strong and student_weak"):
        mlkd_loss(sw, tw, ss[:3], ts[:3], y)
    with pytest.raises(ValueError, match="teacher_strong"):
        mlkd_loss(sw, tw, ss, None, y)
    with pytest.raises(ValueError, match="student_weak and teacher_weak"):
        mlkd_loss(sw, tw[:, :2], None, None, y)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        mlkd_loss(sw.unsqueeze(0), tw.unsqueeze(0))
    with pytest.raises(ValueError, match="temperatures"):
        mlkd_loss(sw, tw, temperatures=())
    with pytest.raises(ValueError, match="temperatures"):
        mlkd_loss(sw, tw, temperatures=(2.0, -1.0))
    with pytest.raises(TypeError, match="temperatures"):
        mlkd_loss(sw, tw, temperatures=4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        mlkd_loss(sw * float("nan"), tw)
    with pytest.raises(TypeError, match="student_weak"):
        mlkd_loss(sw.long(), tw)
    with pytest.raises(ValueError, match="target"):
        MLKD()(sw, tw, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        MLKD(loca_alpha=0.0)
