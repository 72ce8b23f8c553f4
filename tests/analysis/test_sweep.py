"""Sweeps with a fake trainer: expansion, statistics, skip/resume/retry, crash reports, fail-fast.

The fake runner writes ``summary.json`` deterministically from the seed and α, so every expected
number is computed here from that formula, independently of the sweep code.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from logitkd.analysis.stats import compare_to_baseline
from logitkd.analysis.sweep import (
    Cell,
    CellFailed,
    SweepError,
    expand_cells,
    format_value,
    parse_grid,
    run_sweep,
)
from logitkd.config import load_config, parse_override

PNG = b"\x89PNG\r\n\x1a\n"


def fake_metrics(seed: int, alpha: float | None) -> dict[str, float]:
    a = 0.0 if alpha is None else alpha
    best = 70.0 + 5.0 * a + 0.3 * seed + 0.07 * seed * seed
    return {"best_acc": best, "last_acc": best - 0.4 - 0.05 * seed}


@dataclass
class FakeTrainer:
    """A Python-callable runner; records (cell name, resume) of every call."""

    crash: set[str] = field(default_factory=set)  # cell names that always fail
    crash_once: set[str] = field(default_factory=set)  # fail after writing a checkpoint, once
    calls: list[tuple[str, bool]] = field(default_factory=list)

    def __call__(self, cell: Cell, resume: bool) -> None:
        self.calls.append((cell.name, resume))
        if cell.name in self.crash:
            raise CellFailed("simulated divergence")
        if cell.name in self.crash_once:
            self.crash_once.discard(cell.name)
            (cell.cell_dir / "checkpoint.pt").write_bytes(b"ckpt")
            raise RuntimeError("killed mid-run")
        alpha = dict(cell.overrides).get("distill.loca_alpha")
        summary = {"seed": cell.seed, **fake_metrics(cell.seed, alpha)}
        (cell.cell_dir / "summary.json").write_text(json.dumps(summary))


BASE = {"seed": 0, "distill": {"method": "kd", "loca_alpha": None, "temperature": 4.0}}
GRID = {
    "seeds": [0, 1, 2],
    "baseline": "kd",
    "metrics": ["best_acc", "last_acc"],
    "methods": {
        "kd": {"distill.method": "kd"},
        "loca": {"distill.method": "kd", "distill.loca_alpha": [0.9, 0.99]},
    },
}


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def sweep(spec_data: dict[str, Any], out: Path, base: Path, runner: Any, **kw: Any) -> Any:
    return run_sweep(parse_grid(spec_data), out, base, runner=runner, log=lambda _m: None, **kw)


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def test_expansion_names_and_hashes(base: Path, tmp_path: Path) -> None:
    cells = expand_cells(parse_grid(GRID), tmp_path / "out", base)
    assert len(cells) == 3 * 3
    groups = {c.group for c in cells}
    assert groups == {"kd", "loca_distill.loca_alpha=0.9", "loca_distill.loca_alpha=0.99"}
    cell = next(c for c in cells if c.group == "loca_distill.loca_alpha=0.99" and c.seed == 2)
    assert cell.cell_dir == tmp_path / "out" / "runs" / cell.group / "seed=2"
    assert cell.override_args() == ["distill.method=kd", "distill.loca_alpha=0.99", "seed=2"]
    # One hash per configuration without the seed; distinct across configurations.
    by_group = {}
    for c in cells:
        by_group.setdefault(c.group, set()).add(c.group_hash)
    assert all(len(h) == 1 for h in by_group.values())
    assert len({next(iter(h)) for h in by_group.values()}) == 3
    assert len({c.config_hash for c in cells}) == 9


def test_sweep_table_statistics_and_files(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    trainer = FakeTrainer()
    result = sweep(GRID, out, base, trainer)
    assert len(trainer.calls) == 9 and not result.failed
    rows = {r.group: r for r in result.rows}
    for group, alpha in [("kd", None), ("loca_distill.loca_alpha=0.9", 0.9)]:
        vals = [fake_metrics(s, alpha)["best_acc"] for s in (0, 1, 2)]
        mean = sum(vals) / 3
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
        s = rows[group].summaries["best_acc"]
        assert s.mean == pytest.approx(mean) and s.std == pytest.approx(std)
    comp = rows["loca_distill.loca_alpha=0.99"].comparisons["last_acc"]
    expected = compare_to_baseline(
        {s: fake_metrics(s, 0.99)["last_acc"] for s in (0, 1, 2)},
        {s: fake_metrics(s, None)["last_acc"] for s in (0, 1, 2)},
    )
    assert comp is not None and comp.seeds == (0, 1, 2)
    assert comp.mean_diff == pytest.approx(5.0 * 0.99)
    assert comp.w_pvalue == pytest.approx(expected.w_pvalue)
    assert rows["kd"].comparisons["best_acc"] is None  # the baseline itself

    md = (out / "results.md").read_text()
    assert "### best_acc" in md and "### last_acc" in md and "kd (baseline)" in md
    assert "| 3/3 |" in md
    with (out / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert {r["group"] for r in table} == set(rows)
    kd_row = next(r for r in table if r["group"] == "kd")
    assert float(kd_row["best_acc_mean"]) == pytest.approx(rows["kd"].summaries["best_acc"].mean)
    plots = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in plots] == [
        "best_acc_vs_distill.loca_alpha.png",
        "last_acc_vs_distill.loca_alpha.png",
    ]
    assert all(is_png(p) for p in plots)


def test_finished_cells_are_skipped(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sweep(GRID, out, base, FakeTrainer())
    again = FakeTrainer()
    result = sweep(GRID, out, base, again)
    assert again.calls == []
    assert {r.status for r in result.cells} == {"skipped"}
    assert len(result.rows) == 3 and all(r.n_ok == 3 for r in result.rows)


def test_unfinished_cell_is_resumed(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    name = "loca_distill.loca_alpha=0.9/seed=1"
    trainer = FakeTrainer(crash_once={name})
    result = sweep(GRID, out, base, trainer, retries=1)
    assert [c for c in trainer.calls if c[0] == name] == [(name, False), (name, True)]
    cell = next(r for r in result.cells if r.cell.name == name)
    assert cell.status == "done" and cell.attempts == 2
    record = json.loads((cell.cell.cell_dir / "sweep_cell.json").read_text())
    assert record["status"] == "done" and "killed mid-run" in record["errors"][0]


def test_resume_across_invocations(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    name = "kd/seed=0"
    first = FakeTrainer(crash_once={name})
    res = sweep(GRID, out, base, first, retries=0)  # no retry: left unfinished
    assert [r.status for r in res.cells if r.cell.name == name] == ["crashed"]
    second = FakeTrainer()
    sweep(GRID, out, base, second, retries=0)
    assert second.calls == [(name, True)]  # only the unfinished cell, resumed


def test_crashed_cell_is_retried_and_reported(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    name = "loca_distill.loca_alpha=0.99/seed=1"
    trainer = FakeTrainer(crash={name})
    result = sweep(GRID, out, base, trainer, retries=2)
    assert sum(c[0] == name for c in trainer.calls) == 3
    [failed] = result.failed
    assert failed.cell.name == name and failed.status == "crashed" and failed.attempts == 3
    assert "simulated divergence" in failed.error
    row = next(r for r in result.rows if r.group == "loca_distill.loca_alpha=0.99")
    assert row.n_ok == 2 and row.summaries["best_acc"].n == 2
    assert row.comparisons["best_acc"].seeds == (0, 2)  # type: ignore[union-attr]
    md = (out / "results.md").read_text()
    assert "2/3 (1 failed)" in md and "Failed cells" in md and name in md
    with (out / "cells.csv").open() as fh:
        cells = list(csv.DictReader(fh))
    crashed = [c for c in cells if c["status"] == "crashed"]
    assert len(crashed) == 1 and crashed[0]["seed"] == "1"
    with (out / "results.csv").open() as fh:
        row_csv = next(r for r in csv.DictReader(fh) if r["group"] == row.group)
    assert row_csv["failed_seeds"] == "1" and row_csv["runs_ok"] == "2"
    # The next invocation retries the crashed cell (and only it).
    fixed = FakeTrainer()
    result2 = sweep(GRID, out, base, fixed, retries=0)
    assert fixed.calls == [(name, False)] and not result2.failed


def test_typo_in_parameter_fails_before_any_run(base: Path, tmp_path: Path) -> None:
    bad = {**GRID, "grid": {"distill.temprature": [2, 4]}}
    trainer = FakeTrainer()
    with pytest.raises(SweepError, match=r"did you mean 'temperature'") as info:
        sweep(bad, tmp_path / "out", base, trainer)
    assert "nothing was run" in str(info.value)
    assert trainer.calls == [] and not (tmp_path / "out").exists()


@dataclass
class Distill:
    method: str = "kd"
    loca_alpha: float | None = None
    temperature: float = 4.0


@dataclass
class TinyConfig:
    seed: int = 0
    distill: Distill = field(default_factory=Distill)


def test_dataclass_validator_catches_types_and_names(base: Path, tmp_path: Path) -> None:
    def validate(overrides: list[str]) -> None:
        load_config(TinyConfig, base, overrides)

    trainer = FakeTrainer()
    bad_value = {**GRID, "grid": {"distill.temperature": ["hot"]}}
    with pytest.raises(SweepError, match="must be a number"):
        sweep(bad_value, tmp_path / "o1", base, trainer, validator=validate)
    bad_key = {**GRID, "methods": {"kd": {"distil.method": "kd"}}, "baseline": None}
    with pytest.raises(SweepError, match="did you mean 'distill'"):
        sweep(bad_key, tmp_path / "o2", base, trainer, validator=validate)
    assert trainer.calls == []
    ok = sweep(GRID, tmp_path / "o3", base, trainer, validator=validate)
    assert not ok.failed


def test_grid_file_errors() -> None:
    with pytest.raises(SweepError, match="did you mean 'seeds'"):
        parse_grid({"seed": [0, 1]})
    with pytest.raises(SweepError, match="seeds"):
        parse_grid({"seeds": []})
    with pytest.raises(SweepError, match="repeats"):
        parse_grid({"seeds": [0, 0]})
    with pytest.raises(SweepError, match="both in methods"):
        parse_grid({"seeds": [0], "methods": {"a": {"x.y": 1}}, "grid": {"x.y": [1, 2]}})
    with pytest.raises(SweepError, match="empty list"):
        parse_grid({"seeds": [0], "grid": {"x": []}})
    with pytest.raises(SweepError, match="cell_dir"):
        parse_grid({"seeds": [0], "command": ["python", "train.py", "{overrides}"]})
    with pytest.raises(SweepError, match="unknown field"):
        parse_grid({"seeds": [0], "command": ["{overrides}", "run_dir={celldir}", "{cell_dir}"]})


def test_baseline_must_name_one_configuration(base: Path, tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="2 configurations"):
        sweep({**GRID, "baseline": "loca"}, tmp_path / "o", base, FakeTrainer())
    with pytest.raises(SweepError, match="not a method"):
        sweep({**GRID, "baseline": "kdd"}, tmp_path / "o", base, FakeTrainer())
    res = sweep(
        {**GRID, "baseline": "loca_distill.loca_alpha=0.9"}, tmp_path / "o", base, FakeTrainer()
    )
    assert res.baseline == "loca_distill.loca_alpha=0.9"


def test_changed_config_is_never_mixed_with_old_runs(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sweep(GRID, out, base, FakeTrainer())
    base.write_text(yaml.safe_dump({**BASE, "distill": {**BASE["distill"], "temperature": 2.0}}))
    trainer = FakeTrainer()
    with pytest.raises(SweepError, match="another configuration"):
        sweep(GRID, out, base, trainer)
    assert trainer.calls == []


def test_summary_with_wrong_seed_or_missing_metric_is_reported(base: Path, tmp_path: Path) -> None:
    def runner(cell: Cell, resume: bool) -> None:
        summary: dict[str, Any] = {"seed": cell.seed, "best_acc": 71.0, "last_acc": 70.0}
        if cell.name == "kd/seed=1":
            summary["seed"] = 7
        if cell.name == "kd/seed=2":
            del summary["last_acc"]
        (cell.cell_dir / "summary.json").write_text(json.dumps(summary))

    result = sweep(GRID, tmp_path / "out", base, runner)
    bad = {r.cell.name: r for r in result.failed}
    assert set(bad) == {"kd/seed=1", "kd/seed=2"}
    assert all(r.status == "invalid" for r in bad.values())
    assert "seed 7" in bad["kd/seed=1"].error and "last_acc" in bad["kd/seed=2"].error
    kd = next(r for r in result.rows if r.group == "kd")
    assert kd.n_ok == 1 and math.isnan(kd.summaries["best_acc"].std)


def test_dry_run_plans_without_running(base: Path, tmp_path: Path) -> None:
    trainer = FakeTrainer()
    result = sweep(GRID, tmp_path / "out", base, trainer, dry_run=True)
    assert trainer.calls == [] and result.dry_run
    assert {r.status for r in result.cells} == {"planned-new"}
    assert not (tmp_path / "out").exists()


def test_collect_only_tabulates_finished_cells_and_runs_nothing(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # A sweep stopped at a deadline: seed 2 of every configuration never finished.
    partial = {**GRID, "seeds": [0, 1]}
    sweep(partial, out, base, FakeTrainer())
    trainer = FakeTrainer()
    result = sweep(GRID, out, base, trainer, collect_only=True)
    assert trainer.calls == []
    status = {r.cell.name: r.status for r in result.cells}
    assert {s for n, s in status.items() if n.endswith("seed=2")} == {"unfinished"}
    assert {s for n, s in status.items() if not n.endswith("seed=2")} == {"skipped"}
    kd = next(r for r in result.rows if r.group == "kd")
    expected = [fake_metrics(s, None)["best_acc"] for s in (0, 1)]
    assert kd.n_ok == 2 and kd.by_seed["best_acc"] == dict(zip((0, 1), expected, strict=True))
    text = (out / "results.md").read_text()
    assert "unfinished" in text and "seed=2" in text  # reported, never silently dropped
    assert len(result.failed) == 3


def test_plot_exclude_drops_methods_from_plots_only(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logitkd.analysis.plots as plots

    drawn: list[tuple[dict, dict]] = []
    real = plots.errorbar_plot

    def spy(series: dict, path: Path, **kw: Any) -> Path:
        drawn.append((series, kw.get("references") or {}))
        return real(series, path, **kw)

    monkeypatch.setattr(plots, "errorbar_plot", spy)
    grid = {**GRID, "methods": {**GRID["methods"], "broken": {"distill.method": "dkd"}}}
    result = sweep({**grid, "plot_exclude": ["broken"]}, tmp_path / "out", base, FakeTrainer())
    assert {r.group for r in result.rows} >= {"broken", "kd"}  # still in the table
    assert drawn and all("broken" not in refs and "kd" in refs for _, refs in drawn)
    with pytest.raises(SweepError, match=r"plot_exclude names 'brokn'.*broken"):
        parse_grid({**grid, "plot_exclude": ["brokn"]})


def test_identical_seeds_are_not_averaged_across_methods(base: Path, tmp_path: Path) -> None:
    grid = {
        "seeds": [0, 1],
        "metrics": ["best_acc"],
        "methods": {"a": {"distill.loca_alpha": 0.5}, "b": {"distill.loca_alpha": 0.6}},
    }
    result = sweep(grid, tmp_path / "out", base, FakeTrainer())
    assert len(result.rows) == 2
    for row in result.rows:
        alpha = dict(row.cells[0].cell.overrides)["distill.loca_alpha"]
        assert all(dict(r.cell.overrides)["distill.loca_alpha"] == alpha for r in row.cells)
        want = sum(fake_metrics(s, alpha)["best_acc"] for s in (0, 1)) / 2
        assert row.summaries["best_acc"].mean == pytest.approx(want)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.booleans(),
        st.none(),
        st.text(alphabet="abcXYZ019._-/ :", max_size=12),
        st.lists(st.integers(0, 300), max_size=4),
    )
)
def test_format_value_round_trips_through_parse_override(value: Any) -> None:
    key, parsed = parse_override(f"k={format_value(value)}")
    assert key == "k"
    assert parsed == value or (value == "" and parsed == "")


TRAINER_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, sys
    args = sys.argv[1:]
    kv = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    run = pathlib.Path(kv["run_dir"])
    alpha = float(kv.get("distill.loca_alpha", "0"))
    seed = int(kv["seed"])
    if alpha == 0.99 and seed == 1 and "--resume" not in args:
        (run / "last.pt").write_text("checkpoint")
        print("crashing on purpose", file=sys.stderr)
        sys.exit(3)
    best = 70.0 + 5.0 * alpha + seed
    (run / "summary.json").write_text(json.dumps({"best_acc": best, "last_acc": best - 1}))
    """
)


