"""``logitkd train | distill | eval | demo``: image-classifier subcommands (thin wrappers).

Each parses its arguments, builds a :class:`~logitkd.vision.config.VisionConfig` from a recipe
plus ``key=value`` overrides, and calls :class:`~logitkd.vision.trainer.Trainer` (or the demo).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EPILOG_OVERRIDES = """\
overrides:
  Any config field can be set after the options as key=value, with dots for nesting:
    optim.lr=0.01  schedule.epochs=10  data.root=/data/cifar  method.loca_alpha=0.98
  An unknown key fails at once and suggests the closest valid one.

multi-GPU / multi-process:
  torchrun --nproc_per_node 4 -m logitkd distill --config ...   (data.batch_size is per process)
"""


def register(subparsers: Any) -> None:
    """Add the vision subcommands to the ``logitkd`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    train = subparsers.add_parser(
        "train",
        help="train a model from labels alone (a teacher, or a student baseline)",
        description=(
            "Train an image classifier with cross-entropy on its labels — typically a teacher "
            "to distil from later. Writes config.yaml, metrics (JSONL/CSV/TensorBoard), last.pt "
            "and best.pt to the run directory.\n\n"
            "example:\n  logitkd train --config configs/cifar100/teachers/resnet56.yaml "
            "data.root=./data"
        ),
        epilog=EPILOG_OVERRIDES,
        formatter_class=fmt,
    )
    _common(train)
    train.set_defaults(func=_cmd_train)

    distill = subparsers.add_parser(
        "distill",
        help="distil a student from a trained teacher (KD, KD*, DKD, CTKD, MLKD; LoCa, LS)",
        description=(
            "Train a student from a frozen teacher's logits and the labels. The recipe names the "
            "teacher (teacher.name, teacher.checkpoint: a local file, never downloaded), the "
            "student (model.name) and the method (method.name; method.loca_alpha turns on LoCa, "
            "method.standardize=true logit standardization).\n\n"
            "example:\n  logitkd distill --config configs/cifar100/loca/resnet56_resnet20_loca095.yaml "
            "data.root=./data"
        ),
        epilog=EPILOG_OVERRIDES,
        formatter_class=fmt,
    )
    _common(distill)
    distill.set_defaults(func=_cmd_distill)

    ev = subparsers.add_parser(
        "eval",
        help="test-set top-1/top-5 of a checkpoint",
        description=(
            "Evaluate model.checkpoint (or --checkpoint) on the test split of the config's "
            "dataset and print top-1, top-5 and the mean cross-entropy as JSON.\n\n"
            "example:\n  logitkd eval --config configs/cifar100/teachers/resnet56.yaml "
            "--checkpoint runs/cifar100/ce_none_resnet56/best.pt"
        ),
        epilog=EPILOG_OVERRIDES,
        formatter_class=fmt,
    )
    _common(ev, resume=False)
    ev.add_argument("--checkpoint", help="weights to evaluate (default: model.checkpoint)")
    ev.set_defaults(func=_cmd_eval)

    demo = subparsers.add_parser(
        "demo",
        help="the built-in 1-2 minute CPU demo: KD vs KD*, LoCa, LS on scikit-learn digits",
        description=(
            "Train a small teacher on part of scikit-learn's digits, then distil a student on "
            "the rest with: the student alone, KD, KD*, KD+LoCa, KD+LS and KD+LS+LoCa. Prints a "
            "table of test accuracy and the teacher's mis-instruction ratio, and saves it "
            "(results.md/.csv/.json) in the run directory. No download, no GPU."
        ),
        formatter_class=fmt,
    )
    demo.add_argument("--run-dir", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    demo.add_argument("--seeds", type=int, default=None, help="student seeds per method")
    demo.add_argument(
        "--quick", action="store_true", help="1 seed, 3 epochs, 3 methods: a smoke test (seconds)"
    )
    demo.set_defaults(func=_cmd_demo)


def _common(p: argparse.ArgumentParser, resume: bool = True) -> None:
    p.add_argument("--config", metavar="PATH", help="YAML recipe (e.g. configs/cifar100/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    if resume:
        p.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=False,
            metavar="RUN_DIR",
            help="continue the run in run_dir (or RUN_DIR) from its last.pt; without --config "
            "the run's saved config.yaml is used",
        )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (slower on GPU); same as deterministic=true",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")


def _load(args: argparse.Namespace, method_ce: bool) -> tuple[Any, bool]:
    from logitkd.vision.config import load_vision_config

    overrides = list(args.overrides)
    config = args.config
    resume = getattr(args, "resume", False)
    if isinstance(resume, str):
        overrides.append(f"run_dir={resume}")
        if config is None:
            saved = Path(resume) / "config.yaml"
            if not saved.is_file():
                raise FileNotFoundError(f"--resume {resume}: no config.yaml in that folder")
            config = str(saved)
    if args.deterministic:
        overrides.append("deterministic=true")
    if args.device:
        overrides.append(f"device={args.device}")
    if method_ce:
        overrides.insert(0, "method.name=ce")
    cfg = load_vision_config(config, overrides)
    return cfg, bool(resume)


def _run(args: argparse.Namespace, method_ce: bool) -> int:
    from logitkd.vision.trainer import Trainer

    cfg, resume = _load(args, method_ce)
    if not method_ce and cfg.method.name == "ce":
        # The student-alone baseline of a distillation sweep: same config, no teacher used.
        print("note: method.name=ce trains the student from labels alone; the teacher is unused")
    trainer = Trainer(cfg, resume=resume)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if trainer.dist.is_main:
        print(
            json.dumps(
                {
                    "best_top1": result.best_top1,
                    "best_epoch": result.best_epoch,
                    "last_top1": result.last_top1,
                    "teacher_top1": result.teacher_top1,
                    "run_dir": result.run_dir,
                }
            )
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    return _run(args, method_ce=True)


def _cmd_distill(args: argparse.Namespace) -> int:
    return _run(args, method_ce=False)


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from logitkd.vision.models import load_pretrained
    from logitkd.vision.models_small import build_model
    from logitkd.vision.trainer import _image_shape, _num_classes, build_datasets, evaluate_model

    cfg, _ = _load(args, method_ce=True)  # the loss does not matter for evaluation
    path = args.checkpoint or cfg.model.checkpoint
    if path is None:
        raise ValueError("eval needs weights: --checkpoint PATH or model.checkpoint=PATH")
    _, test = build_datasets(cfg)
    n = cfg.model.num_classes or _num_classes(test)
    model = load_pretrained(build_model(cfg.model.name, n, _image_shape(test)), path)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    out: dict[str, Any] = {"model": cfg.model.name, "checkpoint": str(path)}
    out.update(evaluate_model(model.to(device), test, cfg.data.eval_batch_size, device))
    print(json.dumps(out))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from logitkd.vision.demo import DemoConfig, format_table, run_demo

    demo = DemoConfig(run_dir=args.run_dir, seed=args.seed, verbose=True)
    if args.quick:
        demo.seeds, demo.student_epochs, demo.teacher_epochs = 1, 3, 5
        demo.methods = ["student alone (CE)", "KD", "KD + LoCa"]
    if args.seeds is not None:
        demo.seeds = args.seeds
    print(f"logitkd demo: writing to {demo.run_dir}", flush=True)
    results = run_demo(demo)
    print()
    print(format_table(results))
    print(f"\nsaved: {Path(demo.run_dir) / 'results.md'} (+ .csv, .json)", file=sys.stdout)
    return 0
