"""``logitkd demo``: the built-in, offline, CPU-only distillation experiment.

Data: scikit-learn's 8×8 handwritten digits (ships with scikit-learn; 1,347 train / 450 test
images, 10 classes, fixed stratified split). The training split is cut in two disjoint parts:

* the **teacher set** (``teacher_fraction`` of it, the first images of a seeded permutation):
  a small CNN teacher is trained on it, briefly (``teacher_epochs``);
* the **transfer set** (the rest): every student is trained on it, with its labels, from the
  teacher's logits. The teacher has never seen these images, so it gets some of them wrong —
  it *mis-instructs* on them (its argmax is not the label; LoCa, arXiv 2409.04778), which is
  what LoCa and KD* act on. The demo prints that share; a setting where it is ~0 would make
  LoCa a no-op.

The teacher is an MLP (64 hidden units), the students a smaller MLP (16 hidden units); the
teacher is trained on a fifth of the training split, so that it mis-instructs on ~5-6% of the
transfer set. Digits is easy: a student trained alone on the ~1,080 transfer images reaches
about the teacher's accuracy, so the demo shows what mis-instruction does to KD and what LoCa and
KD* recover — not that distillation beats training alone. Students are trained with each method, over ``seeds`` seeds, and the table gives
the mean ± std test top-1 of the last epoch (and the mean of the best epoch). Methods: the
student alone (CE on labels), KD (Hinton 2015, T=4, CE 0.1 + KD 0.9), KD* (KD on the rows the
teacher gets right), KD+LoCa (alpha 0.95), KD+LS (logit standardization, base T=2, KD weight 9,
CE 0.1, Sun et al. 2024) and KD+LS+LoCa. Everything is seeded; runs use one CPU thread (the
fastest for models this small).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from logitkd.config import from_dict
from logitkd.vision.config import VisionConfig
from logitkd.vision.data import ArrayDataset
from logitkd.vision.trainer import Trainer, _digits

__all__ = ["DEMO_METHODS", "DemoConfig", "format_table", "run_demo"]

# name -> method config (None: the trainer's defaults for that method).
DEMO_METHODS: dict[str, dict[str, Any]] = {
    "student alone (CE)": {"name": "ce"},
    "KD": {"name": "kd", "temperature": 4.0},
    "KD* (drop mis-instructed)": {"name": "kd_star", "temperature": 4.0},
    "KD + LoCa": {"name": "kd", "temperature": 4.0, "loca_alpha": 0.95},
    "KD + LS": {
        "name": "kd",
        "temperature": 2.0,
        "standardize": True,
        "ce_weight": 0.1,
        "kd_weight": 9.0,
    },
    "KD + LS + LoCa": {
        "name": "kd",
        "temperature": 2.0,
        "standardize": True,
        "ce_weight": 0.1,
        "kd_weight": 9.0,
        "loca_alpha": 0.95,
    },
}


@dataclass
class DemoConfig:
    run_dir: str = "runs/demo"
    seed: int = 0
    seeds: int = 5  # student seeds per method
    teacher_fraction: float = 0.2  # share of the training split the teacher learns from
    teacher_model: str = "mlp"
    teacher_epochs: int = 15
    teacher_lr: float = 0.05
    student_model: str = "mlp_tiny"
    student_epochs: int = 10
    student_lr: float = 0.05
    batch_size: int = 32
    methods: list[str] = field(default_factory=lambda: list(DEMO_METHODS))
    progress: bool = False  # per-epoch progress bars and lines
    verbose: bool = False  # one line per finished run


def _split(train: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"teacher_fraction must be in (0, 1), got {fraction}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    k = round(fraction * len(train))
    return train.subset(perm[:k]), train.subset(perm[k:])


def _run_cfg(demo: DemoConfig, run_dir: Path, **over: Any) -> VisionConfig:
    base: dict[str, Any] = {
        "data": {"name": "digits", "augment": False, "batch_size": demo.batch_size},
        "schedule": {"epochs": demo.student_epochs, "milestones": []},
        "logging": {"tensorboard": False, "progress": demo.progress},
        "checkpoint": {"keep_best": True},
        "run_dir": str(run_dir),
        "cpu_threads": 1,
        "deterministic": True,
    }
    for key, value in over.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return from_dict(VisionConfig, base)


def run_demo(demo: DemoConfig | None = None) -> dict[str, Any]:
    """Train the teacher, distil a student with every method, write and return the results.

    Writes ``results.md``, ``results.csv`` and ``results.json`` in ``demo.run_dir`` (plus each
    run's own directory with config, metrics and checkpoints).
    """
    demo = demo or DemoConfig()
    unknown = [m for m in demo.methods if m not in DEMO_METHODS]
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}; valid: {list(DEMO_METHODS)}")
    start = time.perf_counter()
    root = Path(demo.run_dir)
    if (root / "results.json").exists() or (root / "teacher" / "last.pt").exists():
        raise FileExistsError(f"{root} already holds a demo run; pass --run-dir NEW_DIR")
    threads = torch.get_num_threads()
    train, test = _digits()
    teacher_set, transfer = _split(train, demo.teacher_fraction, demo.seed)

    t_cfg = _run_cfg(
        demo,
        root / "teacher",
        model={"name": demo.teacher_model},
        method={"name": "ce"},
        optim={"lr": demo.teacher_lr},
        schedule={"epochs": demo.teacher_epochs, "milestones": []},
        seed=demo.seed,
    )
    teacher_result = Trainer(t_cfg, train_set=teacher_set, test_set=test).fit()
    if demo.verbose:
        print(
            f"teacher {demo.teacher_model}: test top-1 {teacher_result.best_top1:.2f}%", flush=True
        )

    rows: list[dict[str, Any]] = []
    for label in demo.methods:
        method = DEMO_METHODS[label]
        last, best, mis = [], [], []
        for k in range(demo.seeds):
            over: dict[str, Any] = {
                "model": {"name": demo.student_model},
                "method": dict(method),
                "optim": {"lr": demo.student_lr},
                "seed": demo.seed + 1 + k,
            }
            if method["name"] != "ce":
                over["teacher"] = {
                    "name": demo.teacher_model,
                    "checkpoint": str(root / "teacher" / "best.pt"),
                }
            slug = label.split(" (")[0].replace(" + ", "_").replace("*", "_star").replace(" ", "_")
            cfg = _run_cfg(demo, root / slug.lower() / f"seed{k}", **over)
            result = Trainer(cfg, train_set=transfer, test_set=test).fit()
            if demo.verbose:
                print(f"  {label:<28} seed {k}: test top-1 {result.last_top1:.2f}%", flush=True)
            last.append(result.last_top1)
            best.append(result.best_top1)
            if result.teacher_misinstruction is not None:
                mis.append(result.teacher_misinstruction)
        rows.append(
            {
                "method": label,
                "student_top1_mean": statistics.fmean(last),
                "student_top1_std": statistics.stdev(last) if len(last) > 1 else 0.0,
                "student_best_top1_mean": statistics.fmean(best),
                "teacher_misinstruction": statistics.fmean(mis) if mis else None,
            }
        )
    torch.set_num_threads(threads)
    results = {
        "setting": {
            "dataset": "scikit-learn digits (8x8, 10 classes), fixed stratified split: "
            f"{len(train)} train / {len(test)} test",
            "teacher": f"{demo.teacher_model} trained {demo.teacher_epochs} epochs on "
            f"{len(teacher_set)} training images (teacher set)",
            "transfer_set": f"the other {len(transfer)} training images, unseen by the teacher",
            "student": f"{demo.student_model}, {demo.student_epochs} epochs, SGD lr "
            f"{demo.student_lr}, batch {demo.batch_size}, {demo.seeds} seed(s) per method",
        },
        "teacher_test_top1": teacher_result.best_top1,
        "rows": rows,
        "seconds": time.perf_counter() - start,
    }
    _write(root, results)
    return results


def format_table(results: dict[str, Any]) -> str:
    """A markdown table of the demo results, with the setting stated above it."""
    s = results["setting"]
    lines = [
        f"Data: {s['dataset']}.",
        f"Teacher: {s['teacher']}; test top-1 {results['teacher_test_top1']:.2f}%.",
        f"Students learn on the transfer set ({s['transfer_set']}): {s['student']}.",
        "",
        "| method | student test top-1 (%) | best-epoch top-1 (%) | teacher test top-1 (%) "
        "| teacher mis-instruction on transfer set |",
        "|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        mis = r["teacher_misinstruction"]
        mis_s = f"{100 * mis:.1f}%" if mis is not None else "— (no teacher)"
        lines.append(
            f"| {r['method']} | {r['student_top1_mean']:.2f} ± {r['student_top1_std']:.2f} "
            f"| {r['student_best_top1_mean']:.2f} | {results['teacher_test_top1']:.2f} | {mis_s} |"
        )
    lines.append("")
    lines.append(
        "Student top-1: mean ± std over seeds of the last epoch's test accuracy. Mis-instruction: "
        "share of transfer-set samples whose teacher argmax is not the label."
    )
    lines.append(f"Wall time: {results['seconds']:.0f} s.")
    return "\n".join(lines)


def _write(root: Path, results: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (root / "results.md").write_text(format_table(results) + "\n")
    with (root / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*results["rows"][0], "teacher_test_top1"])
        w.writeheader()
        for r in results["rows"]:
            w.writerow({**r, "teacher_test_top1": results["teacher_test_top1"]})
