"""``logitkd train | distill | eval | demo`` end to end, in-process, on the built-in digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from logitkd.cli import build_parser, main
from logitkd.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_help_explains_each_command(capsys):
    for cmd, words in (
        ("train", "teacher"),
        ("distill", "teacher.checkpoint"),
        ("eval", "top-1"),
        ("demo", "mis-instruction"),
    ):
        with pytest.raises(SystemExit) as info:
            main([cmd, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert words in text, (cmd, words)
        if cmd != "demo":
            assert ("key=value" in text and "--resume" in text) or cmd == "eval"


def test_train_distill_eval_resume(tmp_path, capsys):
    demo = str(CONFIGS / "demo.yaml")
    t_dir, s_dir = tmp_path / "teacher", tmp_path / "student"
    assert (
        main(
            [
                "train",
                "--config",
                demo,
                f"run_dir={t_dir}",
                "schedule.epochs=2",
                "logging.progress=false",
            ]
        )
        == 0
    )
    trained = _last_json(capsys.readouterr().out)
    assert trained["best_top1"] > 50 and (t_dir / "config.yaml").is_file()

    args = [
        "distill", "--config", demo, f"run_dir={s_dir}", "method.name=kd", "method.loca_alpha=0.95",
        "teacher.name=mlp", f"teacher.checkpoint={t_dir / 'best.pt'}", "schedule.epochs=1",
        "logging.progress=false", "--deterministic",
    ]  # fmt: skip
    assert main(args) == 0
    distilled = _last_json(capsys.readouterr().out)
    assert distilled["teacher_top1"] == pytest.approx(trained["best_top1"])
    saved = (s_dir / "config.yaml").read_text()
    assert "loca_alpha: 0.95" in saved and "deterministic: true" in saved

    assert main(["eval", "--config", demo, "--checkpoint", str(s_dir / "best.pt")]) == 0
    evaluated = _last_json(capsys.readouterr().out)
    assert evaluated["top1"] == pytest.approx(distilled["best_top1"])

    # method.name=ce under distill: the student-alone baseline of a distillation sweep.
    ce_dir = tmp_path / "alone"
    ce_args = [
        "distill", "--config", demo, f"run_dir={ce_dir}", "method.name=ce", "schedule.epochs=1",
        "teacher.name=mlp", f"teacher.checkpoint={t_dir / 'best.pt'}", "logging.progress=false",
    ]  # fmt: skip
    assert main(ce_args) == 0
    assert "teacher is unused" in capsys.readouterr().out
    assert (ce_dir / "summary.json").is_file()

    # --resume RUN_DIR reuses the saved config; a finished run just reports again.
    assert main(["distill", "--resume", str(s_dir)]) == 0
    assert _last_json(capsys.readouterr().out)["best_top1"] == pytest.approx(distilled["best_top1"])
    # ... but not with a config that changes the result.
    with pytest.raises(ValueError, match=r"method\.loca_alpha"):
        main([a.replace("loca_alpha=0.95", "loca_alpha=0.98") for a in args] + ["--resume"])


def test_cli_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        main(["train", "--config", str(CONFIGS / "demo.yaml"), "schedule.epoch=3"])
    with pytest.raises(ValueError, match=r"unknown method\.name 'kdx'"):
        main(["distill", "--config", str(CONFIGS / "demo.yaml"), "method.name=kdx", "teacher.name=mlp",
              f"teacher.checkpoint={tmp_path / 'x.pt'}", f"run_dir={tmp_path / 'r'}"])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="config file not found"):
        main(["train", "--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        main(["distill", "--config", str(CONFIGS / "demo.yaml"), "method.name=kd", "teacher.name=mlp",
              f"teacher.checkpoint={tmp_path / 'none.pt'}", f"run_dir={tmp_path / 'r2'}"])  # fmt: skip


def test_demo_quick_writes_its_table(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["demo", "--quick", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| KD + LoCa |" in out and "mis-instruction" in out
    results = json.loads((run / "results.json").read_text())
    assert {r["method"] for r in results["rows"]} == {"student alone (CE)", "KD", "KD + LoCa"}
    mis = [
        r["teacher_misinstruction"]
        for r in results["rows"]
        if r["teacher_misinstruction"] is not None
    ]
    assert mis and all(m >= 0.05 for m in mis)  # the teacher does mis-instruct: LoCa has work
    assert (run / "results.md").read_text().startswith("Data: scikit-learn digits")
    assert (run / "results.csv").read_text().splitlines()[0].startswith("method,")
    with pytest.raises(FileExistsError):
        main(["demo", "--quick", "--run-dir", str(run)])


def test_parser_lists_vision_commands():
    text = build_parser().format_help()
    for cmd in ("train", "distill", "eval", "demo"):
        assert cmd in text
