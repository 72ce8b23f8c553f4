"""CTKD: gradient reversal, curriculum, temperature range, values against a paper reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from logitkd.losses.ctkd import (
    CTKD,
    GlobalTemperature,
    InstanceTemperature,
    curriculum_lambda,
    grad_reverse,
)
from logitkd.losses.kd import kd_loss

# --------------------------------------------------------------------------------------------
# Independent references (float64, loops over rows), straight from the papers' equations.
# Written with torch ops so that they are differentiable, but row by row and without logitkd.
# --------------------------------------------------------------------------------------------


def _ref_scale(x: torch.Tensor, temp: torch.Tensor, standardize: bool) -> torch.Tensor:
    """One row: ``x / T``, or LS Algorithm 1 ``(x - mean) / (std + 1e-7) / T`` (population std)."""
    if not standardize:
        return x / temp
    mean = x.sum() / x.numel()
    std = torch.sqrt(((x - mean) ** 2).sum() / x.numel())
    return (x - mean) / (std + 1e-7) / temp


def _ref_loca(p: torch.Tensor, gt: int, alpha: float) -> torch.Tensor:
    """LoCa eqs. 14-18 on one probability row (0 < alpha < 1)."""
    if int(torch.argmax(p)) == gt:
        return p
    s = alpha / (1.0 - p[gt] + p.max())
    out = s * p
    rest = out.sum() - out[gt]
    return torch.cat([out[:gt], (1.0 - rest).reshape(1), out[gt + 1 :]])


def _ref_row_probs(s_row, t_row, temp, standardize, gt, loca_alpha):
    q = torch.softmax(_ref_scale(s_row, temp, standardize), dim=0)
    p = torch.softmax(_ref_scale(t_row, temp, standardize), dim=0)
    if loca_alpha is not None:
        p = _ref_loca(p, gt, loca_alpha)
    return p, q


def ref_kd(s, t, y, temps, standardize=False, loca_alpha=None):
    """Hinton KD: ``mean_i T_i^2 KL(p_i || q_i)``; ``temps`` is a list of per-row tensors."""
    total = s.new_zeros(())
    for i in range(s.shape[0]):
        p, q = _ref_row_probs(s[i], t[i].detach(), temps[i], standardize, int(y[i]), loca_alpha)
        kl = sum(p[c] * (torch.log(p[c]) - torch.log(q[c])) for c in range(s.shape[1]) if p[c] > 0)
        total = total + temps[i] ** 2 * kl
    return total / s.shape[0]


def ref_dkd(s, t, y, temps, alpha, beta, standardize=False, loca_alpha=None):
    """DKD eq. 7: ``alpha TCKD + beta NCKD`` averaged over rows, each times ``T_i^2``."""
    total = s.new_zeros(())
    for i in range(s.shape[0]):
        gt = int(y[i])
        p, q = _ref_row_probs(s[i], t[i].detach(), temps[i], standardize, gt, loca_alpha)
        b_t = torch.stack([p[gt], 1 - p[gt]])
        b_s = torch.stack([q[gt], 1 - q[gt]])
        tckd = (b_t * (torch.log(b_t) - torch.log(b_s))).sum()
        others = [c for c in range(s.shape[1]) if c != gt]
        pt = p[others] / p[others].sum()
        ps = q[others] / q[others].sum()
        nckd = (pt * (torch.log(pt) - torch.log(ps))).sum()
        total = total + temps[i] ** 2 * (alpha * tckd + beta * nckd)
    return total / s.shape[0]


def _data(seed: int, n: int = 5, c: int = 7, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64)
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _dkd_temperature_grad_is_finite() -> bool:
    """Regression probe: ``dkd_terms`` once computed ``-inf - -inf`` in the target column before
    masking it, so a tensor temperature received a NaN gradient."""
    from logitkd.losses.dkd import dkd_terms

    s = torch.randn(3, 4, dtype=torch.float64)
    t = torch.randn(3, 4, dtype=torch.float64)
    temp = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    tckd, nckd = dkd_terms(s, t, torch.tensor([0, 1, 2]), temperature=temp)
    (tckd + nckd).backward()
    return bool(torch.isfinite(temp.grad))


def test_dkd_temperature_gradient_is_finite():
    assert _dkd_temperature_grad_is_finite()


def _base_params(bases=("kd", "dkd")):
    return list(bases)


# --------------------------------------------------------------------------------------------
# Gradient reversal
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0, 3.5])
def test_grl_identity_forward_and_exact_reversed_gradient(lam: float) -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    out = grad_reverse(x, lam)
    assert torch.equal(out, x)
    (out * w).sum().backward()
    assert torch.equal(x.grad, w * (-lam))


def test_grl_bad_lambda() -> None:
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(TypeError, match="lambda_"):
        grad_reverse(x, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lambda_"):
        grad_reverse(x, float("nan"))


# --------------------------------------------------------------------------------------------
# Curriculum
# --------------------------------------------------------------------------------------------


def test_curriculum_start_middle_end() -> None:
    assert curriculum_lambda(0, 0.0, 1.0, 10) == pytest.approx(0.0, abs=1e-15)
    assert curriculum_lambda(5, 0.0, 1.0, 10) == pytest.approx(0.5, abs=1e-15)
    assert curriculum_lambda(10, 0.0, 1.0, 10) == pytest.approx(1.0, abs=1e-15)
    assert curriculum_lambda(240, 0.0, 1.0, 10) == pytest.approx(1.0, abs=1e-15)
    assert curriculum_lambda(-3, 0.2, 0.8, 10) == pytest.approx(0.2, abs=1e-15)
    assert curriculum_lambda(None, 0.2, 0.8, 10) == 0.8
    assert curriculum_lambda(3, 0.2, 0.8, 0) == 0.8
    # Paper value at n = 2.5 of N = 10: 0.5 (1 + cos(1.25 pi)).
    assert curriculum_lambda(2.5, 0.0, 1.0, 10) == pytest.approx(
        0.5 * (1 + math.cos(1.25 * math.pi))
    )


def test_curriculum_matches_official_script_net_factor() -> None:
    """The released code multiplies the gradient by CosineDecay(0, -1, 10).get_value(i) (no minus
    sign in its GRL); our GRL factor -lambda_i must equal it at every epoch."""
    for i in range(0, 15):
        n = min(i, 10)
        official = -1 + (0 - (-1)) * (math.cos(n * math.pi / 10) + 1.0) * 0.5
        assert -curriculum_lambda(i, 0.0, 1.0, 10) == pytest.approx(official, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    lo=st.floats(-2, 2),
    span=st.floats(0, 3),
    n_epochs=st.integers(1, 50),
)
def test_curriculum_monotonic_within_bounds(lo: float, span: float, n_epochs: int) -> None:
    hi = lo + span
    grid = [k * n_epochs / 37 for k in range(-3, 45)]
    vals = [curriculum_lambda(e, lo, hi, n_epochs) for e in grid]
    for a, b in itertools.pairwise(vals):
        assert b >= a - 1e-12
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in vals)


def test_curriculum_bad_epochs() -> None:
    with pytest.raises(ValueError, match="curriculum_epochs"):
        curriculum_lambda(1, 0, 1, -1)


# --------------------------------------------------------------------------------------------
# Temperature modules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4])
def test_global_temperature_range_and_value(theta: float) -> None:
    mod = GlobalTemperature(t_start=1.0, t_range=20.0, theta_init=theta)
    temp = mod(torch.zeros(2, 3), torch.zeros(2, 3), 1.0).detach()
    assert temp.dim() == 0
    assert 1.0 <= float(temp) <= 21.0
    assert float(temp) == pytest.approx(
        1.0 + 20.0 * _sig(theta) if abs(theta) < 700 else float(temp)
    )


def test_global_default_init_matches_official() -> None:
    # Official Global_T: theta = ones(1); T = t_start + t_end * sigmoid(theta) = 1 + 20 sigmoid(1).
    mod = CTKD()
    t = mod.temperature_at(torch.zeros(2, 3), torch.zeros(2, 3), epoch=0).detach()
    assert float(t) == pytest.approx(1.0 + 20.0 * _sig(1.0), rel=1e-6)


def test_instance_temperature_range_and_mlp_value() -> None:
    torch.manual_seed(0)
    mod = InstanceTemperature(num_classes=6, hidden=8, t_start=2.0, t_range=5.0).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.mul_(50.0)  # push the sigmoid to saturation on some rows
    s, t, _ = _data(1, n=9, c=6)
    temp = mod(t, s, 0.5).detach()
    assert temp.shape == (9,)
    assert bool(((temp >= 2.0) & (temp <= 7.0)).all())
    # Value from the module's weights, written out: T = 2 + 5 sigmoid(W2 relu(W1 [t; s] + b1) + b2).
    w1, b1 = mod.mlp[0].weight, mod.mlp[0].bias
    w2, b2 = mod.mlp[2].weight, mod.mlp[2].bias
    for i in range(9):
        x = torch.cat([t[i], s[i]])
        h = torch.clamp(w1 @ x + b1, min=0)
        expect = (2.0 + 5.0 * torch.sigmoid(w2 @ h + b2)).detach()
        assert float(temp[i]) == pytest.approx(float(expect), rel=1e-12)


def test_instance_temperature_bad_input() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        InstanceTemperature(num_classes=0)
    mod = InstanceTemperature(num_classes=4)
    with pytest.raises(ValueError, match="num_classes=4"):
        mod(torch.zeros(2, 5), torch.zeros(2, 5), 1.0)
    with pytest.raises(ValueError, match="t_start"):
        GlobalTemperature(t_start=0.0)
    with pytest.raises(ValueError, match="t_range"):
        GlobalTemperature(t_range=-1.0)


# --------------------------------------------------------------------------------------------
# CTKD values against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("loca_alpha", [None, 0.9])
@pytest.mark.parametrize("theta", [-2.0, 0.3])
def test_ctkd_kd_value_matches_reference(standardize, loca_alpha, theta) -> None:
    s, t, y = _data(11, n=6, c=5)
    mod = CTKD(theta_init=theta, loca_alpha=loca_alpha, standardize=standardize).double()
    out = mod(s, t, y, epoch=4)
    temp = 1.0 + 20.0 * torch.sigmoid(mod.temperature_module.theta.detach())
    expect = ref_kd(s, t, y, [temp] * 6, standardize, loca_alpha)
    assert float(out["kd"].detach()) == pytest.approx(0.9 * float(expect), rel=1e-9)
    assert float(out["ce"]) == pytest.approx(0.1 * float(F.cross_entropy(s, y)), rel=1e-12)
    assert mod.last_temperature == pytest.approx(float(temp), rel=1e-12)
    assert mod.last_lambda == pytest.approx(curriculum_lambda(4, 0.0, 1.0, 10))


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("loca_alpha", [None, 0.95])
def test_ctkd_dkd_value_matches_reference(standardize, loca_alpha) -> None:
    s, t, y = _data(12, n=5, c=6)
    mod = CTKD(
        base="dkd",
        theta_init=-0.7,
        dkd_alpha=1.5,
        dkd_beta=4.0,
        dkd_warmup_epochs=20,
        loca_alpha=loca_alpha,
        standardize=standardize,
    ).double()
    out = mod(s, t, y, epoch=5)
    temp = 1.0 + 20.0 * torch.sigmoid(mod.temperature_module.theta.detach())
    expect = (5 / 20) * ref_dkd(s, t, y, [temp] * 5, 1.5, 4.0, standardize, loca_alpha)
    assert float(out["kd"].detach()) == pytest.approx(
        float(expect), rel=1e-9
    )  # kd weight 1 for dkd
    assert float(out["ce"]) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-12)


@pytest.mark.parametrize("base", ["kd", "dkd"])
def test_ctkd_instance_value_matches_reference(base: str) -> None:
    torch.manual_seed(3)
    s, t, y = _data(13, n=7, c=5)
    mod = CTKD(base=base, temperature="instance", num_classes=5, instance_hidden=16)
    mod = mod.double()
    temps = mod.temperature_at(s, t).detach()
    assert temps.shape == (7,)
    out = mod(s, t, y)  # epoch=None: full weights
    rows = [temps[i] for i in range(7)]
    if base == "kd":
        expect = 0.9 * ref_kd(s, t, y, rows)
    else:
        expect = ref_dkd(s, t, y, rows, 1.0, 8.0)
    assert float(out["kd"].detach()) == pytest.approx(float(expect), rel=1e-9)
    assert mod.last_temperature == pytest.approx(float(temps.mean()), rel=1e-12)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", _base_params())
@pytest.mark.parametrize("standardize", [False, True])
def test_temperature_gradient_is_reversed_and_scaled(base: str, standardize: bool) -> None:
    s, t, y = _data(21, n=4, c=5)
    s.requires_grad_(True)
    mod = CTKD(base=base, theta_init=0.4, standardize=standardize, loca_alpha=0.9).double()
    epoch = 3
    lam = mod.lambda_at(epoch)
    assert 0 < lam < 1
    out = mod(s, t, y, epoch=epoch)
    out["kd"].backward()
    grad_theta = mod.temperature_module.theta.grad.clone()
    grad_s = s.grad.clone()

    # Reference: the same loss as a plain function of theta (no GRL), differentiated by autograd.
    theta = mod.temperature_module.theta.detach().clone().requires_grad_(True)
    s2 = s.detach().clone().requires_grad_(True)
    temp = 1.0 + 20.0 * torch.sigmoid(theta)
    if base == "kd":
        ref = 0.9 * ref_kd(s2, t, y, [temp] * 4, standardize, 0.9)
    else:
        ref = (epoch / 20) * ref_dkd(s2, t, y, [temp] * 4, 1.0, 8.0, standardize, 0.9)
    ref.backward()
    assert float(theta.grad) != 0.0
    assert float(grad_theta) == pytest.approx(-lam * float(theta.grad), rel=1e-8)
    torch.testing.assert_close(grad_s, s2.grad, rtol=1e-8, atol=1e-12)


def test_instance_mlp_gradient_reversed() -> None:
    torch.manual_seed(5)
    s, t, y = _data(22, n=6, c=4)
    mod = CTKD(temperature="instance", num_classes=4, instance_hidden=8).double()
    lam = mod.lambda_at(2)
    mod(s, t, y, epoch=2)["kd"].backward()
    got = [p.grad.clone() for p in mod.extra_parameters()]

    # Reference: MLP temperatures without GRL, through the reference KD.
    mod.zero_grad()
    w1, b1 = mod.temperature_module.mlp[0].weight, mod.temperature_module.mlp[0].bias
    w2, b2 = mod.temperature_module.mlp[2].weight, mod.temperature_module.mlp[2].bias
    x = torch.cat([t, s], dim=-1)
    temps = 1.0 + 20.0 * torch.sigmoid(torch.relu(x @ w1.T + b1) @ w2.T + b2).squeeze(-1)
    ref = 0.9 * ref_kd(s, t, y, [temps[i] for i in range(6)])
    ref.backward()
    for g, p in zip(got, [w1, b1, w2, b2]):
        assert p.grad is not None
        torch.testing.assert_close(g, -lam * p.grad, rtol=1e-8, atol=1e-14)


def test_student_gets_no_gradient_through_instance_mlp() -> None:
    """The MLP input is detached: the student's gradient is the fixed-T KD gradient."""
    torch.manual_seed(6)
    s, t, y = _data(23, n=5, c=4)
    s.requires_grad_(True)
    mod = CTKD(temperature="instance", num_classes=4, instance_hidden=8).double()
    mod(s, t, y)["kd"].backward()
    temps = mod.temperature_at(s, t).detach()
    s2 = s.detach().clone().requires_grad_(True)
    (0.9 * kd_loss(s2, t, y, temperature=temps)).backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["global", "instance"])
