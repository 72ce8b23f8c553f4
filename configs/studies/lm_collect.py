"""Table of the language study (``configs/studies/lm_study.sh``): Rouge-L per method over seeds.

Reads ``OUT/<method>/seed<k>/eval.json`` (written by ``logitkd lm evaluate``) and, for every test
set and decoding mode, reports per method the mean ± sample std of Rouge-L over the training seeds,
the 95% Student-t interval, and the paired t-test and Wilcoxon signed-rank test against the
baseline method on matched seeds (:mod:`logitkd.analysis.stats`). A run's Rouge-L is the mean over
its sampling seeds (MiniLLM's protocol: ``sets.<set>.sample.mean``) or the greedy score. The single
runs ``teacher-sft`` and ``student-pretrained`` and the teacher's token-level mis-instruction ratio
(``teacher_misinstruction``) are listed as references.

Usage, from the repo root::

    PYTHONPATH=src python configs/studies/lm_collect.py runs/studies/lm [--baseline kd] [--modes sample greedy]

Prints the Markdown and writes ``OUT/results.md`` and ``OUT/results.csv`` (one row per method,
set and mode). Seeds of one method whose saved configs differ in anything but the seed and the
output directory are refused (``ValueError``), so different settings are never averaged together.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from logitkd.analysis.stats import compare_to_baseline, summarize

METHOD_ORDER = ("sft", "seqkd", "kd", "kd_loca", "kd_ls")
LABELS = {
    "sft": "student alone (SFT)",
    "seqkd": "SeqKD",
    "kd": "KD",
    "kd_ls": "KD+LS",
}
REFERENCES = {"teacher-sft": "teacher (SFT)", "student-pretrained": "student, pre-trained only"}
CSV_FIELDS = (
    "method", "set", "mode", "n", "seeds", "mean", "std", "ci_low", "ci_high",
    "diff_vs_baseline", "t_pvalue", "w_pvalue", "note",
)  # fmt: skip
_SEED_DIR = re.compile(r"^seed(\d+)$")


def label(method: str) -> str:
    """Human name of a method directory (``kd_loca0.9`` → ``KD+LoCa (α=0.9)``)."""
    if method.startswith("kd_loca"):
        return f"KD+LoCa (α={method[len('kd_loca') :]})"
    return LABELS.get(method, REFERENCES.get(method, method))


def _sort_key(method: str) -> tuple[int, str]:
    for i, prefix in enumerate(METHOD_ORDER):
        if method == prefix or (prefix == "kd_loca" and method.startswith(prefix)):
            return i, method
    return len(METHOD_ORDER), method


def _config_signature(run_dir: Path) -> dict[str, Any] | None:
    """The run's saved training config without ``train.seed`` / ``train.output_dir``, plus the
    evaluation settings (decoding, test files, ``eval_limit``)."""
    files = [run_dir / f"logitkd_config-{a}.yaml" for a in ("sft", "seqkd", "distill")]
    found = [f for f in files if f.is_file()]
    if not found:
        return None
    cfg = yaml.safe_load(found[0].read_text()) or {}
    train = dict(cfg.get("train", {}))
    train.pop("seed", None)
    train.pop("output_dir", None)
    cfg["train"] = train
    # the evaluation must match too: a different eval_limit or decoding is a different metric
    ev_file = run_dir / "logitkd_config-evaluate.yaml"
    ev = (yaml.safe_load(ev_file.read_text()) or {}) if ev_file.is_file() else {}
    cfg["evaluation"] = {
        "generation": ev.get("generation"),
        "test_files": ev.get("data", {}).get("test_files"),
        "eval_limit": ev.get("data", {}).get("eval_limit"),
    }
    return {"action": found[0].name, **cfg}


def load_runs(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{method: {seed: eval.json}}`` for every ``out/<method>/seed<k>/eval.json``.

    Raises ``ValueError`` when two seeds of one method were trained with different configs.
    """
    if not out.is_dir():
        raise FileNotFoundError(f"study directory {out} does not exist")
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for method_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        signature: dict[str, Any] | None = None
        for seed_dir in sorted(method_dir.iterdir()):
            m = _SEED_DIR.match(seed_dir.name)
            if not (m and (seed_dir / "eval.json").is_file()):
                continue
            sig = _config_signature(seed_dir)
            if signature is None:
                signature = sig
            elif sig != signature:
                raise ValueError(
                    f"{seed_dir}: its config differs from the other seeds of {method_dir.name} "
                    "in more than the seed; refusing to average different settings"
                )
            data = json.loads((seed_dir / "eval.json").read_text())
            runs.setdefault(method_dir.name, {})[int(m.group(1))] = data
    return runs


def score(evaluation: dict[str, Any], set_name: str, mode: str) -> float | None:
    """One run's Rouge-L on ``set_name`` in ``mode`` (``sample``: mean over sampling seeds)."""
    entry = evaluation.get("sets", {}).get(set_name, {}).get(mode)
    return None if entry is None else float(entry["mean"])


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.3f}"


