"""Paired comparisons between two configurations of a sweep (``cells.csv``), over matched seeds.

The sweep's table tests every configuration against one baseline (KD); the "+LoCa" questions
also need LS+LoCa vs LS and DKD+LoCa vs DKD. Usage, from the repo root::

    python configs/studies/paired.py runs/studies/fmnist/sweep/cells.csv best_top1 \
        ls_loca:ls dkd_b1_loca:dkd_b1

Prints one Markdown row per ``A:B`` pair: mean difference A - B, paired t and Wilcoxon p
(:func:`logitkd.analysis.stats.compare_to_baseline`).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from logitkd.analysis.stats import compare_to_baseline


def per_seed(cells: Path, metric: str) -> dict[str, dict[int, float]]:
    """``{group: {seed: metric}}`` over the finished cells (status ``done``, or ``skipped``: done
    by an earlier invocation of the sweep)."""
    out: dict[str, dict[int, float]] = {}
    with cells.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["status"] in ("done", "skipped") and row[metric]:
                out.setdefault(row["group"], {})[int(row["seed"])] = float(row[metric])
    return out


def main(argv: list[str]) -> int:
    """Print the comparison table."""
    if len(argv) < 3:
        raise SystemExit(__doc__)
    cells, metric, pairs = Path(argv[0]), argv[1], argv[2:]
    data = per_seed(cells, metric)
    print(f"| {metric}: A vs B | seeds | mean diff A - B | paired t p | Wilcoxon p |")
    print("|---|---|---|---|---|")
    for pair in pairs:
        a, _, b = pair.partition(":")
        if a not in data or b not in data:
            raise ValueError(f"unknown group in {pair!r}; known: {', '.join(sorted(data))}")
        c = compare_to_baseline(data[a], data[b])
        print(
            f"| {a} vs {b} | {len(c.seeds)} | {c.mean_diff:+.2f} | {c.t_pvalue:.3g} | {c.w_pvalue:.3g} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
