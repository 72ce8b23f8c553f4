"""The ``logitkd`` command line: thin — parse, build a config, call a layer.

Each family of subcommands lives in ``logitkd.commands.<family>`` and exposes
``register(subparsers)``; a family whose optional dependencies are missing still shows in
``--help`` and explains what to install when run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

FAMILIES = ("vision", "lm", "analysis")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logitkd",
        description=(
            "Logit-based knowledge distillation with LoCa (logit calibration) and logit "
            "standardization. Start with `logitkd demo` (no data or GPU needed)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from logitkd import __version__

    parser.add_argument("--version", action="version", version=f"logitkd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"logitkd.commands.{family}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("logitkd.commands"):
                continue  # family not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