def build_rows(
    runs: dict[str, dict[int, dict[str, Any]]],
    references: dict[str, dict[str, Any]],
    baseline: str,
    modes: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per (method, set, mode): summary over seeds and the paired tests vs ``baseline``."""
    sets = sorted(
        {s for by_seed in runs.values() for e in by_seed.values() for s in e.get("sets", {})}
        | {s for e in references.values() for s in e.get("sets", {})}
    )
    rows: list[dict[str, Any]] = []
    for set_name in sets:
        for mode in modes:
            for ref, evaluation in references.items():
                value = score(evaluation, set_name, mode)
                if value is not None:
                    rows.append({
                        "method": ref, "set": set_name, "mode": mode, "n": 1, "seeds": "",
                        "mean": value, "std": None, "ci_low": None, "ci_high": None,
                        "diff_vs_baseline": None, "t_pvalue": math.nan, "w_pvalue": math.nan,
                        "note": "single run (reference)",
                    })  # fmt: skip
            base = {
                seed: v
                for seed, e in runs.get(baseline, {}).items()
                if (v := score(e, set_name, mode)) is not None
            }
            for method in sorted(runs, key=_sort_key):
                values = {
                    seed: v
                    for seed, e in runs[method].items()
                    if (v := score(e, set_name, mode)) is not None
                }
                if not values:
                    continue
                seeds = sorted(values)
                summary = summarize([values[s] for s in seeds])
                row: dict[str, Any] = {
                    "method": method, "set": set_name, "mode": mode, "n": summary.n,
                    "seeds": " ".join(map(str, seeds)), "mean": summary.mean,
                    "std": summary.std, "ci_low": summary.ci_low, "ci_high": summary.ci_high,
                    "diff_vs_baseline": None, "t_pvalue": math.nan, "w_pvalue": math.nan,
                    "note": summary.reason,
                }  # fmt: skip
                if method != baseline and base:
                    cmp = compare_to_baseline(values, base)
                    row.update(
                        diff_vs_baseline=cmp.mean_diff, t_pvalue=cmp.t_pvalue, w_pvalue=cmp.w_pvalue
                    )
                    why = "; ".join(r for r in (cmp.t_reason, cmp.w_reason) if r)
                    row["note"] = "; ".join(r for r in (row["note"], why) if r)
                rows.append(row)
    return rows


def misinstruction_rows(out: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(set, teacher_misinstruction)`` from the teacher's evaluations (test sets, train rows)."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in (out / "teacher-sft/eval.json", out / "teacher-sft/misinstruction-train/eval.json"):
        if path.is_file():
            for set_name, entry in json.loads(path.read_text()).get("sets", {}).items():
                if "teacher_misinstruction" in entry:
                    found.append((set_name, entry["teacher_misinstruction"]))
    return found


def to_markdown(
    rows: list[dict[str, Any]], mis: list[tuple[str, dict[str, Any]]], baseline: str
) -> str:
    """The Markdown report: one table per (set, mode), then the mis-instruction ratios."""
    lines: list[str] = []
    groups = dict.fromkeys((r["set"], r["mode"]) for r in rows)
    for set_name, mode in groups:
        lines += [
            f"### Rouge-L on {set_name} ({mode}{', mean over sampling seeds' if mode == 'sample' else ''})",
            "",
            f"| method | seeds | mean ± std | 95% CI | Δ vs {label(baseline)} | paired t p | Wilcoxon p |",
            "|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in (r for r in rows if (r["set"], r["mode"]) == (set_name, mode)):
            ci = "–" if r["ci_low"] is None or math.isnan(r["ci_low"]) else (
                f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            )  # fmt: skip
            spread = "" if r["std"] is None or math.isnan(r["std"]) else f" ± {r['std']:.2f}"
            diff = r["diff_vs_baseline"]
            lines.append(
                f"| {label(r['method'])} | {r['n']} | {r['mean']:.2f}{spread} | {ci} | "
                f"{'–' if diff is None else f'{diff:+.2f}'} | {_fmt_p(r['t_pvalue'])} | "
                f"{_fmt_p(r['w_pvalue'])} |"
            )
        lines.append("")
    if mis:
        lines += [
            "### Teacher's token-level mis-instruction ratio (reference responses)",
            "",
            "| set | tokens | ratio | first response token | later tokens |",
            "|---|---|---|---|---|",
        ]
        for set_name, m in mis:
            lines.append(
                f"| {set_name} | {m.get('n_tokens')} | {_fmt(m.get('ratio'), 4)} | "
                f"{_fmt(m.get('ratio_first'), 4)} | {_fmt(m.get('ratio_rest'), 4)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Collect, print the Markdown, write ``results.md`` and ``results.csv`` under the study."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the study directory (OUT of lm_study.sh)")
    p.add_argument("--baseline", default="kd", help="method directory to test against")
    p.add_argument("--modes", nargs="+", default=["sample", "greedy"], choices=["sample", "greedy"])
    args = p.parse_args(argv)

    runs = load_runs(args.out)
    if not runs:
        raise FileNotFoundError(f"no <method>/seed<k>/eval.json under {args.out}")
    if args.baseline not in runs:
        raise ValueError(f"--baseline {args.baseline!r} has no runs; found {sorted(runs)}")
    references = {
        name: json.loads((args.out / name / "eval.json").read_text())
        for name in REFERENCES
        if (args.out / name / "eval.json").is_file()
    }
    rows = build_rows(runs, references, args.baseline, args.modes)
    markdown = to_markdown(rows, misinstruction_rows(args.out), args.baseline)
    failed = args.out / "failed.txt"
    if failed.is_file() and failed.read_text().strip():
        # a crashed cell is missing from its row's seed count: say which, never drop it silently
        cells = "\n".join(f"- `{line}`" for line in failed.read_text().split("\n") if line)
        markdown += f"\n### Failed cells (name, step, directory)\n\n{cells}\n"
    print(markdown)
    (args.out / "results.md").write_text(markdown + "\n")
    with (args.out / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
