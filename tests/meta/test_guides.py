"""The task guides in ``docs/guides/`` must keep matching the CLI, so they cannot rot silently.

Every fenced ```` ```bash ```` block of every guide is read the way bash would split it (heredoc
bodies set aside, ``\\`` continuations joined, ``;``/``&&``/``|`` separating commands) and each
``logitkd ...`` command in it (also ``torchrun/accelerate/python ... -m logitkd ...``) must:

* name a real subcommand path (``logitkd lm distill``, ``logitkd analyze timing``);
* use only ``--flags`` that appear in that path's ``logitkd <path> --help`` text;
* parse with the real argparse parser (so a flag's value is never taken for an override);
* give ``key=value`` overrides that name real config fields — ``VisionConfig`` for
  ``train/distill/eval``, ``LMConfig`` for the ``lm`` actions — and, when ``--config`` names a
  recipe under ``configs/``, that recipe must exist and load with those overrides.

Each guide has exactly one *quick block*: a ``bash`` block whose first line is
``# quick: runs as written``, which the guide promises runs as written from the repository root.
Besides the checks above, a quick block must pin ``OMP_NUM_THREADS=1``, write only under its own
``runs/guide-*`` folder, and state its measured wall time; its ``python`` heredocs must compile
(and the data files they write must read back as instruction JSONL), and its ``logitkd sweep``
commands must pass ``--dry-run`` (every configuration of the grid validated) with the files its
``cat > FILE <<'EOF'`` heredocs write. Nothing is trained here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from logitkd import cli
from logitkd.config import load_config
from logitkd.lm.config import LMConfig
from logitkd.vision.config import VisionConfig, load_vision_config

REPO = Path(__file__).resolve().parents[2]
GUIDES_DIR = REPO / "docs" / "guides"
GUIDES = ("distil-cifar-student.md", "distil-language-model.md", "does-loca-help.md")
QUICK_MARK = "# quick: runs as written"
SCRATCH_PREFIX = "runs/guide-"

# Shell operators that end one simple command; redirections are dropped with their target.
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")"}
_REDIRECTS = {">", ">>", "<", "2>", "&>"}
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
_CAT_TARGET = re.compile(r"^\s*cat\s*>\s*(\S+)\s*<<")
_FLAG_VALUES_AS_PATHS = ("--out",)  # flags whose value is an output folder
_OUTPUT_KEYS = ("run_dir", "train.output_dir")  # overrides naming an output folder


# ------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Block:
    """One fenced ``bash`` block: its guide, first line number and text."""

    guide: str
    line: int
    text: str

    @property
    def quick(self) -> bool:
        return self.text.startswith(QUICK_MARK)


@dataclass(frozen=True)
class Heredoc:
    """A heredoc: the command line that opens it, the file it writes (``cat > FILE``), its body."""

    opener: str
    target: str | None
    body: str


@dataclass(frozen=True)
class Command:
    """One simple command of a block, as the argument list bash would pass."""

    block: Block
    line: int  # line number in the guide
    tokens: tuple[str, ...]

    def logitkd_args(self) -> list[str] | None:
        """Arguments after ``logitkd`` (or after ``-m logitkd``); ``None`` for other programs."""
        toks = list(self.tokens)
        while toks and re.fullmatch(r"[A-Za-z_]\w*=.*", toks[0]):  # VAR=value prefixes
            toks.pop(0)
        if toks and Path(toks[0]).name == "logitkd":
            return toks[1:]
        for i in range(len(toks) - 1):
            if toks[i] in ("-m", "--module") and toks[i + 1] == "logitkd":
                return toks[i + 2 :]
        return None

    def __str__(self) -> str:
        return f"{self.block.guide}:{self.line}: {shlex.join(self.tokens)}"


def bash_blocks(guide: str) -> list[Block]:
    """The fenced ``bash`` blocks of ``docs/guides/<guide>``."""
    text = (GUIDES_DIR / guide).read_text()
    blocks = []
    for m in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
        blocks.append(Block(guide, text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def split_heredocs(block: Block) -> tuple[list[tuple[int, str]], list[Heredoc]]:
    """Separate heredoc bodies from the shell text: (numbered shell lines, heredocs)."""
    shell: list[tuple[int, str]] = []
    docs: list[Heredoc] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        shell.append((block.line + i, line))
        m = _HEREDOC.search(line)
        i += 1
        if m is None:
            continue
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != m.group(2):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{block.guide}:{block.line + i}: heredoc {m.group(2)} never ends"
        i += 1  # the terminator
        target = _CAT_TARGET.match(line)
        docs.append(Heredoc(line, target.group(1) if target else None, "\n".join(body) + "\n"))
    return shell, docs


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def commands(block: Block) -> list[Command]:
    """The simple commands of a block (continuations joined, comments and heredocs removed)."""
    shell, _ = split_heredocs(block)
    logical: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in shell:
        start, text = pending if pending else (number, "")
        text += line
        if line.endswith("\\"):
            pending = (start, text[:-1] + " ")
            continue
        pending = None
        logical.append((start, text))
    out: list[Command] = []
    for number, text in logical:
        current: list[str] = []
        skip_next = False
        for tok in [*_tokens(text), ";"]:
            if skip_next:
                skip_next = False
            elif tok in _REDIRECTS or tok.startswith("<<"):
                skip_next = True  # the redirection's target or heredoc word
            elif tok in _SEPARATORS:
                if current:
                    out.append(Command(block, number, tuple(current)))
                current = []
            else:
                current.append(tok)
    return out


def all_blocks() -> list[Block]:
    return [b for g in GUIDES for b in bash_blocks(g)]


def logitkd_commands() -> list[Command]:
    return [c for b in all_blocks() for c in commands(b) if c.logitkd_args() is not None]


# ------------------------------------------------------------------------------ CLI helpers


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def subcommand_path(args: list[str]) -> list[str]:
    """The leading subcommand names of ``args`` (``["lm", "distill"]``), checked to exist."""
    parser, path = cli.build_parser(), []
    while (sub := _subparsers(parser)) is not None:
        name = next((a for a in args[len(path) :] if not a.startswith("-")), None)
        assert name in sub.choices, (
            f"unknown subcommand {[*path, name]}; valid: {list(sub.choices)}"
        )
        assert args[len(path)] == name, f"options before the subcommand {name!r}: {args}"
        path.append(name)
        parser = sub.choices[name]
    return path


def help_text(path: tuple[str, ...]) -> str:
    """What ``logitkd <path> --help`` prints (run through the real entry point)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0, f"logitkd {' '.join(path)} --help exited {exc.value.code}"
    return out.getvalue()


