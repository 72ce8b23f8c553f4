"""``logitkd lm sft | seqkd | distill | generate | evaluate | make-tiny``.

Each action takes ``--config recipe.yaml`` (see ``configs/lm/``) plus ``key=value`` overrides
(``distill.loca_alpha=0.9 train.output_dir=runs/x``), builds a
:class:`logitkd.lm.config.LMConfig` and calls :mod:`logitkd.lm.methods`. The resolved config is
saved next to the outputs (``<train.output_dir>/logitkd_config-<action>.yaml``) and the summary printed as
JSON. ``transformers`` is imported only when an action runs, so ``logitkd --help`` works without
the ``lm`` extra.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["ACTIONS", "register", "run_action"]

ACTIONS: dict[str, str] = {
    "sft": "fine-tune the student on the reference responses (no teacher)",
    "seqkd": "sequence-level KD: the teacher answers the prompts, the student learns the answers",
    "distill": "token-level KD (forward/reverse KL, JSD) with optional LoCa and standardization",
    "generate": "generate the student's responses on data.test_files",
    "evaluate": "Rouge-L (mean ± std over seeds) and the teacher's mis-instruction ratio",
}


def register(subparsers: Any) -> None:
    """Add the ``lm`` family to the top-level ``logitkd`` parser."""
    parser = subparsers.add_parser(
        "lm",
        help="language-model distillation (needs `pip install 'logitkd[lm]'`)",
        description="Distil causal language models with the Hugging Face Trainer.",
    )
    actions = parser.add_subparsers(dest="lm_action", metavar="ACTION")
    actions.required = True
    for name, text in ACTIONS.items():
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument("--config", type=Path, help="YAML recipe (configs/lm/...)")
        p.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. distill.loca_alpha=0.9"
        )
        p.set_defaults(func=lambda args, _name=name: run_action(_name, args.config, args.overrides))
    tiny = actions.add_parser(
        "make-tiny",
        help="write a tiny tokenizer, teacher, student and data set (CPU demo, seconds)",
    )
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_make_tiny)


def _fail(action: str, err: BaseException) -> int:
    print(f"logitkd lm {action}: error: {err}", file=sys.stderr)
    return 2


def run_action(action: str, config: Path | None, overrides: list[str]) -> int:
    """Build the config, run ``action``, print its JSON summary; 2 on a user error."""
    from logitkd.config import ConfigError, load_config, save_config

    try:
        from logitkd.lm import methods
        from logitkd.lm.config import LMConfig
    except ImportError as err:
        return _fail(action, ImportError(f"{err}; install the extra: pip install 'logitkd[lm]'"))
    try:
        cfg = load_config(LMConfig, config, overrides)
    except (ConfigError, FileNotFoundError) as err:
        return _fail(action, err)
    runner = {
        "sft": methods.run_sft,
        "seqkd": methods.run_seqkd,
        "distill": methods.run_distill,
        "generate": methods.run_generate,
        "evaluate": methods.run_evaluate,
    }[action]
    try:
        out_dir = Path(cfg.train.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / f"logitkd_config-{action}.yaml")
        summary = runner(cfg)
    except (ValueError, FileNotFoundError, TypeError) as err:
        return _fail(action, err)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _make_tiny(args: argparse.Namespace) -> int:
    try:
        from logitkd.lm.methods import make_tiny_assets
    except ImportError as err:
        return _fail("make-tiny", ImportError(f"{err}; install: pip install 'logitkd[lm]'"))
    paths = make_tiny_assets(args.out_dir, seed=args.seed)
    print(json.dumps(paths, indent=2))
    return 0
