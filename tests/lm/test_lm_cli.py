"""``logitkd lm …`` end to end on tiny models: distil, evaluate, SFT, SeqKD, generate, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from logitkd.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "lm" / "tiny-cpu.yaml")


def _paths(assets: dict[str, str], out: Path) -> list[str]:
    return [
        f"model.student={assets['student']}",
        f"model.teacher={assets['teacher']}",
        f"data.train_file={assets['data_train']}",
        f"data.test_files=[{assets['data_test']}]",
        f"train.output_dir={out}",
    ]


def _summary(stdout: str) -> dict:
    """The command's JSON summary: the last top-level ``{ … }`` block (the Trainer prints too)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def _logged_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_distill_then_evaluate_end_to_end(lm_assets, tmp_path, capsys):
    out = tmp_path / "kd"
    rc = main(
        ["lm", "distill", "--config", TINY, *_paths(lm_assets, out), "distill.loca_alpha=0.9"]
    )
    assert rc == 0, capsys.readouterr().err
    summary = _summary(capsys.readouterr().out)
    assert summary["global_step"] == 30
    losses = _logged_losses(out)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]  # the loss falls
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "logitkd_config-distill.yaml").is_file()

    rc = main(["lm", "evaluate", "--config", TINY, *_paths(lm_assets, out), f"model.student={out}"])
    assert rc == 0, capsys.readouterr().err
    result = _summary(capsys.readouterr().out)
    (entry,) = result["sets"].values()
    assert 0.0 <= entry["greedy"]["mean"] <= 100.0
    assert entry["greedy"]["std"] is None  # one greedy run: no spread
    assert entry["sample"]["seeds"] == [10, 20] and len(entry["sample"]["rouge_l"]) == 2
    assert entry["sample"]["mean"] == pytest.approx(sum(entry["sample"]["rouge_l"]) / 2)
    assert entry["sample"]["std"] is not None and entry["sample"]["std"] >= 0
    mis = entry["teacher_misinstruction"]
    assert 0.0 <= mis["ratio"] <= 1.0 and mis["n_tokens"] > 0
    assert json.loads((out / "eval.json").read_text())["sets"] == result["sets"]
    assert len(list((out / "predictions").glob("*.jsonl"))) == 3


def test_sft_and_seqkd_run(lm_assets, tmp_path, capsys):
    few = ["train.max_steps=3", "train.logging_steps=1", "data.limit=8"]
    out = tmp_path / "sft"
    assert main(["lm", "sft", "--config", TINY, *_paths(lm_assets, out), *few]) == 0
    assert _summary(capsys.readouterr().out)["method"] == "sft"
    assert (out / "model.safetensors").is_file()

    out = tmp_path / "seqkd"
    rc = main(
        ["lm", "seqkd", "--config", TINY, *_paths(lm_assets, out), *few, "seqkd.max_new_tokens=8"]
    )
    assert rc == 0, capsys.readouterr().err
    summary = _summary(capsys.readouterr().out)
    generated = [
        json.loads(line) for line in Path(summary["generated_file"]).read_text().splitlines()
    ]
    assert len(generated) + summary["n_empty_dropped"] == 8
    assert all(row["output"].strip() for row in generated)
    assert summary["global_step"] == 3


def test_generate_writes_predictions(lm_assets, tmp_path, capsys):
    out = tmp_path / "gen"
    rc = main(
        ["lm", "generate", "--config", TINY, *_paths(lm_assets, out),
         "generation.modes=[greedy]", "generation.max_new_tokens=4"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    (file,) = (out / "predictions").glob("*.jsonl")
    rows = [json.loads(line) for line in file.read_text().splitlines()]
    assert len(rows) == 8 and all({"prediction", "references"} <= set(r) for r in rows)


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unknown_config_key_suggests_the_right_one(lm_assets, tmp_path, capsys):
    err = _error(capsys, ["lm", "distill", "--config", TINY, "distill.loca_alhpa=0.9"])
    assert "loca_alpha" in err


def test_model_directory_missing_files(lm_assets, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(lm_assets["student"], broken)
    (broken / "model.safetensors").unlink()
    err = _error(
        capsys,
        [
            "lm",
            "sft",
            "--config",
            TINY,
            *_paths(lm_assets, tmp_path / "o"),
            f"model.student={broken}",
        ],
    )
    assert "missing" in err and "weights" in err


def test_tokenizers_that_differ(lm_assets, tmp_path, capsys):
    from logitkd.lm.models import train_tokenizer

    other = tmp_path / "teacher_other_tok"
    shutil.copytree(lm_assets["teacher"], other)
    tok = train_tokenizer(["a completely different corpus of words"] * 20, 300, min_frequency=1)
    tok.save_pretrained(other)
    err = _error(
        capsys,
        [
            "lm",
            "distill",
            "--config",
            TINY,
            *_paths(lm_assets, tmp_path / "o"),
            f"model.teacher={other}",
        ],
    )
    assert "tokenizers differ" in err


def test_teacher_vocabulary_cannot_be_aligned(lm_assets, tmp_path, capsys):
    from logitkd.lm.models import build_tiny_causal_lm, load_tokenizer

    tok = load_tokenizer(lm_assets["student"])
    small = tmp_path / "small_teacher"
    build_tiny_causal_lm("llama", len(tok) - 50, hidden=32).save_pretrained(small)
    tok.save_pretrained(small)
    err = _error(
        capsys,
        [
            "lm",
            "distill",
            "--config",
            TINY,
            *_paths(lm_assets, tmp_path / "o"),
            f"model.teacher={small}",
        ],
    )
    assert "cover" in err


def test_distill_without_teacher_and_bad_values(lm_assets, tmp_path, capsys):
    err = _error(
        capsys,
        [
            "lm",
            "distill",
            "--config",
            TINY,
            *_paths(lm_assets, tmp_path / "o"),
            "model.teacher=null",
        ],
    )
    assert "teacher" in err
    err = _error(capsys, ["lm", "distill", "--config", TINY, "distill.kd_ratio=1.5"])
    assert "kd_ratio" in err


def test_paper_recipes_load():
    from logitkd.config import load_config
    from logitkd.lm.config import LMConfig

    recipes = sorted((REPO / "configs" / "lm" / "dolly").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"base", "sft", "seqkd", "kd", "kd_loca", "kd_ls"}
    for path in recipes:
        cfg = load_config(LMConfig, path)
        t = cfg.train
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 60
        assert t.learning_rate == 1e-5 and t.num_train_epochs == 10
    assert load_config(LMConfig, REPO / "configs/lm/dolly/kd_loca.yaml").distill.loca_alpha == 0.9
    assert load_config(LMConfig, REPO / "configs/lm/dolly/kd_ls.yaml").distill.standardize
