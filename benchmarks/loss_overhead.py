"""Forward+backward time of kd_loss with LoCa and LoCa+standardize, against plain kd_loss.

Measured side by side in one process, interleaved round by round so drift hits every variant
alike; prints medians and the ratios to plain KD. Issue targets at (256, 1000) and
(4096, 32000): LoCa <= 1.05x plain KD, LoCa+standardize <= 1.50x.

    python benchmarks/loss_overhead.py [--repeats 15] [--shapes 64x100,256x1000,4096x32000]
    python benchmarks/loss_overhead.py --threads 1 --clock cpu   # on a busy machine
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from logitkd import kd_loss

VARIANTS = {
    "kd": {},
    "kd+loca": {"loca_alpha": 0.95},
    "kd+ls": {"standardize": True},
    "kd+loca+ls": {"loca_alpha": 0.95, "standardize": True},
}


def step(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, kwargs: dict) -> None:
    leaf = s.detach().requires_grad_(True)
    loss = kd_loss(leaf, t, y, temperature=4.0, **kwargs)
    loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--shapes", default="64x100,256x1000,4096x32000")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time (use with --threads 1 on a shared, busy machine)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        "fp32, T=4, alpha=0.95"
    )
    print(f"{'shape':>12} {'variant':>12} {'median ms':>10} {'ratio':>7} {'mis-instr':>9}")
    for spec in args.shapes.split(","):
        n, c = (int(v) for v in spec.split("x"))
        g = torch.Generator().manual_seed(0)
        s = torch.randn(n, c, generator=g)
        t = torch.randn(n, c, generator=g) * 3
        y = torch.randint(0, c, (n,), generator=g)
        mis = float((t.argmax(-1) != y).float().mean())
        repeats = args.repeats if n * c < 10**8 else max(5, args.repeats // 3)
        times: dict[str, list[float]] = {k: [] for k in VARIANTS}
        for kw in VARIANTS.values():  # warm-up
            step(s, t, y, kw)
        for _ in range(repeats):
            for name, kw in VARIANTS.items():
                start = clock()
                step(s, t, y, kw)
                times[name].append(clock() - start)
        base = statistics.median(times["kd"])
        for name in VARIANTS:
            med = statistics.median(times[name])
            print(f"{spec:>12} {name:>12} {med * 1e3:10.2f} {med / base:7.3f} {mis:9.3f}")


if __name__ == "__main__":
    main()