def test_subprocess_runner_and_cli(base: Path, tmp_path: Path) -> None:
    script = tmp_path / "fake_train.py"
    script.write_text(TRAINER_SCRIPT)
    grid = {
        **GRID,
        "seeds": [0, 1],
        "command": [
            "{python}",
            str(script),
            "--config",
            "{base}",
            "{overrides}",
            "run_dir={cell_dir}",
            "{resume}",
        ],
    }
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    from logitkd.cli import main

    rc = main(
        [
            "sweep",
            "--base",
            str(base),
            "--grid",
            str(grid_path),
            "--out",
            str(out),
            "--retries",
            "1",
        ]
    )
    assert rc == 0
    cell = out / "runs" / "loca_distill.loca_alpha=0.99" / "seed=1"
    log = (cell / "sweep.log").read_text()
    assert "crashing on purpose" in log  # attempt 1 failed with exit code 3...
    commands = [line[2:] for line in log.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2  # ...and the retry resumed from the checkpoint it left
    assert "--resume" not in commands[0] and commands[1].endswith("--resume")
    assert commands[1].split()[1:3] == [str(script), "--config"]
    record = json.loads((cell / "sweep_cell.json").read_text())
    assert record["status"] == "done" and "exit code 3" in record["errors"][0]
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["best_acc"] == pytest.approx(70.0 + 5.0 * 0.99 + 1)
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert commands[0].split()[0] == sys.executable  # the template's {python}


def test_subprocess_crash_without_retries_exits_nonzero(base: Path, tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('boom')\nsys.exit(5)\n")
    grid = {
        "seeds": [0],
        "metrics": ["best_acc"],
        "command": ["{python}", str(script), "{overrides}", "run_dir={cell_dir}"],
    }
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(grid))
    from logitkd.cli import main

    out = tmp_path / "out"
    argv = ["sweep", "--base", str(base), "--grid", str(grid_path), "--out", str(out)]
    assert main([*argv, "--retries", "0"]) == 1
    md = (out / "results.md").read_text()
    assert "exit code 5" in md and "boom" in md and "0/1 (1 failed)" in md


def test_cli_reports_bad_grid(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(yaml.safe_dump({**GRID, "grid": {"distill.tempreature": [1, 2]}}))
    from logitkd.cli import main

    rc = main(
        ["sweep", "--base", str(base), "--grid", str(grid_path), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "tempreature" in err and "did you mean 'temperature'" in err
    assert not (tmp_path / "o").exists()


def test_several_commands_and_dotted_metric_paths(base: Path, tmp_path: Path) -> None:
    """The LM shape of the contract: train, then evaluate; the metric sits deep in eval.json."""
    train = tmp_path / "train.py"
    train.write_text(
        "import pathlib, sys\n"
        "kv = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "pathlib.Path(kv['out'], 'checkpoint-1').mkdir()\n"
    )
    evaluate = tmp_path / "evaluate.py"
    evaluate.write_text(
        "import json, pathlib, sys\n"
        "kv = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)\n"
        "score = 20.0 + int(kv['seed'])\n"
        "summary = {'sets': {'test': {'greedy': {'mean': score}}}}\n"
        "pathlib.Path(kv['out'], 'eval.json').write_text(json.dumps(summary))\n"
    )
    grid = {
        "seeds": [0, 1],
        "metrics": ["sets.test.greedy.mean"],
        "summary_file": "eval.json",
        "checkpoint_glob": "checkpoint-*",
        "command": [
            ["{python}", str(train), "{overrides}", "out={cell_dir}"],
            ["{python}", str(evaluate), "{overrides}", "out={cell_dir}"],
        ],
    }
    result = run_sweep(parse_grid(grid), tmp_path / "out", base, log=lambda _m: None)
    assert not result.failed
    [row] = result.rows
    assert row.summaries["sets.test.greedy.mean"].mean == pytest.approx(20.5)


def test_family_defaults_fill_the_contract() -> None:
    spec = parse_grid({"seeds": [0]})
    vision = spec.with_defaults("vision")
    assert vision.metrics == ("best_top1", "last_top1")
    assert vision.summary_file == "summary.json" and vision.checkpoint_glob == "last.pt"
    assert vision.command is not None and "run_dir={cell_dir}" in vision.command[0]
    lm = spec.with_defaults("lm")
    assert lm.summary_file == "eval.json" and len(lm.command or ()) == 2
    assert lm.resume_args == ("train.resume_from_checkpoint=last",)
    own = parse_grid({"seeds": [0], "summary_file": "out.json", "resume_args": []})
    assert own.with_defaults("vision").summary_file == "out.json"
    assert own.with_defaults("vision").resume_args == ()


def test_vision_family_validator_uses_the_trainer_config(tmp_path: Path) -> None:
    pytest.importorskip("logitkd.vision.config")
    from logitkd.analysis.sweep import config_validator

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"name": "digits"}, "method": {"name": "ce"}}))
    spec = parse_grid({"seeds": [0], "methods": {"a": {"method.loca_alhpa": 0.9}}})
    with pytest.raises(SweepError, match="did you mean 'loca_alpha'"):
        run_sweep(spec, tmp_path / "out", base, family="vision", log=lambda _m: None)
    check, what = config_validator("vision", base, extra=["run_dir=/tmp/x"])
    assert "VisionConfig" in what
    check(["optim.lr=0.1", "seed=3"])  # valid: no exception