@pytest.mark.parametrize("base", _base_params())
def test_gradcheck_through_temperature(mode: str, base: str) -> None:
    """With lambda = -1 the GRL's backward is the identity, so the graph through the temperature
    parameters must pass a finite-difference gradcheck (and through the student logits in global
    mode; in instance mode the MLP's input is detached by design, so there the student is checked
    at the fixed temperatures)."""
    torch.manual_seed(7)
    s, t, y = _data(24, n=3, c=4)
    mod = CTKD(
        base=base,
        temperature=mode,
        num_classes=4,
        instance_hidden=5,
        lambda_min=-1.0,
        lambda_max=-1.0,
        loca_alpha=0.9,
        standardize=True,
    ).double()
    names = [n for n, _ in mod.named_parameters()]

    def fn(s_in, *ps):
        return torch.func.functional_call(mod, dict(zip(names, ps)), (s_in, t, y))["kd"]

    params = [p.detach().clone().requires_grad_(True) for p in mod.parameters()]
    s_in = s.clone().requires_grad_(mode == "global")
    assert torch.autograd.gradcheck(fn, (s_in, *params), eps=1e-6, atol=1e-6)
    if mode == "instance":
        temps = mod.temperature_at(s, t).detach()

        def fixed(s_in):
            if base == "kd":
                return kd_loss(s_in, t, y, temperature=temps, loca_alpha=0.9, standardize=True)
            from logitkd.losses.dkd import dkd_loss

            return dkd_loss(s_in, t, y, temperature=temps, loca_alpha=0.9, standardize=True)

        assert torch.autograd.gradcheck(
            fixed, (s.clone().requires_grad_(True),), eps=1e-6, atol=1e-6
        )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    c=st.integers(2, 8),
    base=st.sampled_from(["kd", "dkd"]),
    mode=st.sampled_from(["global", "instance"]),
    theta=st.floats(-3, 3),
)
def test_lambda_zero_gives_zero_temperature_gradient(seed, n, c, base, mode, theta) -> None:
    torch.manual_seed(seed)
    s, t, y = _data(seed, n=n, c=c)
    s.requires_grad_(True)
    mod = CTKD(
        base=base,
        temperature=mode,
        num_classes=c,
        instance_hidden=4,
        theta_init=theta,
        lambda_min=0.0,
        lambda_max=1.0,
    ).double()
    out = mod(s, t, y, epoch=0)  # lambda_0 = lambda_min = 0
    assert mod.last_lambda == 0.0
    out["kd"].backward()
    for p in mod.extra_parameters():
        assert p.grad is not None
        assert bool((p.grad == 0).all())
    assert s.grad is not None and bool(torch.isfinite(s.grad).all())


