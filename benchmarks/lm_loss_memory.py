"""Peak memory and time of the chunked LM distillation loss vs the materialised one (fwd + bwd).

``naive``: ``kd_loss(h_S @ W_S.T, h_T @ W_T.T, y)`` with full ``(N, V)`` fp32 logits, then
``backward`` into ``h_S`` and ``W_S``. ``chunked``: :func:`logitkd.lm.chunked_kd_loss` on the same
tensors. Each measurement runs in a fresh subprocess: it allocates the inputs, reads its peak
resident memory (``ru_maxrss``) as the baseline, runs forward + backward ``--repeats`` times and
reports ``peak - baseline`` (the extra memory the loss needed, gradients of ``h_S``/``W_S``
included) and the fastest wall time. Issue target at V = 128256: chunked peak ≤ 25% of naive,
time ≤ 1.2× naive.

    python benchmarks/lm_loss_memory.py                      # N=4096, H=2048, V=32000 and 128256
    python benchmarks/lm_loss_memory.py --vocab 32000 --tokens 1024   # quick
    python benchmarks/lm_loss_memory.py --vocab 128256 --max-chunk-elements 33554432 0

The default chunk is ``chunk_size=1024`` capped at ``chunk * V <= 2**25`` (261 tokens at
V = 128256); ``--max-chunk-elements 0`` runs the uncapped chunk for comparison. Runs PYTHONPATH=src
(or an installed logitkd). On 2 CPU cores the V = 128256 rows take several minutes each.

Measured on a shared 2-core CPU box (torch 2.13, fp32, N=4096, H=2048; load average ~4 from
other jobs, so single-shot times are noisy; the interleaved medians are the fairer time ratio):

    vocab   loca  chunk  naive MB  chunked MB  mem ratio
    128256  no    261        9308        1628      17.5%
    128256  no    1024       9308        3126      33.6%   (cap disabled)
    128256  yes   261        9309        1634      17.6%
    128256  yes   1024       9309        3127      33.6%   (cap disabled)
    32000   no    1024       2352         855      36.4%
    32000   yes   1024       2353         867      36.9%
    --interleaved-time --vocab 32000 --repeats 3: chunked/naive 0.91x (no LoCa), 0.93x (LoCa)

Re-measured on the quiet machine (nothing else running), ``--vocab 128256``:

    vocab   loca  chunk  naive MB  chunked MB  mem ratio  naive s  chunked s  time ratio
    128256  no    261        9308        1631      17.5%    92.73      76.40       0.82x
    128256  yes   261        9309        1631      17.5%    94.94      76.25       0.80x
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from logitkd.lm.chunked import DEFAULT_MAX_CHUNK_ELEMENTS


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _inputs(n: int, h: int, v: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    # In-place scaling: a temporary here would raise the baseline peak and hide real memory.
    s_h = torch.randn(n, h, generator=g).requires_grad_(True)
    s_w = torch.randn(v, h, generator=g).mul_(h**-0.5).requires_grad_(True)
    t_h = torch.randn(n, h, generator=g)
    t_w = torch.randn(v, h, generator=g).mul_(2.0 / h**0.5)
    y = torch.randint(0, v, (n,), generator=g)
    y[: n // 8] = -100  # prompt tokens, as in instruction data
    return s_h, s_w, t_h, t_w, y


def _step(
    variant: str, inputs: tuple[torch.Tensor, ...], loca: bool, chunk: int, cap: int
) -> float:
    """One forward + backward; returns its wall time."""
    from logitkd.lm.chunked import chunked_kd_loss
    from logitkd.losses.kd import kd_loss

    s_h, s_w, t_h, t_w, y = inputs
    kw = {"temperature": 1.0, "loca_alpha": 0.9 if loca else None}
    s_h.grad = s_w.grad = None
    t0 = time.perf_counter()
    if variant == "naive":
        loss = kd_loss(s_h @ s_w.T, t_h @ t_w.T, y, **kw)
    else:
        loss = chunked_kd_loss(
            s_h, s_w, t_h, t_w, y, chunk_size=chunk, max_chunk_elements=cap or None, **kw
        )
    loss.backward()
    return time.perf_counter() - t0


def worker(args: argparse.Namespace) -> None:
    """One variant in this process: print a JSON line with peak extra MB and seconds."""
    torch.set_num_threads(args.threads)
    inputs = _inputs(args.tokens, args.hidden, args.worker_vocab)
    base = _rss_mb()
    if base - _current_rss_mb() > 64:
        raise RuntimeError("the baseline peak exceeds the resident inputs: a temporary leaked in")
    chunk, cap = args.chunk_size[0], args.max_chunk_elements[0]
    times = [
        _step(args.worker_variant, inputs, args.worker_loca, chunk, cap)
        for _ in range(args.repeats)
    ]
    grad_norm = float(inputs[0].grad.norm())
    print(json.dumps({"peak_mb": _rss_mb() - base, "seconds": min(times), "grad_norm": grad_norm}))


def interleaved_times(args: argparse.Namespace, locas: list[bool]) -> None:
    """Time only: naive and chunked alternate in one process, so load drift hits both alike."""
    torch.set_num_threads(args.threads)
    chunk, cap = args.chunk_size[0], args.max_chunk_elements[0]
    print(
        f"{'vocab':>7} {'loca':>5} {'naive s (median)':>16} {'chunked s (median)':>18} {'ratio':>6}"
    )
    for vocab in args.vocab:
        inputs = _inputs(args.tokens, args.hidden, vocab)
        for loca in locas:
            rounds = [
                (
                    _step("naive", inputs, loca, chunk, cap),
                    _step("chunked", inputs, loca, chunk, cap),
                )
                for _ in range(args.repeats)
            ]
            a = statistics.median(r[0] for r in rounds)
            b = statistics.median(r[1] for r in rounds)
            print(f"{vocab:>7} {'yes' if loca else 'no':>5} {a:>16.2f} {b:>18.2f} {b / a:>5.2f}x")


def measure(
    args: argparse.Namespace,
    variant: str,
    vocab: int,
    loca: bool,
    chunk_size: int = 1024,
    cap: int = 0,
) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--tokens", str(args.tokens),
        "--hidden", str(args.hidden),
        "--chunk-size", str(chunk_size),
        "--max-chunk-elements", str(cap),
        "--repeats", str(args.repeats),
        "--threads", str(args.threads),
        "--worker-variant", variant,
        "--worker-vocab", str(vocab),
    ] + (["--worker-loca"] if loca else [])  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{variant} V={vocab} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=4096, help="N = B*T")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    p.add_argument("--chunk-size", type=int, nargs="+", default=[1024])
    p.add_argument(
        "--max-chunk-elements",
        type=int,
        nargs="+",
        default=[DEFAULT_MAX_CHUNK_ELEMENTS],
        help="cap on chunk * vocab (0: no cap, the chunk is --chunk-size)",
    )
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--loca", choices=["both", "on", "off"], default="both")
    p.add_argument(
        "--interleaved-time",
        action="store_true",
        help="time only, naive and chunked alternating in one process (median of --repeats)",
    )
    p.add_argument("--worker-variant", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--worker-vocab", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-loca", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_variant:
        worker(args)
        return
    locas = {"both": [False, True], "on": [True], "off": [False]}[args.loca]
    if args.interleaved_time:
        interleaved_times(args, locas)
        return
    print(
        f"torch {torch.__version__}, {args.threads} threads, fp32, N={args.tokens} tokens "
        f"(1/8 ignored), H={args.hidden}, best of {args.repeats}"
    )
    print(
        "extra peak RSS over the inputs (MB), forward + backward wall time (s); chunk = tokens used"
    )
    print(
        f"{'vocab':>7} {'loca':>5} {'chunk':>6} {'naive MB':>9} {'chunked MB':>10} {'mem ratio':>9} "
        f"{'naive s':>8} {'chunked s':>9} {'time ratio':>10}"
    )
    for vocab in args.vocab:
        for loca in locas:
            a = measure(args, "naive", vocab, loca)
            for chunk, cap in itertools.product(args.chunk_size, args.max_chunk_elements):
                b = measure(args, "chunked", vocab, loca, chunk, cap)
                chunk = min(chunk, max(1, cap // vocab)) if cap else chunk  # the chunk used
                if abs(a["grad_norm"] - b["grad_norm"]) > 1e-4 * abs(a["grad_norm"]):
                    raise RuntimeError(f"gradients differ: {a['grad_norm']} vs {b['grad_norm']}")
                print(
                    f"{vocab:>7} {'yes' if loca else 'no':>5} {chunk:>6} {a['peak_mb']:>9.0f} "
                    f"{b['peak_mb']:>10.0f} {b['peak_mb'] / a['peak_mb']:>9.1%} "
                    f"{a['seconds']:>8.2f} {b['seconds']:>9.2f} {b['seconds'] / a['seconds']:>9.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
