"""Slow, independent references written straight from the papers' equations (float64, loops).

Nothing here imports logitkd: these are the yardsticks the fast code is measured against.
"""

from __future__ import annotations

import math

from torch import Tensor


def softmax_row(x: list[float]) -> list[float]:
    finite = [v for v in x if v != float("-inf")]
    m = max(finite)
    e = [math.exp(v - m) if v != float("-inf") else 0.0 for v in x]
    z = sum(e)
    return [v / z for v in e]


def loca_row(p: list[float], gt: int, alpha: float) -> list[float]:
    """LoCa eqs. 14-18 for one row; clip-and-renormalise when alpha >= 1 pushes the target < 0."""
    arg = max(range(len(p)), key=lambda i: (p[i], -i))
    if arg == gt:
        return list(p)
    sigma = 1.0 / (1.0 - p[gt] + max(p))
    s = alpha * sigma
    out = [s * v for v in p]
    rest = sum(s * p[i] for i in range(len(p)) if i != gt)
    out[gt] = 1.0 - rest
    if out[gt] < 0:
        out[gt] = 0.0
        out = [v / rest for v in out]
    return out


def zscore_row(x: list[float], tau: float, correction: int = 0, eps: float = 1e-7) -> list[float]:
    vals = [v for v in x if v != float("-inf")]
    k = len(vals)
    mean = sum(vals) / k
    var = sum((v - mean) ** 2 for v in vals) / max(k - correction, 1)
    std = math.sqrt(var)
    return [(v - mean) / (std + eps) / tau if v != float("-inf") else v for v in x]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def kd_reference(
    s: Tensor,
    t: Tensor,
    target: Tensor | None,
    temperature: float,
    loca_alpha: float | None = None,
    standardize: bool = False,
    drop_misinstructed: bool = False,
    ignore_index: int = -100,
    divergence: str = "forward_kl",
) -> float:
    """Hinton KD: T^2 * mean over counted rows of D(p_T, p_S)."""
    c = s.shape[-1]
    srows = s.detach().double().reshape(-1, c).tolist()
    trows = t.detach().double().reshape(-1, c).tolist()
    ys = target.reshape(-1).tolist() if target is not None else [None] * len(srows)
    total, count = 0.0, 0
    for sr, tr, y in zip(srows, trows, ys):
        if y == ignore_index:
            continue
        if drop_misinstructed and max(range(c), key=lambda i: (tr[i], -i)) != y:
            continue
        if standardize:
            zs, zt = zscore_row(sr, temperature), zscore_row(tr, temperature)
        else:
            zs, zt = [v / temperature for v in sr], [v / temperature for v in tr]
        q, p = softmax_row(zs), softmax_row(zt)
        if loca_alpha is not None:
            p = loca_row(p, y, loca_alpha)
        if divergence == "forward_kl":
            d = kl(p, q)
        elif divergence == "reverse_kl":
            d = kl(q, p)
        else:
            m = [0.5 * a + 0.5 * b for a, b in zip(p, q)]
            d = 0.5 * kl(p, m) + 0.5 * kl(q, m)
        total += temperature**2 * d
        count += 1
    return total / count if count else 0.0


def dkd_reference(
    s: Tensor,
    t: Tensor,
    target: Tensor,
    temperature: float,
    loca_alpha: float | None = None,
    standardize: bool = False,
) -> tuple[float, float]:
    """DKD (Zhao et al., CVPR 2022): T^2 * batchmean of TCKD and NCKD."""
    c = s.shape[-1]
    tck, nck = 0.0, 0.0
    rows = list(zip(s.detach().double().tolist(), t.detach().double().tolist(), target.tolist()))
    for sr, tr, y in rows:
        if standardize:
            zs, zt = zscore_row(sr, temperature), zscore_row(tr, temperature)
        else:
            zs, zt = [v / temperature for v in sr], [v / temperature for v in tr]
        q, p = softmax_row(zs), softmax_row(zt)
        if loca_alpha is not None:
            p = loca_row(p, y, loca_alpha)
        bt, bs = [p[y], 1 - p[y]], [q[y], 1 - q[y]]
        tck += temperature**2 * kl(bt, bs)
        pn = [p[i] for i in range(c) if i != y]
        qn = [q[i] for i in range(c) if i != y]
        pn = [v / sum(pn) for v in pn]
        qn = [v / sum(qn) for v in qn]
        nck += temperature**2 * kl(pn, qn)
    return tck / len(rows), nck / len(rows)