def test_reversed_step_increases_the_distillation_loss() -> None:
    """The adversarial direction: one SGD step on the temperature raises the KD loss."""
    s, t, y = _data(31, n=8, c=6, scale=4.0)
    mod = CTKD(theta_init=0.0).double()
    opt = torch.optim.SGD(mod.parameters(), lr=1e-3)
    before = mod(s, t, y)["kd"]
    opt.zero_grad()
    before.backward()
    opt.step()
    after = mod(s, t, y)["kd"]
    assert float(after.detach()) > float(before.detach())


def test_parameters_registered_for_the_optimizer() -> None:
    mod = CTKD()
    params = list(mod.parameters())
    assert len(params) == 1 and params[0] is mod.temperature_module.theta
    assert mod.extra_parameters() == params
    assert "temperature_module.theta" in mod.state_dict()
    inst = CTKD(temperature="instance", num_classes=10, instance_hidden=32)
    assert sum(p.numel() for p in inst.parameters()) == 20 * 32 + 32 + 32 + 1


def test_default_weights_follow_the_base() -> None:
    assert (CTKD().ce_weight, CTKD().kd_weight) == (0.1, 0.9)
    d = CTKD(base="dkd")
    assert (d.ce_weight, d.kd_weight) == (1.0, 1.0)
    assert CTKD(ce_weight=0.5, kd_weight=2.0).kd_weight == 2.0


