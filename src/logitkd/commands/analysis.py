"""``logitkd sweep`` and ``logitkd analyze {misinstruction,lm-misinstruction,timing,ls-views}``.

Thin: parse arguments, load models and data, call :mod:`logitkd.analysis`, write files. Bad input
(unknown model, missing checkpoint or data, a grid that does not fit the config) ends with one
``error: …`` line and exit status 2; a sweep with failed cells exits with status 1 after writing
its tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LMTeacherSpec", "ModelSpec", "parse_lm_teacher_spec", "parse_model_spec", "register"]


@dataclass(frozen=True)
class ModelSpec:
    """``[LABEL:]NAME=CHECKPOINT``: a CIFAR-zoo model name, a local checkpoint, a display label."""

    label: str
    name: str
    checkpoint: Path


def parse_model_spec(text: str, flag: str = "--teacher") -> ModelSpec:
    """Parse ``[LABEL:]NAME=CKPT`` (the label defaults to the model name)."""
    head, sep, ckpt = text.partition("=")
    if not sep or not head or not ckpt:
        raise ValueError(
            f"{flag} {text!r} must look like NAME=CHECKPOINT or LABEL:NAME=CHECKPOINT "
            "(e.g. resnet56=teachers/resnet56.pt)"
        )
    label, _, name = head.rpartition(":")
    return ModelSpec(label=label or name, name=name, checkpoint=Path(ckpt))


def _fail(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
            return _fail(err)

    return run


# --------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------


def _cmd_sweep(args: argparse.Namespace) -> int:
    from logitkd.analysis.sweep import load_grid, run_sweep

    spec = load_grid(args.grid)
    result = run_sweep(
        spec,
        args.out,
        args.base,
        family=args.family,
        baseline=args.baseline,
        retries=args.retries,
        jobs=args.jobs,
        dry_run=args.dry_run,
        collect_only=args.collect_only,
    )
    if args.dry_run:
        print(f"dry run: {len(result.cells)} cells planned; nothing was run")
        return 0
    print(f"wrote {result.files['markdown']} and {result.files['csv']}")
    print(result.files["markdown"].read_text())
    if result.failed:
        print(f"{len(result.failed)} cell(s) failed; see the table", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# analyze: shared model/data loading
# --------------------------------------------------------------------------------------------


def _load_dataset(args: argparse.Namespace) -> Any:
    from logitkd.vision.data import ArrayDataset, build_dataset

    kwargs = {"seed": args.data_seed} if args.dataset == "digits" else {}
    ds = build_dataset(args.dataset, args.data_root, args.split, **kwargs)
    if not isinstance(ds, ArrayDataset):
        raise ValueError(
            f"dataset {args.dataset!r} is an image folder; these analyses need an in-memory set "
            "(cifar10, cifar100, fashion_mnist, digits)"
        )
    if args.num_classes is not None and args.num_classes != ds.num_classes:
        raise ValueError(
            f"--num-classes {args.num_classes} does not match dataset {args.dataset!r} "
            f"({ds.num_classes} classes)"
        )
    return ds


def _load_model(
    spec: ModelSpec, num_classes: int, device: str, image_shape: tuple[int, int, int]
) -> Any:
    """Any model the trainer builds (small models, the CIFAR zoo, ImageNet) from a checkpoint."""
    from logitkd.vision.models import load_pretrained
    from logitkd.vision.models_small import SMALL_MODELS, build_model

    if not spec.checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint for {spec.label!r} not found: {spec.checkpoint}")
    # The small models are sized for the data; zoo models expect RGB (a grey channel is repeated).
    shape = image_shape if spec.name in SMALL_MODELS else (3, *image_shape[1:])
    model = build_model(spec.name, num_classes, shape)
    return load_pretrained(model, spec.checkpoint).to(device).eval()


def _input_transform(model: Any, channels: int) -> Callable[[Any], Any] | None:
    """Repeat a grey channel when the model's first convolution expects 3 (e.g. Fashion-MNIST
    through a CIFAR-zoo model); say so, since it must match how the model was trained."""
    from torch import nn

    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    expected = conv.in_channels if conv is not None else channels
    if expected == channels:
        return None
    if channels == 1 and expected == 3:
        print("note: repeating the grey channel 3 times for a 3-channel model", file=sys.stderr)
        return lambda x: x.expand(-1, 3, -1, -1)
    raise ValueError(f"the model expects {expected} input channels, the dataset has {channels}")


def _add_data_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, fashion_mnist or digits")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--split", default=split, choices=("train", "test"))
    p.add_argument("--num-classes", type=int, default=None, help="checked against the dataset")
    p.add_argument("--data-seed", type=int, default=0, help="split seed of the digits set")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, type=Path, help="output folder")


# --------------------------------------------------------------------------------------------
# analyze misinstruction
# --------------------------------------------------------------------------------------------


def _cmd_misinstruction(args: argparse.Namespace) -> int:
    from logitkd.analysis.misinstruction import (
        misinstruction_bar_plot,
        misinstruction_markdown,
        per_class_bar_plot,
        teacher_misinstruction,
    )

    specs = [parse_model_spec(t, "--teacher") for t in args.teacher]
    ds = _load_dataset(args)
    passes = {"none": (False,), "only": (True,), "both": (False, True)}[args.augment]
    reports = []
    for spec in specs:
        model = _load_model(spec, ds.num_classes, args.device, tuple(ds.image_shape))
        transform = _input_transform(model, ds.image_shape[0])
        for aug in passes:
            report = teacher_misinstruction(
                model,
                ds,
                label=spec.label,
                augment=aug,
                padding=args.padding,
                seed=args.seed,
                batch_size=args.batch_size,
                input_transform=transform,
                device=args.device,
                limit=args.limit,
            )
            print(
                f"{spec.label} ({'crop+flip' if aug else 'clean'}): "
                f"{100 * report.overall:.2f}% of {report.n} samples mis-instructed"
            )
            reports.append(report)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = misinstruction_markdown(reports)
    (out / "misinstruction.md").write_text(table)
    rows = [
        {
            "teacher": r.label,
            "augmented": r.augmented,
            "overall": r.overall,
            "mis_counts": list(r.mis_counts),
            "totals": list(r.totals),
        }
        for r in reports
    ]
    (out / "misinstruction.json").write_text(json.dumps(rows, indent=2))
    misinstruction_bar_plot(reports, out / "misinstruction.png")
    per_class_bar_plot(reports, out / "misinstruction_per_class.png")
    print(table)
    print(f"wrote {out}/misinstruction.{{md,json,png}} and misinstruction_per_class.png")
    return 0


# --------------------------------------------------------------------------------------------
# analyze lm-misinstruction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMTeacherSpec:
    """``[LABEL:]DIR``: a local Hugging Face causal-LM directory and its display label."""

    label: str
    path: Path


def parse_lm_teacher_spec(text: str, flag: str = "--teacher") -> LMTeacherSpec:
    """Parse ``[LABEL:]DIR``; the label defaults to the directory's name.

    A text that names an existing path is a bare ``DIR`` even if it holds a ``:``; otherwise the
    first ``:`` separates the label. Labels must be non-empty and free of ``|`` (the Markdown
    table's separator) and line breaks.
    """
    if not text.strip():
        raise ValueError(f"{flag} must not be empty; expected [LABEL:]DIR")
    label, sep, rest = text.partition(":")
    if not sep or Path(text).exists():
        path = Path(text)
        label = path.resolve().name or text
    else:
        if not label.strip() or not rest.strip():
            raise ValueError(
                f"{flag} {text!r} must look like DIR or LABEL:DIR with a non-empty label and "
                "directory (e.g. tiny:runs/tiny/teacher)"
            )
        path = Path(rest)
    if "|" in label or "\n" in label or "\r" in label:
        raise ValueError(f"{flag} {text!r}: the label must not contain '|' or line breaks")
    return LMTeacherSpec(label=label.strip(), path=path)


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value}")


def _check_lm_teacher(spec: LMTeacherSpec, need_tokenizer: bool) -> None:
    """Fail before any model is loaded when a directory is missing or lacks files."""
    from logitkd.lm.models import find_missing_files

    if not spec.path.is_dir():
        raise FileNotFoundError(
            f"--teacher {spec.label!r}: model directory {str(spec.path)!r} does not exist"
        )
    missing = find_missing_files(spec.path, weights=True, tokenizer=need_tokenizer)
    if missing:
        raise FileNotFoundError(
            f"--teacher {spec.label!r}: {str(spec.path)!r} is not a complete local causal-LM "
            f"directory; missing {'; '.join(missing)}"
            + (" (or pass --tokenizer DIR)" if need_tokenizer else "")
        )


def _read_lm_records(path: Path, data_format: str, limit: int | None) -> list[Any]:
    """The records of ``--data`` (``lm.data.read_instruction_jsonl``), every error naming it."""
    from logitkd.lm.data import read_instruction_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"--data {str(path)!r} does not exist or is not a file")
    try:
        records = read_instruction_jsonl(path, data_format, limit=limit)  # type: ignore[arg-type]
    except UnicodeDecodeError as err:
        raise ValueError(f"--data {str(path)!r} is not UTF-8 text: {err}") from None
    except ValueError as err:
        raise ValueError(f"--data: {err}") from None
    except OSError as err:
        raise FileNotFoundError(f"--data {str(path)!r} cannot be read: {err}") from None
    if not records:
        raise ValueError(f"--data {str(path)!r} holds no records (an empty file?)")
    return records


def _cmd_lm_misinstruction(args: argparse.Namespace) -> int:
    from logitkd.analysis.misinstruction import (
        lm_misinstruction_bar_plot,
        lm_misinstruction_counts,
        lm_misinstruction_markdown,
        lm_misinstruction_on_records,
    )
    from logitkd.lm.models import load_causal_lm, load_tokenizer, output_vocab_size, resolve_dtype

    _positive(args.limit, "--limit")
    _positive(args.batch_size, "--batch-size")
    _positive(args.max_prompt_length, "--max-prompt-length")
    if args.max_length <= args.max_prompt_length:
        raise ValueError(
            f"--max-length ({args.max_length}) must exceed --max-prompt-length "
            f"({args.max_prompt_length}) so that every example keeps a response token"
        )
    try:
        dtype = resolve_dtype(args.dtype)
    except ValueError as err:
        raise ValueError(f"--dtype: {err}") from None
    specs = [parse_lm_teacher_spec(t) for t in args.teacher]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--teacher labels must be distinct (use LABEL:DIR), got {labels}")
    if args.tokenizer is not None and not args.tokenizer.is_dir():
        raise FileNotFoundError(f"--tokenizer directory {str(args.tokenizer)!r} does not exist")
    for spec in specs:  # every directory is checked before the first (slow) load
        _check_lm_teacher(spec, need_tokenizer=args.tokenizer is None)
    records = _read_lm_records(args.data, args.data_format, args.limit)

    stats: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        tok_dir = args.tokenizer if args.tokenizer is not None else spec.path
        # Each teacher reads the data through its own tokenizer: token counts may differ.
        tokenizer = load_tokenizer(tok_dir)
        try:
            model = load_causal_lm(spec.path, dtype=dtype).to(args.device)
        except OSError as err:  # a corrupt config or weights file
            raise ValueError(
                f"--teacher {spec.label!r}: cannot load {str(spec.path)!r}: {err}"
            ) from None
        vocab = output_vocab_size(model)
        if vocab < len(tokenizer):  # rows past the tokenizer are padding; fewer is a mismatch
            raise ValueError(
                f"--teacher {spec.label!r} has {vocab} output logits but tokenizer "
                f"{str(tok_dir)!r} has {len(tokenizer)} tokens: they do not belong together"
            )
        s, tok_stats = lm_misinstruction_on_records(
            model,
            tokenizer,
            records,
            max_prompt_length=args.max_prompt_length,
            max_length=args.max_length,
            prompt_truncation=args.prompt_truncation,
            batch_size=args.batch_size,
            vocab_size=vocab,
        )
        del model
        stats[spec.label] = s
        rows.append(
            {
                "teacher": spec.label,
                "path": str(spec.path),
                "tokenizer": str(tok_dir),
                "vocab_size": vocab,
                "examples": tok_stats.n_examples,
                "prompts_truncated": tok_stats.n_prompt_truncated,
                "responses_truncated": tok_stats.n_response_truncated,
                **lm_misinstruction_counts(s),
                # NaN (a group without tokens) is not valid JSON.
                "ratio": None if s.ratio != s.ratio else s.ratio,
                "ratio_first": None if s.ratio_first != s.ratio_first else s.ratio_first,
                "ratio_later": None if s.ratio_rest != s.ratio_rest else s.ratio_rest,
            }
        )
        print(
            f"{spec.label}: {100 * s.ratio:.2f}% of {s.n_tokens} response tokens mis-instructed",
            file=sys.stderr,
        )

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table = lm_misinstruction_markdown(stats)
    (out / "lm_misinstruction.md").write_text(table)
    summary = {
        "data": str(args.data),
        "data_format": args.data_format,
        "records": len(records),
        "limit": args.limit,
        "max_prompt_length": args.max_prompt_length,
        "max_length": args.max_length,
        "prompt_truncation": args.prompt_truncation,
        "teachers": rows,
    }
    (out / "lm_misinstruction.json").write_text(json.dumps(summary, indent=2))
    lm_misinstruction_bar_plot(stats, out / "lm_misinstruction.png")
    print(table)
    print(f"wrote {out}/lm_misinstruction.{{md,json,png}}")
    return 0


# --------------------------------------------------------------------------------------------
# analyze timing
# --------------------------------------------------------------------------------------------


def _cmd_timing(args: argparse.Namespace) -> int:
    import torch

    from logitkd.analysis.timing import measure_timing, timing_markdown

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows = measure_timing(
        args.teacher,
        args.student,
        variants=variants,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        image_shape=(args.channels, args.image_size, args.image_size),
        dataset_size=args.dataset_size,
        repeats=args.repeats,
        warmup=args.warmup,
        loss_repeats=args.loss_repeats,
        loca_alpha=args.loca_alpha,
        temperature=args.temperature,
        device=args.device,
    )
    caption = (
        f"{args.teacher} → {args.student}, batch {args.batch_size}, {args.num_classes} classes, "
        f"{args.device} ({torch.get_num_threads()} threads); medians of {args.repeats} steps and "
        f"{args.loss_repeats} loss calls; epoch = {args.dataset_size} samples"
    )
    table = timing_markdown(rows, caption)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# analyze ls-views
# --------------------------------------------------------------------------------------------


def _cmd_ls_views(args: argparse.Namespace) -> int:
    from logitkd.analysis.ls_views import difference_heatmap, logit_difference, mean_std_histogram
    from logitkd.analysis.misinstruction import collect_logits

    teacher = parse_model_spec(args.teacher, "--teacher")
    students = [parse_model_spec(s, "--student") for s in args.student]
    labels_seen = [teacher.label, *(s.label for s in students)]
    if len(set(labels_seen)) != len(labels_seen):
        raise ValueError(f"model labels must be distinct (use LABEL:NAME=CKPT), got {labels_seen}")
    ds = _load_dataset(args)
    logits: dict[str, Any] = {}
    labels = None
    for spec in (teacher, *students):
        model = _load_model(spec, ds.num_classes, args.device, tuple(ds.image_shape))
        logits[spec.label], labels = collect_logits(
            model,
            ds,
            batch_size=args.batch_size,
            input_transform=_input_transform(model, ds.image_shape[0]),
            device=args.device,
            limit=args.limit,
        )
    out: Path = args.out
    written = [mean_std_histogram(logits, out / "logit_mean_std.png", bins=args.bins)]
    t = logits[teacher.label]
    for standardize, name in (
        (False, "logit_difference.png"),
        (True, "logit_difference_zscore.png"),
    ):
        diffs = {
            s.label: logit_difference(t, logits[s.label], labels, standardize=standardize)
            for s in students
        }
        title = "Average teacher − student " + ("z-scored logit" if standardize else "logit")
        written.append(difference_heatmap(diffs, out / name, title=f"{title} difference"))
    for p in written:
        print(f"wrote {p}")
    return 0


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``sweep`` and ``analyze`` to the ``logitkd`` command line."""
    sw = subparsers.add_parser(
        "sweep",
        help="run a grid of methods × hyper-parameters × seeds and tabulate it with statistics",
        description=(
            "Run every cell of GRID.yaml (methods × hyper-parameters × seeds) from a base config, "
            "skipping finished cells and resuming unfinished ones, then write results.md, "
            "results.csv, cells.csv and plots/ under --out. See docs/analysis.md."
        ),
    )
    sw.add_argument("--base", required=True, type=Path, help="base config YAML")
    sw.add_argument("--grid", required=True, type=Path, help="grid YAML")
    sw.add_argument("--out", required=True, type=Path, help="output folder")
    sw.add_argument("--family", choices=("vision", "lm"), default=None)
    sw.add_argument(
        "--baseline", default=None, help="method or group the others are tested against"
    )
    sw.add_argument("--retries", type=int, default=1, help="extra attempts for a crashed cell")
    sw.add_argument("--jobs", type=int, default=1, help="cells run at the same time")
    sw.add_argument("--dry-run", action="store_true", help="validate and list the cells only")
    sw.add_argument(
        "--collect-only",
        action="store_true",
        help="run nothing: tabulate the finished cells, report the rest as unfinished",
    )
    sw.set_defaults(func=_guarded(_cmd_sweep))

    an = subparsers.add_parser("analyze", help="mis-instruction, time cost and LS views")
    sub = an.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True

    mi = sub.add_parser(
        "misinstruction",
        help="a teacher's mis-instruction ratio, overall and per class (LoCa Fig. 2)",
    )
    mi.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="[LABEL:]NAME=CKPT",
        help="model-zoo name and local checkpoint; repeat for several teachers",
    )
    mi.add_argument("--augment", choices=("both", "none", "only"), default="both")
    mi.add_argument("--padding", type=int, default=4, help="random-crop padding")
    mi.add_argument("--seed", type=int, default=0, help="seed of the augmentation draws")
    _add_data_args(mi, split="train")
    mi.set_defaults(func=_guarded(_cmd_misinstruction))

    lmi = sub.add_parser(
        "lm-misinstruction",
        help="LM teachers' token mis-instruction ratio, overall and by position type",
        description=(
            "For each local causal-LM teacher, the share of reference response tokens of an "
            "instruction JSONL file whose teacher argmax is not the reference token: overall, on "
            "the first response token and on the later ones (tokenised as `logitkd lm "
            "evaluate`). Writes lm_misinstruction.{md,json,png} under --out. Offline only."
        ),
    )
    lmi.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="[LABEL:]DIR",
        help="local Hugging Face causal-LM directory; repeat for several teachers",
    )
    lmi.add_argument("--data", required=True, type=Path, help="instruction JSONL file")
    lmi.add_argument("--data-format", choices=("auto", "dolly", "minillm"), default="auto")
    lmi.add_argument("--limit", type=int, default=None, help="use only the first N records")
    lmi.add_argument("--max-prompt-length", type=int, default=256, help="prompt tokens kept")
    lmi.add_argument("--max-length", type=int, default=512, help="prompt + response tokens kept")
    lmi.add_argument(
        "--prompt-truncation",
        choices=("left", "right"),
        default="left",
        help="which end of a long prompt is dropped (see logitkd.lm.data)",
    )
    lmi.add_argument("--batch-size", type=int, default=8)
    lmi.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer directory for every teacher (default: each teacher's own directory)",
    )
    lmi.add_argument("--dtype", default=None, help="load dtype, e.g. bf16 (default: checkpoint's)")
    lmi.add_argument("--device", default="cpu")
    lmi.add_argument("--out", required=True, type=Path, help="output folder")
    lmi.set_defaults(func=_guarded(_cmd_lm_misinstruction))

    ti = sub.add_parser("timing", help="KD-loss, batch and epoch time with/without LoCa and LS")
    ti.add_argument("--teacher", required=True, help="model name (CIFAR zoo, mlp, digits_cnn, ...)")
    ti.add_argument("--student", required=True, help="model name (CIFAR zoo, mlp, digits_cnn, ...)")
    ti.add_argument("--batch-size", type=int, default=64)
    ti.add_argument("--num-classes", type=int, default=100)
    ti.add_argument("--image-size", type=int, default=32)
    ti.add_argument("--channels", type=int, default=3)
    ti.add_argument("--dataset-size", type=int, default=50_000, help="samples per epoch")
    ti.add_argument("--variants", default="KD,KD+LoCa,KD+LS,KD+LS+LoCa")
    ti.add_argument("--repeats", type=int, default=5, help="timed training steps per variant")
    ti.add_argument("--warmup", type=int, default=1)
    ti.add_argument("--loss-repeats", type=int, default=30)
    ti.add_argument("--loca-alpha", type=float, default=0.9)
    ti.add_argument("--temperature", type=float, default=4.0)
    ti.add_argument("--threads", type=int, default=None)
    ti.add_argument("--device", default="cpu")
    ti.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    ti.set_defaults(func=_guarded(_cmd_timing))

    ls = sub.add_parser(
        "ls-views", help="logit mean/std histograms and teacher-student difference heatmaps"
    )
    ls.add_argument("--teacher", required=True, metavar="[LABEL:]NAME=CKPT")
    ls.add_argument(
        "--student",
        action="append",
        required=True,
        metavar="[LABEL:]NAME=CKPT",
        help="repeat: e.g. KD:resnet20=kd.pt and KD+LS:resnet20=ls.pt",
    )
    ls.add_argument("--bins", type=int, default=40)
    _add_data_args(ls, split="test")
    ls.set_defaults(func=_guarded(_cmd_ls_views))
