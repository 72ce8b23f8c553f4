"""Helpers shared by the LM trainer/CLI tests, and the worker the 2-process DDP test launches.

Run as a script (``torchrun --nproc_per_node 2 _lm_helpers.py ASSETS_DIR OUT_DIR``) each rank
trains a tiny student with :class:`DistillationTrainer` for a few steps and writes
``OUT_DIR/rank<r>.json`` with its world size, losses and a checksum of the trained weights.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAIN_ROWS = [
    ("What colour is the sky?", "", "The sky is blue."),
    ("Give the opposite of the word.", "hot", "The opposite of hot is cold."),
    ("Add one to 4.", "", "4 plus one is 5."),
    ("Repeat the word big twice.", "", "big big"),
    ("What colour is the grass?", "", "The grass is green, as everyone knows."),
    ("Give the opposite of the word.", "fast", "slow"),
    ("Add one to 9.", "", "9 plus one is 10."),
    ("What colour is snow?", "", "White."),
]


def records() -> list[Any]:
    from logitkd.lm.data import InstructionRecord

    return [InstructionRecord(instruction=i, input=x, references=[r]) for i, x, r in TRAIN_ROWS]


def examples(tokenizer: Any) -> list[dict[str, list[int]]]:
    from logitkd.lm.data import tokenize_records

    out, _ = tokenize_records(tokenizer, records(), max_prompt_length=192, max_length=256)
    return out


def training_args(out_dir: str | Path, **overrides: Any) -> Any:
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {
        "output_dir": str(out_dir),
        "use_cpu": True,
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "remove_unused_columns": False,
        "disable_tqdm": True,
        "seed": 0,
    }
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def ddp_worker(assets: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from logitkd.lm.data import InstructionCollator
    from logitkd.lm.models import load_causal_lm, load_tokenizer
    from logitkd.lm.trainer import DistillationTrainer

    torch.set_num_threads(1)
    tok = load_tokenizer(Path(assets) / "student")
    student = load_causal_lm(Path(assets) / "student")
    teacher = load_causal_lm(Path(assets) / "teacher")
    args = training_args(Path(out_dir) / "run", per_device_train_batch_size=2, max_steps=3)
    trainer = DistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        kd_ratio=0.5,
        loca_alpha=0.9,
        train_dataset=examples(tok),
        data_collator=InstructionCollator(tok.pad_token_id),
        processing_class=tok,
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    checksum = float(sum(p.detach().double().sum() for p in student.parameters()))
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    result = {
        "rank": rank,
        "world_size": world,
        "args_world_size": trainer.args.world_size,
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
        "checksum": checksum,
        "teacher_wrapped": type(trainer.teacher_model).__name__,
        "model_wrapped": type(trainer.model_wrapped).__name__,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()  # MACHINE-NOTES: a barrier before destroy avoids gloo's abort at exit
        dist.destroy_process_group()


if __name__ == "__main__":
    ddp_worker(sys.argv[1], sys.argv[2])