def parse(args: list[str]) -> argparse.Namespace:
    """Parse with the real parser; a usage error fails the test with argparse's message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"logitkd {shlex.join(args)} does not parse:\n{err.getvalue()}")


def config_class(path: list[str]) -> type | None:
    if path[0] == "lm" and path[1] != "make-tiny":
        return LMConfig
    if path[0] in ("train", "distill", "eval"):
        return VisionConfig
    return None


def unknown_key(cls: type, dotted: str) -> str | None:
    """``None`` if ``dotted`` names a field of dataclass ``cls`` (any key below a dict field)."""
    node: Any = cls
    for i, part in enumerate(dotted.split(".")):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return f"{'.'.join(dotted.split('.')[:i])} is not a section"
        names = {f.name for f in dataclasses.fields(node)}
        if part not in names:
            return f"{part!r} is not a field of {node.__name__} (fields: {sorted(names)})"
        tp = typing.get_type_hints(node)[part]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        node = args[0] if typing.get_origin(tp) is not None and len(args) == 1 else tp
        if typing.get_origin(node) is dict or node is dict:
            return None  # free-form mapping such as train.extra
    return None


# ---------------------------------------------------------------------------------- tests


def test_every_guide_exists_and_has_one_quick_block() -> None:
    for guide in GUIDES:
        assert (GUIDES_DIR / guide).is_file(), f"docs/guides/{guide} is missing"
        quick = [b for b in bash_blocks(guide) if b.quick]
        assert len(quick) == 1, f"{guide}: {len(quick)} blocks start with {QUICK_MARK!r}, want 1"
        assert any(c.logitkd_args() is not None for c in commands(quick[0])), guide


def test_the_parser_sees_what_bash_sees() -> None:
    block = Block(
        "t.md",
        1,
        "# quick: runs as written\nexport A=1 && logitkd train --config c.yaml \\\n"
        "    x.y='a b' # note\ncat > f.yaml <<'EOF'\nlogitkd nope\nEOF\n"
        "OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m logitkd distill k=v > log.txt\n",
    )
    cmds = commands(block)
    assert [c.logitkd_args() for c in cmds] == [
        None,
        ["train", "--config", "c.yaml", "x.y=a b"],
        None,
        ["distill", "k=v"],
    ]
    assert [c.line for c in cmds] == [2, 2, 4, 7]
    _, docs = split_heredocs(block)
    assert docs == [Heredoc("cat > f.yaml <<'EOF'", "f.yaml", "logitkd nope\n")]


def test_unknown_key_spots_bad_fields() -> None:
    assert unknown_key(VisionConfig, "method.loca_alpha") is None
    assert unknown_key(LMConfig, "train.extra.disable_tqdm") is None
    assert "loca_alhpa" in str(unknown_key(VisionConfig, "method.loca_alhpa"))
    assert unknown_key(VisionConfig, "seed.x") is not None
    assert unknown_key(LMConfig, "distill.loca_alpha") is None


@pytest.mark.parametrize("command", logitkd_commands(), ids=lambda c: f"{c.block.guide}:{c.line}")
def test_logitkd_command_matches_the_cli(command: Command) -> None:
    args = command.logitkd_args()
    assert args is not None
    path = subcommand_path(args)
    text = help_text(tuple(path))
    for tok in args:
        if tok.startswith("--"):
            flag = tok.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{command}\n{flag} is not in `logitkd {' '.join(path)} --help`"
            )
    ns = parse(args)
    overrides = list(getattr(ns, "overrides", None) or [])
    cls = config_class(path)
    if cls is None:
        assert not overrides, f"{command}: overrides given to a command that takes none"
        return
    for text_kv in overrides:
        assert "=" in text_kv, f"{command}: {text_kv!r} is not key=value"
        problem = unknown_key(cls, text_kv.split("=", 1)[0])
        assert problem is None, f"{command}\n{text_kv}: {problem}"
    recipe = getattr(ns, "config", None)
    if recipe is not None and str(recipe).startswith("configs/"):
        assert (REPO / recipe).is_file(), f"{command}: recipe {recipe} does not exist"
        if cls is VisionConfig:
            # train/eval set method.name=ce first, as the CLI does.
            pre = ["method.name=ce"] if path[0] in ("train", "eval") else []
            load_vision_config(REPO / recipe, [*pre, *overrides])
        else:
            load_config(cls, REPO / recipe, overrides)


def _quick_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.quick]


@pytest.mark.parametrize("block", _quick_blocks(), ids=lambda b: b.guide)
def test_quick_block_is_self_contained(block: Block) -> None:
    guide_text = (GUIDES_DIR / block.guide).read_text()
    assert re.search(r"Measured: \*\*\d[^*]*(s|min)\*\*", guide_text), (
        f"{block.guide}: state the quick block's measured wall time as 'Measured: **N s**'"
    )
    assert re.search(r"^export .*\bOMP_NUM_THREADS=1\b", block.text, re.M), (
        f"{block.guide}: the quick block must export OMP_NUM_THREADS=1"
    )
    outputs: list[str] = []
    for cmd in commands(block):
        args = cmd.logitkd_args()
        if args is None:
            continue
        path = subcommand_path(args)
        ns = parse(args)
        if path == ["lm", "make-tiny"]:
            outputs.append(str(ns.out_dir))
        outputs += [
            str(getattr(ns, f[2:])) for f in _FLAG_VALUES_AS_PATHS if getattr(ns, f[2:], None)
        ]
        for kv in getattr(ns, "overrides", None) or []:
            key, value = kv.split("=", 1)
            if key in _OUTPUT_KEYS:
                outputs.append(value)
    assert outputs, f"{block.guide}: the quick block writes nowhere?"
    scratch = {o.split("/")[1] for o in outputs if o.startswith(SCRATCH_PREFIX)}
    assert len(scratch) == 1 and all(o.startswith(SCRATCH_PREFIX) for o in outputs), (
        f"{block.guide}: quick-block outputs must share one {SCRATCH_PREFIX}* folder: {outputs}"
    )
    assert f"rm -rf runs/{scratch.pop()}" in block.text, (
        f"{block.guide}: the quick block must start clean (rm -rf its scratch folder)"
    )


def _materialise(block: Block, root: Path) -> None:
    """Create the block's ``mkdir -p`` folders, write its ``cat > FILE`` heredocs and run its
    ``python -`` heredocs under ``root``, which gets a ``configs`` link to the repository's."""
    (root / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    for cmd in commands(block):
        if cmd.tokens[:2] == ("mkdir", "-p"):
            for d in cmd.tokens[2:]:
                (root / d).mkdir(parents=True, exist_ok=True)
    _, docs = split_heredocs(block)
    for doc in docs:
        if doc.target is not None:
            (root / doc.target).parent.mkdir(parents=True, exist_ok=True)
            (root / doc.target).write_text(doc.body)
            if doc.target.endswith((".yaml", ".yml")):
                assert isinstance(yaml.safe_load(doc.body), dict), doc.target
        elif re.match(r"\s*python3?\s+-\s", doc.opener):
            compile(doc.body, f"{block.guide} heredoc", "exec")
            subprocess.run(
                [sys.executable, "-"], input=doc.body, text=True, cwd=root, check=True, timeout=60
            )
        else:
            pytest.fail(f"{block.guide}: unexpected heredoc {doc.opener!r}")


@pytest.fixture
def in_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.mark.parametrize("block", _quick_blocks(), ids=lambda b: b.guide)
def test_quick_block_files_and_sweeps_validate(block: Block, in_dir: Path) -> None:
    _materialise(block, in_dir)
    from logitkd.lm.data import read_instruction_jsonl

    for path in in_dir.glob("runs/**/*.jsonl"):
        assert read_instruction_jsonl(path), f"{block.guide}: {path.name} holds no records"
    for cmd in commands(block):
        args = cmd.logitkd_args()
        if args is None:
            continue
        ns = parse(args)
        if getattr(ns, "lm_action", None) not in (None, "make-tiny"):
            # data files the block points at must be ones it wrote
            for kv in ns.overrides:
                key, value = kv.split("=", 1)
                if key in ("data.train_file", "data.test_files"):
                    for f in value.strip("[]").split(","):
                        assert (in_dir / f).is_file(), f"{cmd}\n{f} is not written by the block"
        if args[0] == "sweep":
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main([*args, "--dry-run"])
            assert code == 0, f"{cmd}\n--dry-run failed:\n{out.getvalue()}{err.getvalue()}"
            assert "planned-new" in out.getvalue(), out.getvalue()
