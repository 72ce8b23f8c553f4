"""The language-model methods behind ``logitkd lm …``: SFT, SeqKD, token-level KD, evaluation.

* **SFT**: the student is fine-tuned on the reference responses (CE only, no teacher).
* **SeqKD** (Kim & Rush 2016; the LoCa paper's "KD" baseline for LMs): the teacher answers
  every training prompt (greedy by default), and the student is fine-tuned on those answers.
* **Token-level KD** (``distill``): ``(1 - kd_ratio) * CE + kd_ratio * KD`` per response token,
  with forward KL (reverse KL, JSD as options), LoCa (``loca_alpha``; the label is the reference
  next token) and logit standardization, via :class:`logitkd.lm.trainer.DistillationTrainer`.
* **generate / evaluate**: responses on test files, greedy and/or sampled with several seeds,
  Rouge-L (MiniLLM's scoring) as mean ± std over seeds, and the teacher's token-level
  mis-instruction ratio on the reference responses.

Every function takes an :class:`logitkd.lm.config.LMConfig` and returns a JSON-able summary.
:func:`make_tiny_assets` writes a tiny tokenizer, teacher, student and instruction files so that
the whole pipeline runs on a laptop CPU in seconds (tests, docs).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from logitkd.lm.config import LMConfig
from logitkd.lm.data import (
    InstructionCollator,
    InstructionRecord,
    read_instruction_jsonl,
    tokenize_records,
)
from logitkd.lm.generate import generate_responses
from logitkd.lm.models import (
    aligned_vocab_size,
    build_tiny_causal_lm,
    check_tokenizers_match,
    find_missing_files,
    load_causal_lm,
    load_tokenizer,
    train_tokenizer,
)
from logitkd.lm.rouge import evaluate_rouge, summarize_over_seeds, token_misinstruction_on_records

__all__ = [
    "LoadedModels",
    "load_models",
    "make_tiny_assets",
    "run_distill",
    "run_evaluate",
    "run_generate",
    "run_seqkd",
    "run_sft",
    "training_arguments",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ models


@dataclass
class LoadedModels:
    """Student, optional teacher, the shared tokenizer and the logit width they share."""

    student: PreTrainedModel
    teacher: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int | None


def _device(cfg: LMConfig) -> torch.device:
    if not cfg.train.use_cpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_models(cfg: LMConfig, need_teacher: bool, load_student: bool = True) -> LoadedModels:
    """Load the student (and teacher) from local directories and check they can be distilled.

    The tokenizer comes from ``model.tokenizer`` (default: the student's directory). When the
    teacher's directory has tokenizer files they must match it (:func:`check_tokenizers_match`);
    the output layers must cover the tokenizer (:func:`aligned_vocab_size`), else
    ``ValueError``. A directory missing files raises ``FileNotFoundError`` naming them.
    """
    if not cfg.model.student:
        raise ValueError("model.student must name a local model directory")
    if need_teacher and not cfg.model.teacher:
        raise ValueError(
            "this method needs a teacher: set model.teacher to a local model directory"
        )
    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.student)
    teacher = None
    if cfg.model.teacher and need_teacher:
        teacher_dir = Path(cfg.model.teacher)
        if not find_missing_files(teacher_dir, weights=False, tokenizer=True):
            check_tokenizers_match(load_tokenizer(teacher_dir), tokenizer)
        else:
            logger.warning("teacher directory %s has no tokenizer files: not checked", teacher_dir)
        teacher = load_causal_lm(teacher_dir, dtype=cfg.model.teacher_dtype or cfg.model.dtype)
        teacher.eval().requires_grad_(False)
    student = load_causal_lm(cfg.model.student, dtype=cfg.model.dtype) if load_student else None
    vocab = None
    if teacher is not None:
        vocab = aligned_vocab_size(teacher, student if student is not None else teacher, tokenizer)
    return LoadedModels(student, teacher, tokenizer, vocab)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- data


def _tokenized(cfg: LMConfig, tokenizer: PreTrainedTokenizerBase, path: str, limit: int | None):
    records = read_instruction_jsonl(path, cfg.data.format, limit=limit)
    if not records:
        raise ValueError(f"{path}: no records")
    examples, stats = tokenize_records(
        tokenizer,
        records,
        cfg.data.max_prompt_length,
        cfg.data.max_length,
        cfg.data.prompt_truncation,
    )
    logger.info(
        "%s: %d examples, %d prompts and %d responses truncated",
        path,
        stats.n_examples,
        stats.n_prompt_truncated,
        stats.n_response_truncated,
    )
    return examples, stats


def training_arguments(cfg: LMConfig, has_eval: bool) -> Any:
    """``transformers.TrainingArguments`` from the ``train`` section (``extra`` verbatim)."""
    from transformers import TrainingArguments

    t = cfg.train
    kwargs: dict[str, Any] = {
        "output_dir": t.output_dir,
        "num_train_epochs": t.num_train_epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "lr_scheduler_type": t.lr_scheduler_type,
        "max_grad_norm": t.max_grad_norm,
        "optim": t.optim,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": t.save_strategy,
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": t.eval_strategy if has_eval else "no",
        "eval_steps": t.eval_steps,
        "bf16": t.bf16,
        "fp16": t.fp16,
        "seed": t.seed,
        "use_cpu": t.use_cpu,
        "dataloader_num_workers": t.dataloader_num_workers,
        "report_to": [r for r in t.report_to if r != "none"] or "none",
        "remove_unused_columns": False,  # our examples are plain dicts of token lists
        "prediction_loss_only": True,
    }
    kwargs.update(_warmup_kwargs(t.warmup_steps))
    if t.gradient_checkpointing:
        # transformers 5 renamed the field (the old name still works, with a warning).
        fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        name = (
            "activation_checkpointing"
            if "activation_checkpointing" in fields
            else "gradient_checkpointing"
        )
        kwargs[name] = True
    kwargs.update(t.extra)
    return TrainingArguments(**kwargs)


def _warmup_kwargs(warmup: float) -> dict[str, Any]:
    # transformers 5 takes a fraction in ``warmup_steps``; 4.x has a separate ``warmup_ratio``.
    import transformers

    if 0 < warmup < 1 and int(transformers.__version__.split(".")[0]) < 5:
        return {"warmup_ratio": warmup}
    return {"warmup_steps": warmup if warmup < 1 else int(warmup)}


def _resume_path(cfg: LMConfig) -> str | None:
    resume = cfg.train.resume_from_checkpoint
    if resume in (None, "", "none"):
        return None
    if resume == "last":
        from transformers.trainer_utils import get_last_checkpoint

        out = Path(cfg.train.output_dir)
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            raise FileNotFoundError(
                f"train.resume_from_checkpoint=last but {out} holds no checkpoint-* directory"
            )
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"train.resume_from_checkpoint: {resume} is not a directory")
    return resume


def _train(cfg: LMConfig, models: LoadedModels, train_file: str, kd_ratio: float) -> dict[str, Any]:
    from logitkd.lm.trainer import DistillationTrainer

    tokenizer = models.tokenizer
    train_examples, stats = _tokenized(cfg, tokenizer, train_file, cfg.data.limit)
    eval_examples = None
    if cfg.data.valid_file and cfg.train.eval_strategy != "no":
        eval_examples, _ = _tokenized(cfg, tokenizer, cfg.data.valid_file, cfg.data.eval_limit)
    args = training_arguments(cfg, eval_examples is not None)
    d = cfg.distill
    trainer = DistillationTrainer(
        model=models.student,
        args=args,
        teacher_model=models.teacher if kd_ratio > 0 else None,
        kd_ratio=kd_ratio,
        temperature=d.temperature,
        loca_alpha=d.loca_alpha,
        standardize=d.standardize,
        divergence=d.divergence,
        jsd_beta=d.jsd_beta,
        chunk_size=d.chunk_size,
        chunked=d.chunked,
        vocab_size=models.vocab_size if kd_ratio > 0 else None,
        train_dataset=train_examples,
        eval_dataset=eval_examples,
        data_collator=InstructionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=_resume_path(cfg))
    trainer.save_model(cfg.train.output_dir)
    trainer.save_state()
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "output_dir": cfg.train.output_dir,
        "global_step": trainer.state.global_step,
        "train_loss": float(result.training_loss),
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "n_train_examples": stats.n_examples,
        "n_prompt_truncated": stats.n_prompt_truncated,
        "n_response_truncated": stats.n_response_truncated,
        "world_size": trainer.args.world_size,
    }


def _require_train_file(cfg: LMConfig) -> str:
    if not cfg.data.train_file:
        raise ValueError("data.train_file must name an instruction JSONL file")
    return cfg.data.train_file


def run_sft(cfg: LMConfig) -> dict[str, Any]:
    """Fine-tune ``model.student`` on the reference responses (CE only)."""
    train_file = _require_train_file(cfg)
    models = load_models(cfg, need_teacher=False)
    return {"method": "sft", **_train(cfg, models, train_file, kd_ratio=0.0)}


def run_distill(cfg: LMConfig) -> dict[str, Any]:
    """Token-level KD of ``model.teacher`` into ``model.student`` (``distill`` section)."""
    train_file = _require_train_file(cfg)
    if cfg.distill.kd_ratio == 0:
        raise ValueError("distill.kd_ratio is 0: that is SFT; use `logitkd lm sft`")
    models = load_models(cfg, need_teacher=True)
    return {"method": "distill", **_train(cfg, models, train_file, cfg.distill.kd_ratio)}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _free(model: torch.nn.Module | None) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_seqkd(cfg: LMConfig) -> dict[str, Any]:
    """SeqKD: the teacher answers the training prompts, then the student is fine-tuned on them.

    Teacher answers go to ``seqkd.generated_file`` (MiniLLM JSONL: ``instruction``, ``input``,
    ``output``, ``prompt``); empty answers are dropped and counted.
    """
    train_file = _require_train_file(cfg)
    out = Path(cfg.seqkd.generated_file or Path(cfg.train.output_dir) / "seqkd_train.jsonl")
    n_empty = 0
    if not (cfg.seqkd.reuse and out.is_file()):
        models = load_models(cfg, need_teacher=True, load_student=False)
        teacher = models.teacher
        assert teacher is not None
        teacher.to(_device(cfg))
        records = read_instruction_jsonl(train_file, cfg.data.format, limit=cfg.data.limit)
        s = cfg.seqkd
        answers = generate_responses(
            teacher,
            models.tokenizer,
            records,
            max_new_tokens=s.max_new_tokens,
            do_sample=s.do_sample,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed,
            batch_size=s.batch_size,
            max_prompt_length=cfg.data.max_prompt_length,
            prompt_truncation=cfg.data.prompt_truncation,
        )
        rows = []
        for rec, answer in zip(records, answers):
            if not answer.strip():
                n_empty += 1
                continue
            rows.append(
                {
                    "instruction": rec.instruction,
                    "input": rec.input,
                    "output": answer,
                    "prompt": rec.prompt,
                }
            )
        if not rows:
            raise ValueError("the teacher produced only empty responses; nothing to train on")
        _write_jsonl(out, rows)
        _free(teacher)
        del models
    seq_cfg = _replace_train_file(cfg, str(out))
    models = load_models(seq_cfg, need_teacher=False)
    summary = _train(seq_cfg, models, str(out), kd_ratio=0.0)
    return {"method": "seqkd", "generated_file": str(out), "n_empty_dropped": n_empty, **summary}


def _replace_train_file(cfg: LMConfig, path: str) -> LMConfig:
    data = dataclasses.replace(cfg.data, train_file=path, format="minillm")
    return dataclasses.replace(cfg, data=data)


# --------------------------------------------------------------------------------- evaluation


def _test_name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def _runs(cfg: LMConfig) -> list[tuple[str, int | None]]:
    runs: list[tuple[str, int | None]] = []
    for mode in cfg.generation.modes:
        if mode == "greedy":
            runs.append(("greedy", None))
        else:
            runs.extend(("sample", seed) for seed in cfg.generation.seeds)
    return runs


def _generate_all(
    cfg: LMConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, dict[str, Any]]:
    """Generate on every test file for every (mode, seed); write prediction files if asked."""
    g = cfg.generation
    if not cfg.data.test_files:
        raise ValueError("data.test_files must list at least one instruction JSONL file")
    out_dir = Path(cfg.train.output_dir)
    results: dict[str, dict[str, Any]] = {}
    for path in cfg.data.test_files:
        records = read_instruction_jsonl(path, cfg.data.format, limit=cfg.data.eval_limit)
        runs = []
        for mode, seed in _runs(cfg):
            preds = generate_responses(
                model,
                tokenizer,
                records,
                max_new_tokens=g.max_new_tokens,
                do_sample=mode == "sample",
                temperature=g.temperature,
                top_p=g.top_p,
                top_k=g.top_k,
                seed=seed,
                batch_size=g.batch_size,
                max_prompt_length=cfg.data.max_prompt_length,
                prompt_truncation=cfg.data.prompt_truncation,
            )
            file = None
            if cfg.evaluate.save_predictions:
                stem = _test_name(path).replace("/", "_")
                tag = "greedy" if seed is None else f"sample-seed{seed}"
                file = out_dir / "predictions" / f"{stem}-{tag}.jsonl"
                _write_jsonl(
                    file,
                    [
                        {
                            "instruction": r.instruction,
                            "input": r.input,
                            "prediction": p,
                            "references": r.references,
                        }
                        for r, p in zip(records, preds)
                    ],
                )
            runs.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "predictions": preds,
                    "file": str(file) if file else None,
                }
            )
        results[path] = {"records": records, "runs": runs}
    return results


def run_generate(cfg: LMConfig) -> dict[str, Any]:
    """Generate responses of ``model.student`` on ``data.test_files`` (prediction JSONL files)."""
    models = load_models(cfg, need_teacher=False)
    model = models.student.to(_device(cfg))
    results = _generate_all(cfg, model, models.tokenizer)
    return {
        "model": cfg.model.student,
        "files": {_test_name(p): [r["file"] for r in res["runs"]] for p, res in results.items()},
    }


def _misinstruction(
    cfg: LMConfig, models: LoadedModels, records: list[InstructionRecord]
) -> dict[str, float | int]:
    teacher = models.teacher
    assert teacher is not None
    stats, _ = token_misinstruction_on_records(
        teacher,
        models.tokenizer,
        records,
        max_prompt_length=cfg.data.max_prompt_length,
        max_length=cfg.data.max_length,
        prompt_truncation=cfg.data.prompt_truncation,
        batch_size=cfg.generation.batch_size,
        vocab_size=models.vocab_size,
    )
    return {
        "ratio": stats.ratio,
        "ratio_first": stats.ratio_first,
        "ratio_rest": stats.ratio_rest,
        "n_tokens": stats.n_tokens,
    }


def run_evaluate(cfg: LMConfig) -> dict[str, Any]:
    """Rouge-L of ``model.student`` on each test file, mean ± std over seeds (module docstring).

    With ``model.teacher`` set (and ``evaluate.misinstruction``) the teacher's token-level
    mis-instruction ratio on each file's reference responses is added. The summary is written
    to ``evaluate.output_file`` (default ``<train.output_dir>/eval.json``) and returned.
    """
    with_teacher = bool(cfg.model.teacher) and cfg.evaluate.misinstruction
    models = load_models(cfg, need_teacher=with_teacher)
    device = _device(cfg)
    model = models.student.to(device)
    if models.teacher is not None:
        models.teacher.to(device)
    generated = _generate_all(cfg, model, models.tokenizer)
    summary: dict[str, Any] = {"model": cfg.model.student, "teacher": cfg.model.teacher, "sets": {}}
    for path, res in generated.items():
        records = res["records"]
        refs = [r.references for r in records]
        entry: dict[str, Any] = {"file": path, "n": len(records)}
        for mode in dict.fromkeys(r["mode"] for r in res["runs"]):
            runs = [r for r in res["runs"] if r["mode"] == mode]
            scores = [evaluate_rouge(r["predictions"], refs) for r in runs]
            mean, std = summarize_over_seeds(scores)
            entry[mode] = {
                "rouge_l": scores,
                "seeds": [r["seed"] for r in runs],
                "mean": mean,
                "std": None if std != std else std,  # NaN (one run) is not valid JSON
            }
        if models.teacher is not None:
            entry["teacher_misinstruction"] = _misinstruction(cfg, models, records)
        summary["sets"][_test_name(path)] = entry
    out = Path(cfg.evaluate.output_file or Path(cfg.train.output_dir) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    summary["output_file"] = str(out)
    return summary


# ------------------------------------------------------------------------------- tiny assets

_THINGS = {
    "banana": "yellow", "grass": "green", "sky": "blue", "snow": "white", "coal": "black",
    "tomato": "red", "orange": "orange", "plum": "purple", "lemon": "yellow", "leaf": "green",
    "cherry": "red", "cloud": "white", "crow": "black", "sea": "blue", "violet": "purple",
}  # fmt: skip
_OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "early": "late",
    "happy": "sad", "open": "closed", "rich": "poor", "young": "old", "loud": "quiet",
}  # fmt: skip


def _tiny_records(seed: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for thing, colour in _THINGS.items():
        rows.append(
            {
                "instruction": f"What colour is the {thing}?",
                "input": "",
                "output": f"The {thing} is {colour}.",
            }
        )
    for word, opposite in _OPPOSITES.items():
        rows.append(
            {
                "instruction": "Give the opposite of the word.",
                "input": word,
                "output": f"The opposite of {word} is {opposite}.",
            }
        )
        rows.append(
            {
                "instruction": f"Repeat the word {word} twice.",
                "input": "",
                "output": f"{word} {word}",
            }
        )
    for n in range(2, 14):
        rows.append(
            {"instruction": f"Add one to {n}.", "input": "", "output": f"{n} plus one is {n + 1}."}
        )
    random.Random(seed).shuffle(rows)
    return rows


def make_tiny_assets(
    out_dir: str | Path,
    *,
    teacher_hidden: int = 64,
    student_hidden: int = 32,
    layers: int = 2,
    vocab_size: int = 600,
    n_test: int = 8,
    seed: int = 0,
) -> dict[str, str]:
    """Write a tiny, self-contained distillation setup under ``out_dir`` (CPU, seconds).

    ``teacher/`` and ``student/``: random Llama models (``teacher_hidden`` / ``student_hidden``,
    ``layers`` layers) sharing one byte-level BPE tokenizer trained in-process and saved with
    each; ``data/train.jsonl`` and ``data/test.jsonl``: small templated instruction sets in the
    MiniLLM format (colours, opposites, repetition, counting). Nothing is downloaded.
    Returns the paths by name.
    """
    from logitkd.lm.data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

    out = Path(out_dir)
    rows = _tiny_records(seed)
    test, train = rows[:n_test], rows[n_test:]
    texts = [PROMPT_NO_INPUT, PROMPT_WITH_INPUT] + [
        f"{r['instruction']} {r['input']} {r['output']}" for r in rows
    ]
    tokenizer = train_tokenizer(texts * 4, vocab_size, min_frequency=1)
    paths = {"data_train": out / "data" / "train.jsonl", "data_test": out / "data" / "test.jsonl"}
    _write_jsonl(paths["data_train"], train)
    _write_jsonl(paths["data_test"], test)
    for name, hidden, model_seed in (
        ("teacher", teacher_hidden, seed),
        ("student", student_hidden, seed + 1),
    ):
        model = build_tiny_causal_lm(
            "llama",
            len(tokenizer),
            hidden=hidden,
            layers=layers,
            heads=2,
            max_positions=256,
            seed=model_seed,
        )
        paths[name] = out / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return {k: str(v) for k, v in paths.items()}