def test_float32_and_token_shaped_logits() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 11, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 11, generator=g)
    y = torch.randint(0, 11, (2, 3), generator=g)
    y[0, 0] = -100
    for mode in ("global", "instance"):
        mod = CTKD(temperature=mode, num_classes=11)
        out = mod(s, t, y, epoch=1)
        (out["kd"] + out["ce"]).backward()
        assert torch.isfinite(s.grad).all()
        assert all(p.grad is not None for p in mod.parameters())
        s.grad = None


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="base"):
        CTKD(base="mlkd")
    with pytest.raises(ValueError, match="temperature"):
        CTKD(temperature="per-class")
    with pytest.raises(ValueError, match="num_classes"):
        CTKD(temperature="instance")
    with pytest.raises(ValueError, match="alpha"):
        CTKD(loca_alpha=-0.5)
    with pytest.raises(ValueError, match="curriculum_epochs"):
        CTKD(curriculum_epochs=-1)
    with pytest.raises(ValueError, match="dkd_warmup_epochs"):
        CTKD(dkd_warmup_epochs=-1)


def test_bad_forward_input() -> None:
    s, t, y = _data(41)
    with pytest.raises(ValueError, match="target"):
        CTKD(loca_alpha=0.9).double()(s, t, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        CTKD(base="dkd").double()(s, t, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same shape"):
        CTKD().double()(s, t[:3], y)
