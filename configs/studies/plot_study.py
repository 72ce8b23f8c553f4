"""Plots for docs/results.md from a sweep's ``results.csv`` (``logitkd sweep`` output).

The sweep's own ``plots/`` put every configuration on one axis; a diverged cell (accuracy at
chance) then squeezes the others into a flat line. This draws, for one metric,

* ``alpha``: mean ± std of the LoCa cells against ``method.loca_alpha``, with every other
  configuration not in ``--exclude`` as a horizontal band (``errorbar_plot``);
* ``bars``: one bar per configuration (mean, with the 95 % CI as the error bar).

Usage, from the repo root::

    python configs/studies/plot_study.py runs/studies/fmnist/sweep/results.csv best_top1 \
        alpha docs/results/fmnist_best_top1_vs_alpha.png --exclude dkd dkd_loca
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from logitkd.analysis.plots import errorbar_plot, new_figure, save_figure

ALPHA_KEY = "method.loca_alpha"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a sweep ``results.csv`` (one per configuration)."""
    if not path.is_file():
        raise FileNotFoundError(f"results.csv not found: {path}")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def alpha_plot(rows: list[dict[str, str]], metric: str, out: Path, title: str) -> Path:
    """LoCa curve (cells whose swept keys hold ``method.loca_alpha``) + the others as bands."""
    curve: list[tuple[float, float, float]] = []
    refs: dict[str, tuple[float, float]] = {}
    for r in rows:
        swept = json.loads(r["swept"] or "{}")
        mean, std = float(r[f"{metric}_mean"]), float(r[f"{metric}_std"] or "nan")
        if ALPHA_KEY in swept:
            curve.append((float(swept[ALPHA_KEY]), mean, std))
        else:
            refs[r["group"]] = (mean, std)
    if not curve:
        raise ValueError(f"no configuration sweeps {ALPHA_KEY} in the results")
    curve.sort()
    xs, ms, es = zip(*curve, strict=True)
    return errorbar_plot(
        {"KD+LoCa": (list(xs), list(ms), list(es))},
        out,
        xlabel="LoCa alpha",
        ylabel=f"{metric} (mean ± std over seeds)",
        title=title,
        references=refs,
    )


def bar_plot(rows: list[dict[str, str]], metric: str, out: Path, title: str) -> Path:
    """One bar per configuration: mean with its 95 % confidence interval."""
    fig, axes = new_figure(panel_size=(max(4.5, 0.55 * len(rows) + 1.5), 3.6))
    ax = axes[0, 0]
    names = [r["group"].replace("loca_method.loca_alpha=", "loca ") for r in rows]
    means = [float(r[f"{metric}_mean"]) for r in rows]
    lows = [float(r[f"{metric}_ci_low"] or "nan") for r in rows]
    highs = [float(r[f"{metric}_ci_high"] or "nan") for r in rows]
    err = [
        [0.0 if math.isnan(lo) else m - lo for m, lo in zip(means, lows, strict=True)],
        [0.0 if math.isnan(hi) else hi - m for m, hi in zip(means, highs, strict=True)],
    ]
    ax.bar(range(len(rows)), means, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
    finite = [lo for lo in lows if not math.isnan(lo)] or means
    ax.set_ylim(min(finite) - 1.0, max(highs + means) + 0.5)
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and draw one plot."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, help="a sweep's results.csv")
    p.add_argument("metric", help="best_top1 or last_top1")
    p.add_argument("kind", choices=("alpha", "bars"))
    p.add_argument("out", type=Path, help="output .png")
    p.add_argument("--exclude", nargs="*", default=[], help="configuration groups to leave out")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    rows = [r for r in read_rows(args.results) if r["group"] not in set(args.exclude)]
    if not rows:
        raise ValueError("every configuration was excluded")
    if f"{args.metric}_mean" not in rows[0]:
        raise ValueError(f"metric {args.metric!r} is not in {args.results}")
    draw = alpha_plot if args.kind == "alpha" else bar_plot
    print(draw(rows, args.metric, args.out, args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
