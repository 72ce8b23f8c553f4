"""Multi-seed sweeps: a grid of methods × hyper-parameters × seeds, run, resumed and tabulated.

A sweep is described by a YAML grid file next to a base config (``logitkd sweep --base CONFIG
--grid GRID.yaml --out DIR``)::

    seeds: [0, 1, 2]                  # required; each seed is passed as `seed=<s>`
    baseline: kd                      # the method (or cell group) the others are tested against
    methods:                          # name -> overrides; a list value is swept within the method
      student: {method.name: ce}
      kd:      {method.name: kd}
      loca:    {method.name: kd, method.loca_alpha: [0.9, 0.95, 0.99]}
    grid:                             # swept for every method (cartesian product)
      method.temperature: [4]
    metrics: [best_top1, last_top1]   # optional: keys (or dotted paths) of the summary file

A list value always means "sweep over these values"; to set a config key to a literal list,
wrap it in a one-element list (``schedule.milestones: [[150, 180, 210]]``).

The contract with a trainer (:data:`FAMILY_DEFAULTS`; every part can be set in the grid file):

* ``command`` is one command (a list of arguments) or a list of commands run in order. In an
  argument, ``{python}`` is this Python, ``{base}`` the base config, ``{cell_dir}`` the cell's
  folder, ``{seed}`` and ``{name}`` the seed and cell name; the whole argument ``{overrides}``
  expands into one ``key=value`` argument per override (the seed last), and ``{resume}`` into
  ``resume_args`` when the cell already holds a checkpoint (``checkpoint_glob``), else nothing.
  Vision: ``{python} -m logitkd distill --config {base} {overrides} run_dir={cell_dir}
  {resume}`` with ``--resume`` when ``last.pt`` exists. LM: ``logitkd lm distill`` then ``logitkd
  lm evaluate``, both with ``train.output_dir={cell_dir}``, resuming with
  ``train.resume_from_checkpoint=last`` when a ``checkpoint-*`` folder exists;
* a finished run leaves ``{cell_dir}/<summary_file>`` (vision ``summary.json``, LM
  ``eval.json``): a JSON object holding every metric as a finite number, at its key or at a
  dotted path (vision ``best_top1``/``last_top1``; LM grids name theirs, e.g.
  ``sets.test.greedy.mean``), and optionally ``seed`` (checked when present).

The sweep keeps its own record ``{cell_dir}/sweep_cell.json`` (config hash, overrides, status,
attempts, errors). A cell is *finished* when its summary exists and its record's config hash
matches; finished cells are skipped, a cell with a checkpoint is resumed, a crashed cell is retried
``retries`` times and, if it still fails, reported in the table — never silently dropped.
Results are grouped by the hash of the configuration without the seed, so runs with different
configurations are never averaged together. The grid is validated before anything runs.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import importlib
import itertools
import json
import math
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from logitkd.analysis.stats import PairedComparison, SeedSummary, compare_to_baseline, summarize

__all__ = [
    "FAMILY_DEFAULTS",
    "Cell",
    "CellFailed",
    "CellResult",
    "FamilyDefaults",
    "GridSpec",
    "GroupRow",
    "SubprocessRunner",
    "SweepError",
    "SweepResult",
    "config_validator",
    "expand_cells",
    "format_value",
    "load_grid",
    "parse_grid",
    "run_sweep",
    "write_reports",
]

SUMMARY_FILE = "summary.json"
RECORD_FILE = "sweep_cell.json"
LOG_FILE = "sweep.log"

Command = tuple[str, ...]


@dataclass(frozen=True)
class FamilyDefaults:
    """What a family's trainer CLI expects (the sweep contract; every field can be set in the
    grid file). ``commands`` run one after the other in the cell's folder."""

    commands: tuple[Command, ...]
    metrics: tuple[str, ...]
    summary_file: str
    checkpoint_glob: str
    resume_args: tuple[str, ...]


# The vision trainer (``logitkd distill``) writes run_dir/summary.json with best_top1/last_top1
# and run_dir/last.pt, and continues a run with --resume. The LM trainer trains with
# ``logitkd lm distill`` into train.output_dir (HF checkpoint-* folders, resumed by
# train.resume_from_checkpoint=last) and ``logitkd lm evaluate`` writes eval.json, whose Rouge-L
# sits under sets.<test-file>.<mode>.mean — so LM grids must name their metric paths.
FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "vision": FamilyDefaults(
        commands=(
            (
                "{python}", "-m", "logitkd", "distill", "--config", "{base}",
                "{overrides}", "run_dir={cell_dir}", "{resume}",
            ),
        ),
        metrics=("best_top1", "last_top1"),
        summary_file="summary.json",
        checkpoint_glob="last.pt",
        resume_args=("--resume",),
    ),
    "lm": FamilyDefaults(
        commands=(
            (
                "{python}", "-m", "logitkd", "lm", "distill", "--config", "{base}",
                "{overrides}", "train.output_dir={cell_dir}", "{resume}",
            ),
            (
                "{python}", "-m", "logitkd", "lm", "evaluate", "--config", "{base}",
                "{overrides}", "train.output_dir={cell_dir}",
            ),
        ),
        metrics=(),
        summary_file="eval.json",
        checkpoint_glob="checkpoint-*",
        resume_args=("train.resume_from_checkpoint=last",),
    ),
}  # fmt: skip
GENERIC_DEFAULTS = FamilyDefaults((), (), SUMMARY_FILE, "*.pt", ("--resume",))
# Config dataclass of each family, imported lazily by name (the trainers may not exist yet).
CONFIG_CLASSES: dict[str, str] = {
    "vision": "logitkd.vision.config:VisionConfig",
    "lm": "logitkd.lm.config:LMConfig",
}
FAMILIES = ("vision", "lm")

_GRID_KEYS = (
    "seeds",
    "seed_key",
    "baseline",
    "metrics",
    "methods",
    "grid",
    "family",
    "command",
    "resume_args",
    "checkpoint_glob",
    "summary_file",
    "timeout_s",
    "plot_exclude",
)
_WHOLE_TOKENS = ("{overrides}", "{resume}")
_INLINE_FIELDS = ("{python}", "{base}", "{cell_dir}", "{seed}", "{name}")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


class SweepError(ValueError):
    """A grid, base config or output folder that the sweep refuses before running anything."""


class CellFailed(RuntimeError):
    """Raised by a runner when one attempt at a cell fails (the message is reported)."""


# --------------------------------------------------------------------------------------------
# Grid file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSpec:
    """A parsed grid file (see the module docstring for the format).

    ``methods[name]`` maps each config key to the list of values to sweep (a fixed value is a
    one-element list); ``grid`` is swept for every method.
    """

    seeds: tuple[int, ...]
    methods: dict[str, dict[str, tuple[Any, ...]]]
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    metrics: tuple[str, ...] | None = None
    baseline: str | None = None
    family: str | None = None
    seed_key: str = "seed"
    command: tuple[Command, ...] | None = None
    resume_args: tuple[str, ...] | None = None
    checkpoint_glob: str | None = None
    summary_file: str | None = None
    timeout_s: float | None = None
    plot_exclude: tuple[str, ...] = ()  # methods left out of the plots (never out of the tables)

    def with_defaults(self, family: str | None) -> GridSpec:
        """Fill the unset trainer-contract fields from :data:`FAMILY_DEFAULTS` (or the generic
        ``summary.json`` / ``*.pt`` / ``--resume`` without a family)."""
        d = FAMILY_DEFAULTS[family] if family else GENERIC_DEFAULTS
        return dataclasses.replace(
            self,
            family=family,
            command=self.command or d.commands or None,
            metrics=self.metrics or d.metrics or None,
            summary_file=self.summary_file or d.summary_file,
            checkpoint_glob=self.checkpoint_glob or d.checkpoint_glob,
            resume_args=self.resume_args if self.resume_args is not None else d.resume_args,
        )


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(options)}"


def _check_key(where: str, key: Any) -> str:
    if not isinstance(key, str) or not re.fullmatch(
        r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*", key
    ):
        raise SweepError(f"{where}: {key!r} is not a config key (expected e.g. 'optim.lr')")
    return key


def _sweep_values(where: str, value: Any) -> tuple[Any, ...]:
    values = tuple(value) if isinstance(value, list) else (value,)
    if not values:
        raise SweepError(f"{where}: an empty list sweeps over nothing")
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise SweepError(f"{where}: value {v} is not finite")
    if len({format_value(v) for v in values}) != len(values):
        raise SweepError(f"{where}: repeated values {list(values)}")
    return values


def _string_list(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SweepError(f"{where} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _optional_str(where: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise SweepError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _resume_args(where: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return () if value == [] else _string_list(where, value)


def _commands(where: str, value: Any) -> tuple[Command, ...]:
    """A command (a list of strings) or several (a list of such lists, run in order)."""
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return tuple(_string_list(f"{where}[{i}]", v) for i, v in enumerate(value))
    return (_string_list(where, value),)


def parse_grid(data: Mapping[str, Any], source: str = "grid") -> GridSpec:
    """Check and parse a grid mapping (the contents of a grid YAML file)."""
    if not isinstance(data, Mapping):
        raise SweepError(f"{source}: a grid must be a mapping, got {type(data).__name__}")
    for key in data:
        if key not in _GRID_KEYS:
            raise SweepError(f"{source}: unknown grid key {key!r}{_suggest(str(key), _GRID_KEYS)}")
    seeds = data.get("seeds")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise SweepError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{source}: 'seeds' has repeats: {seeds}")
    seed_key = _check_key(f"{source}: seed_key", data.get("seed_key", "seed"))

    grid_raw = data.get("grid") or {}
    if not isinstance(grid_raw, Mapping):
        raise SweepError(f"{source}: 'grid' must be a mapping of key: [values]")
    grid = {
        _check_key(f"{source}: grid", k): _sweep_values(f"{source}: grid.{k}", v)
        for k, v in grid_raw.items()
    }
    methods_raw = data.get("methods")
    if methods_raw is None:
        methods_raw = {"default": {}}
    if not isinstance(methods_raw, Mapping) or not methods_raw:
        raise SweepError(f"{source}: 'methods' must be a non-empty mapping name -> overrides")
    methods: dict[str, dict[str, tuple[Any, ...]]] = {}
    for name, block in methods_raw.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise SweepError(
                f"{source}: method name {name!r} must be letters, digits and ._+- only"
            )
        if block is None:
            block = {}
        if not isinstance(block, Mapping):
            raise SweepError(f"{source}: methods.{name} must be a mapping of overrides")
        parsed = {
            _check_key(f"{source}: methods.{name}", k): _sweep_values(
                f"{source}: methods.{name}.{k}", v
            )
            for k, v in block.items()
        }
        for k in parsed:
            if k in grid:
                raise SweepError(f"{source}: '{k}' is set both in methods.{name} and in grid")
            if k == seed_key:
                raise SweepError(f"{source}: methods.{name} sets the seed key; use 'seeds'")
        methods[name] = parsed
    if seed_key in grid:
        raise SweepError(f"{source}: grid sets the seed key '{seed_key}'; use 'seeds'")

    family = data.get("family")
    if family is not None and family not in (*FAMILIES, "none"):
        raise SweepError(f"{source}: family must be one of {[*FAMILIES, 'none']}, got {family!r}")
    metrics = data.get("metrics")
    command = data.get("command")
    timeout = data.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise SweepError(f"{source}: timeout_s must be a positive number, got {timeout!r}")
    baseline = data.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise SweepError(f"{source}: baseline must be a method name, got {baseline!r}")
    plot_exclude = _string_list(f"{source}: plot_exclude", data.get("plot_exclude") or [])
    for name in plot_exclude:
        if name not in methods:
            raise SweepError(
                f"{source}: plot_exclude names {name!r}, not a method of the grid"
                f"{_suggest(name, list(methods))}"
            )
    spec = GridSpec(
        seeds=tuple(seeds),
        methods=methods,
        grid=grid,
        metrics=None if metrics is None else _string_list(f"{source}: metrics", metrics),
        baseline=baseline,
        family=None if family == "none" else family,
        seed_key=seed_key,
        command=None if command is None else _commands(f"{source}: command", command),
        resume_args=_resume_args(f"{source}: resume_args", data.get("resume_args")),
        checkpoint_glob=_optional_str(f"{source}: checkpoint_glob", data.get("checkpoint_glob")),
        summary_file=_optional_str(f"{source}: summary_file", data.get("summary_file")),
        timeout_s=None if timeout is None else float(timeout),
        plot_exclude=plot_exclude,
    )
    if spec.command is not None:
        check_command_template(spec.command)
    return spec


def load_grid(path: str | Path) -> GridSpec:
    """Read and parse a grid YAML file (:func:`parse_grid`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from err
    return parse_grid(data, source=str(path))


def check_command_template(commands: Sequence[Sequence[str]]) -> None:
    """Templates must pass the overrides and the cell directory, and use known fields only."""
    if not commands:
        raise SweepError("command: at least one command is needed")
    tokens = [t for cmd in commands for t in cmd]
    if "{overrides}" not in tokens:
        raise SweepError("command template must contain the argument '{overrides}'")
    if not any("{cell_dir}" in t for t in tokens):
        raise SweepError("command template must pass '{cell_dir}' (e.g. 'run_dir={cell_dir}')")
    for token in tokens:
        if token not in _WHOLE_TOKENS:
            rest = token
            for f in _INLINE_FIELDS:
                rest = rest.replace(f, "")
            if re.search(r"\{[A-Za-z_]+\}", rest):
                raise SweepError(
                    f"command template argument {token!r} uses an unknown field; known: "
                    f"{', '.join(_INLINE_FIELDS + _WHOLE_TOKENS)} ({{overrides}} and {{resume}} "
                    "must be whole arguments)"
                )


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Render an override value so that ``logitkd.config.parse_override`` reads it back equal.

    Strings that YAML would read as themselves stay bare; everything else (numbers, booleans,
    null, lists, mappings, strings such as ``"1.0"`` or ``"true"``) is written as JSON, which
    is valid YAML.
    """
    if isinstance(value, str):
        try:
            same = value.strip() == value and value != "" and yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        return value if same else json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"override value {value} is not finite")
    return json.dumps(value)


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a method's overrides (incl. swept values) and a seed.

    ``group`` names the configuration without the seed; ``swept`` holds the keys that vary within
    the grid (for tables and plots). ``group_hash`` hashes base config + overrides (no seed);
    ``config_hash`` also covers the seed.
    """

    method: str
    group: str
    seed: int
    overrides: tuple[tuple[str, Any], ...]
    swept: tuple[tuple[str, Any], ...]
    cell_dir: Path
    seed_key: str
    config_hash: str
    group_hash: str

    @property
    def name(self) -> str:
        return f"{self.group}/{self.seed_key}={self.seed}"

    def override_args(self) -> list[str]:
        """``key=value`` arguments for the trainer: the overrides, then the seed."""
        args = [f"{k}={format_value(v)}" for k, v in self.overrides]
        return [*args, f"{self.seed_key}={self.seed}"]


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dir_name(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=+,-]", "_", text)
    if len(safe) > 120:  # keep paths short; the hash keeps truncated names distinct
        safe = f"{safe[:100]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return safe


def read_base(base: str | Path | None) -> dict[str, Any]:
    """The base config as a dict (``_base_`` inheritance resolved); ``{}`` for ``None``."""
    if base is None:
        return {}
    from logitkd.config import read_yaml

    return read_yaml(base)


def expand_cells(spec: GridSpec, out_dir: str | Path, base: str | Path | None = None) -> list[Cell]:
    """All cells of the grid: methods × (their swept values × ``grid``) × seeds.

    Directories are ``{out_dir}/runs/{group}/{seed_key}={seed}`` where ``group`` is the method
    name followed by the swept ``key=value`` pairs. Raises :class:`SweepError` if two different
    configurations would share a directory name.
    """
    base_dict = read_base(base)
    out_dir = Path(out_dir)
    cells: list[Cell] = []
    names: dict[str, str] = {}
    for method, block in spec.methods.items():
        axes = {**block, **spec.grid}
        keys = list(axes)
        swept_keys = [k for k in keys if len(axes[k]) > 1 or k in spec.grid]
        for combo in itertools.product(*(axes[k] for k in keys)):
            overrides = tuple(zip(keys, combo))
            swept = tuple((k, v) for k, v in overrides if k in swept_keys)
            label = ",".join(f"{k}={format_value(v)}" for k, v in swept)
            group = _dir_name(f"{method}_{label}" if label else method)
            canon = sorted((k, format_value(v)) for k, v in overrides)
            group_hash = _hash({"base": base_dict, "overrides": canon})
            if names.setdefault(group, group_hash) != group_hash:
                raise SweepError(f"two configurations map to the run folder name {group!r}")
            for seed in spec.seeds:
                cells.append(
                    Cell(
                        method=method,
                        group=group,
                        seed=seed,
                        overrides=overrides,
                        swept=swept,
                        cell_dir=out_dir / "runs" / group / f"{spec.seed_key}={seed}",
                        seed_key=spec.seed_key,
                        config_hash=_hash({"group": group_hash, "seed": seed}),
                        group_hash=group_hash,
                    )
                )
    return cells


# --------------------------------------------------------------------------------------------
# Validation (before anything runs)
# --------------------------------------------------------------------------------------------

Validator = Callable[[Sequence[str]], None]


def _import_config_class(family: str) -> tuple[type | None, Callable[[Any], Any] | None]:
    """The family's config dataclass and its module's ``resolve_config`` (cross-field checks),
    or ``(None, None)`` when the module is not there."""
    module_name, _, attr = CONFIG_CLASSES[family].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return None, None  # the family's config module is not written yet
        raise
    return getattr(module, attr, None), getattr(module, "resolve_config", None)


def _yaml_key_check(base_dict: Mapping[str, Any], ignore: Sequence[str]) -> Validator:
    def check(overrides: Sequence[str]) -> None:
        from logitkd.config import ConfigError, parse_override

        for text in overrides:
            key, _ = parse_override(text)
            if key in ignore:
                continue
            node: Any = base_dict
            for depth, part in enumerate(key.split(".")):
                if not isinstance(node, Mapping) or part not in node:
                    options = list(node) if isinstance(node, Mapping) else []
                    where = ".".join(key.split(".")[:depth]) or "the top level"
                    raise ConfigError(
                        f"unknown config key '{key}': '{part}' is not in the base config at "
                        f"{where}{_suggest(part, options) if options else ''}"
                    )
                node = node[part]

    return check


def config_validator(
    family: str | None,
    base: str | Path | None,
    *,
    extra: Sequence[str] = (),
    seed_key: str = "seed",
) -> tuple[Validator, str]:
    """The default ``validate(overrides)`` hook and a one-line description of what it checks.

    For ``vision``/``lm``, when the family's config dataclass is importable
    (:data:`CONFIG_CLASSES`), the base config plus the overrides plus ``extra`` (the ``key=value``
    arguments of the command template, e.g. ``run_dir=…``) must load through
    :func:`logitkd.config.load_config` — unknown keys and wrong types fail — and pass the
    module's ``resolve_config`` when it has one (cross-field rules). Otherwise every
    override key (except the seed) must exist in the base YAML (a weaker check).
    """
    from logitkd.config import load_config

    base_dict = read_base(base)
    cls, resolve = _import_config_class(family) if family in CONFIG_CLASSES else (None, None)
    if cls is not None:

        def check(overrides: Sequence[str]) -> None:
            cfg = load_config(cls, base, [*overrides, *extra])
            if resolve is not None:
                resolve(cfg)

        return check, f"overrides load into {CONFIG_CLASSES[family]}"  # type: ignore[index]
    why = f"{CONFIG_CLASSES[family]} is not importable" if family in CONFIG_CLASSES else "no family"
    return _yaml_key_check(base_dict, [seed_key]), f"override keys exist in the base YAML ({why})"


def template_assignments(commands: Sequence[Sequence[str]]) -> list[str]:
    """The literal ``key=value`` arguments of the command templates (e.g. ``run_dir={cell_dir}``)."""
    found = [
        t.replace("{cell_dir}", "/tmp/cell").replace("{seed}", "0").replace("{name}", "cell")
        for cmd in commands
        for t in cmd
        if t not in _WHOLE_TOKENS and _ASSIGNMENT_RE.match(t)
    ]
    return list(dict.fromkeys(found))


def validate_cells(cells: Sequence[Cell], validator: Validator) -> None:
    """Run ``validator`` on every distinct configuration; raise one :class:`SweepError` listing
    every problem, before anything runs."""
    problems: dict[str, list[str]] = {}
    seen: set[str] = set()
    for cell in cells:
        if cell.group in seen:
            continue
        seen.add(cell.group)
        try:
            validator(cell.override_args())
        except (ValueError, TypeError, KeyError) as err:
            problems.setdefault(str(err), []).append(cell.group)
    if problems:
        lines = [f"  {msg}  (in: {', '.join(groups)})" for msg, groups in problems.items()]
        raise SweepError(
            "the grid does not fit the base config; nothing was run:\n" + "\n".join(lines)
        )


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------

Runner = Callable[[Cell, bool], None]


def render_command(
    template: Sequence[str],
    cell: Cell,
    base: str | Path | None,
    resume_args: Sequence[str],
    resume: bool,
) -> list[str]:
    """The argument list of one command for one cell (see the module docstring for the fields)."""
    out: list[str] = []
    for token in template:
        if token == "{overrides}":
            out.extend(cell.override_args())
        elif token == "{resume}":
            out.extend(resume_args if resume else ())
        else:
            out.append(
                token.replace("{python}", sys.executable)
                .replace("{base}", "" if base is None else str(base))
                .replace("{cell_dir}", str(cell.cell_dir))
                .replace("{seed}", str(cell.seed))
                .replace("{name}", cell.name)
            )
    return out


@dataclass
class SubprocessRunner:
    """Run each cell's commands as subprocesses, in order; output goes to ``sweep.log``.

    When resuming and no command has a ``{resume}`` argument, ``resume_args`` are appended to
    the first command.
    """

    commands: Sequence[Sequence[str]]
    base: str | Path | None
    resume_args: Sequence[str] = ("--resume",)
    timeout_s: float | None = None
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.commands and isinstance(self.commands[0], str):
            self.commands = [list(self.commands)]  # type: ignore[list-item]
        check_command_template(self.commands)

    def render(self, cell: Cell, resume: bool) -> list[list[str]]:
        cmds = [render_command(c, cell, self.base, self.resume_args, resume) for c in self.commands]
        if resume and not any("{resume}" in c for c in self.commands):
            cmds[0].extend(self.resume_args)
        return cmds

    def __call__(self, cell: Cell, resume: bool) -> None:
        log_path = cell.cell_dir / LOG_FILE
        for cmd in self.render(cell, resume):
            with log_path.open("a") as log:
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                try:
                    proc = subprocess.run(
                        cmd,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        timeout=self.timeout_s,
                        env=None if self.env is None else dict(self.env),
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    raise CellFailed(
                        f"timed out after {self.timeout_s} s (log: {log_path})"
                    ) from None
                except OSError as err:
                    raise CellFailed(f"could not start {cmd[0]!r}: {err}") from err
            if proc.returncode != 0:
                raise CellFailed(
                    f"`{' '.join(cmd[:4])} …` exit code {proc.returncode}; last output: "
                    f"{_tail(log_path)}"
                )


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class CellResult:
    """What happened to one cell: ``status`` is ``done``, ``skipped`` (finished earlier),
    ``crashed`` (every attempt failed), ``invalid`` (finished, but its summary is unusable),
    ``unfinished`` (``collect_only``: not run to the end) or, in a dry run, ``planned-new`` /
    ``planned-resume``."""

    cell: Cell
    status: str
    attempts: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


def _read_record(cell: Cell) -> dict[str, Any] | None:
    path = cell.cell_dir / RECORD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(cell: Cell, **fields: Any) -> None:
    record = {
        "config_hash": cell.config_hash,
        "group_hash": cell.group_hash,
        "method": cell.method,
        "group": cell.group,
        "seed": cell.seed,
        "overrides": cell.override_args(),
        **fields,
    }
    cell.cell_dir.mkdir(parents=True, exist_ok=True)
    tmp = cell.cell_dir / (RECORD_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(cell.cell_dir / RECORD_FILE)


def _finished(cell: Cell, summary_file: str) -> bool:
    """A summary exists and the last attempt did not fail (a run may crash after writing it)."""
    record = _read_record(cell) or {}
    return (cell.cell_dir / summary_file).is_file() and record.get("status") != "crashed"


def _has_checkpoint(cell: Cell, pattern: str) -> bool:
    return cell.cell_dir.is_dir() and any(cell.cell_dir.glob(pattern))


def check_out_dir(cells: Sequence[Cell]) -> None:
    """Refuse cell folders that hold another configuration's run (or a run of unknown origin)."""
    bad: list[str] = []
    for cell in cells:
        record = _read_record(cell)
        if record is None:
            if cell.cell_dir.is_dir() and any(cell.cell_dir.iterdir()):
                bad.append(f"{cell.cell_dir}: not empty and has no {RECORD_FILE}")
        elif record.get("config_hash") != cell.config_hash:
            bad.append(
                f"{cell.cell_dir}: was run with another configuration "
                f"(hash {record.get('config_hash')!r}, now {cell.config_hash!r})"
            )
    if bad:
        raise SweepError(
            "the output folder holds runs that do not match this grid and base config "
            "(use another --out, or delete them); nothing was run:\n  " + "\n  ".join(bad)
        )


def _lookup(summary: Mapping[str, Any], name: str) -> Any:
    """``summary[name]``, or a dotted path into nested objects (``sets.test.greedy.mean``)."""
    if name in summary:
        return summary[name]
    node: Any = summary
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _collect_metrics(
    cell: Cell, spec_metrics: Sequence[str], summary_file: str
) -> tuple[dict[str, float], str]:
    path = cell.cell_dir / summary_file
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        return {}, f"{summary_file} unreadable: {err}"
    if not isinstance(summary, dict):
        return {}, f"{summary_file} is not a JSON object"
    if "seed" in summary and summary["seed"] != cell.seed:
        return {}, f"{summary_file} says seed {summary['seed']!r}, the cell's seed is {cell.seed}"
    metrics: dict[str, float] = {}
    for name in spec_metrics:
        value = _lookup(summary, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            keys = ", ".join(sorted(summary))
            return {}, f"{summary_file} has no finite number '{name}' (keys: {keys})"
        metrics[name] = float(value)
    return metrics, ""


def _finished_result(cell: Cell, metrics: Sequence[str], summary_file: str) -> CellResult:
    """A cell finished earlier: ``skipped`` with its metrics, or ``invalid`` with the reason."""
    values, err = _collect_metrics(cell, metrics, summary_file)
    return CellResult(cell, "skipped" if not err else "invalid", 0, values, err)


def _run_one(
    cell: Cell,
    runner: Runner,
    retries: int,
    checkpoint_glob: str,
    summary_file: str,
    metrics: Sequence[str],
    log: Callable[[str], None],
) -> CellResult:
    summary_path = cell.cell_dir / summary_file
    if _finished(cell, summary_file):
        return _finished_result(cell, metrics, summary_file)
    record = _read_record(cell) or {}
    errors: list[str] = list(record.get("errors", []))
    attempts = 0
    for attempt in range(1, retries + 2):
        attempts = attempt
        if summary_path.is_file():  # left by a failed attempt: keep it aside, never trust it
            summary_path.replace(summary_path.with_name(summary_path.name + ".stale"))
        resume = _has_checkpoint(cell, checkpoint_glob)
        _write_record(cell, status="running", attempts=attempt, errors=errors)
        log(f"[{cell.name}] attempt {attempt}/{retries + 1}{' (resume)' if resume else ''}")
        try:
            runner(cell, resume)
            if not summary_path.is_file():
                raise CellFailed(f"the run finished without writing {summary_file}")
        except Exception as err:  # any runner failure is recorded, never lost
            message = f"attempt {attempt}: {type(err).__name__}: {err}"
            errors.append(message)
            log(f"[{cell.name}] failed: {message}")
            continue
        values, err_text = _collect_metrics(cell, metrics, summary_file)
        status = "done" if not err_text else "invalid"
        _write_record(cell, status=status, attempts=attempt, errors=errors)
        return CellResult(cell, status, attempt, values, err_text)
    _write_record(cell, status="crashed", attempts=attempts, errors=errors)
    return CellResult(cell, "crashed", attempts, {}, errors[-1] if errors else "crashed")


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@dataclass
class GroupRow:
    """One configuration (all seeds) in the results table."""

    group: str
    method: str
    swept: tuple[tuple[str, Any], ...]
    group_hash: str
    cells: list[CellResult]
    summaries: dict[str, SeedSummary]
    by_seed: dict[str, dict[int, float]]
    comparisons: dict[str, PairedComparison | None]

    @property
    def n_ok(self) -> int:
        return sum(r.ok for r in self.cells)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.cells if not r.ok]


@dataclass
class SweepResult:
    cells: list[CellResult]
    rows: list[GroupRow]
    metrics: tuple[str, ...]
    baseline: str | None
    dry_run: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    plot_exclude: tuple[str, ...] = ()  # methods not drawn (a diverged one flattens the rest)

    @property
    def failed(self) -> list[CellResult]:
        return [r for r in self.cells if not r.ok and not r.status.startswith("planned")]


def resolve_baseline(cells: Sequence[Cell], name: str | None) -> str | None:
    """The group named by ``name``: a group name, or a method with exactly one configuration."""
    if name is None:
        return None
    groups = list(dict.fromkeys(c.group for c in cells))
    if name in groups:
        return name
    of_method = list(dict.fromkeys(c.group for c in cells if c.method == name))
    if len(of_method) == 1:
        return of_method[0]
    if of_method:
        raise SweepError(
            f"baseline {name!r} has {len(of_method)} configurations ({', '.join(of_method)}); "
            "name one of them"
        )
    raise SweepError(
        f"baseline {name!r} is not a method or cell group of the grid{_suggest(name, groups)}"
    )


def build_rows(
    results: Sequence[CellResult], metrics: Sequence[str], baseline_group: str | None
) -> list[GroupRow]:
    """Group cell results by configuration (one group = one config hash without the seed; never
    across configurations), summarise each metric and pair it with the baseline by seed."""
    grouped: dict[str, list[CellResult]] = {}
    for r in results:
        grouped.setdefault(r.cell.group, []).append(r)
    rows: list[GroupRow] = []
    for group, members in grouped.items():
        first = members[0].cell
        hashes = {r.cell.group_hash for r in members}
        if len(hashes) != 1:  # expand_cells guarantees one config per group; never mix them
            raise SweepError(f"group {group!r} holds {len(hashes)} different configurations")
        group_hash = first.group_hash
        by_seed = {m: {r.cell.seed: r.metrics[m] for r in members if r.ok} for m in metrics}
        summaries = {m: summarize(list(by_seed[m].values())) for m in metrics}
        rows.append(
            GroupRow(
                first.group,
                first.method,
                first.swept,
                group_hash,
                list(members),
                summaries,
                by_seed,
                {},
            )
        )
    base_row = next((row for row in rows if row.group == baseline_group), None)
    for row in rows:
        for m in metrics:
            if base_row is None or row is base_row:
                row.comparisons[m] = None
            else:
                row.comparisons[m] = compare_to_baseline(row.by_seed[m], base_row.by_seed[m])
    return rows


def _decimals(rows: Sequence[GroupRow], metric: str) -> int:
    means = [abs(r.summaries[metric].mean) for r in rows if r.summaries[metric].n]
    return 2 if means and max(means) > 1.5 else 4


def _num(x: float, decimals: int) -> str:
    return "–" if not math.isfinite(x) else f"{x:.{decimals}f}"


def _p(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def markdown_tables(result: SweepResult) -> str:
    """One Markdown table per metric, then the failed cells (each with its error)."""
    lines: list[str] = []
    for metric in result.metrics:
        d = _decimals(result.rows, metric)
        lines += [
            f"### {metric}",
            "",
            "| config | runs ok | mean ± std | 95% CI | Δ vs baseline | paired t p | Wilcoxon p | seeds paired |",
            "|---|---|---|---|---|---|---|---|",
        ]
        notes: list[str] = []
        for row in result.rows:
            s = row.summaries[metric]
            c = row.comparisons[metric]
            label = row.group + (" (baseline)" if row.group == result.baseline else "")
            mean_std = f"{_num(s.mean, d)} ± {_num(s.std, d)}"
            ci = (
                "–"
                if not math.isfinite(s.ci_low)
                else f"[{_num(s.ci_low, d)}, {_num(s.ci_high, d)}]"
            )
            if c is None:
                diff = tp = wp = paired = "–"
            else:
                diff = "–" if not math.isfinite(c.mean_diff) else f"{c.mean_diff:+.{d}f}"
                tp, wp, paired = _p(c.t_pvalue), _p(c.w_pvalue), str(c.n)
                for kind, reason in (("t-test", c.t_reason), ("Wilcoxon", c.w_reason)):
                    if reason:
                        notes.append(f"- {row.group}, {kind}: {reason}")
            failed = f" ({len(row.failed)} failed)" if row.failed else ""
            lines.append(
                f"| {label} | {row.n_ok}/{len(row.cells)}{failed} | {mean_std} | {ci} | {diff} "
                f"| {tp} | {wp} | {paired} |"
            )
        lines.append("")
        if notes:
            lines += ["Notes:", *notes, ""]
    failed = result.failed
    if failed:
        lines += ["### Failed cells (left out of the statistics above)", ""]
        lines += ["| cell | status | attempts | error |", "|---|---|---|---|"]
        for r in failed:
            err = r.error.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.cell.name} | {r.status} | {r.attempts} | {err} |")
        lines.append("")
    return "\n".join(lines)


def _write_csvs(result: SweepResult, out_dir: Path) -> tuple[Path, Path]:
    groups_path = out_dir / "results.csv"
    with groups_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        header = ["group", "method", "swept", "group_hash", "runs", "runs_ok", "failed_seeds"]
        for m in result.metrics:
            header += [f"{m}_{k}" for k in ("n", "mean", "std", "ci_low", "ci_high")]
            header += [
                f"{m}_{k}"
                for k in ("diff", "t_stat", "t_p", "wilcoxon_stat", "wilcoxon_p", "n_paired")
            ]
        w.writerow(header)
        for row in result.rows:
            line: list[Any] = [
                row.group,
                row.method,
                json.dumps(dict(row.swept)),
                row.group_hash,
                len(row.cells),
                row.n_ok,
                " ".join(str(r.cell.seed) for r in row.failed),
            ]
            for m in result.metrics:
                s, c = row.summaries[m], row.comparisons[m]
                line += [s.n, s.mean, s.std, s.ci_low, s.ci_high]
                if c is None:
                    line += ["", "", "", "", "", ""]
                else:
                    line += [c.mean_diff, c.t_stat, c.t_pvalue, c.w_stat, c.w_pvalue, c.n]
            w.writerow(line)
    cells_path = out_dir / "cells.csv"
    with cells_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["group", "seed", "status", "attempts", *result.metrics, "error", "cell_dir"])
        for r in result.cells:
            w.writerow(
                [
                    r.cell.group,
                    r.cell.seed,
                    r.status,
                    r.attempts,
                    *(r.metrics.get(m, "") for m in result.metrics),
                    r.error,
                    str(r.cell.cell_dir),
                ]
            )
    return groups_path, cells_path


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_vs_parameter(result: SweepResult, out_dir: Path) -> list[Path]:
    """``{metric}_vs_{key}.png`` for every swept numeric key: one line per (method, other swept
    values), error bars = sample std over seeds; groups without the key (such as the baseline)
    are drawn as horizontal reference lines with a ± std band."""
    from logitkd.analysis.plots import errorbar_plot

    rows = [r for r in result.rows if r.method not in result.plot_exclude]
    keys = list(dict.fromkeys(k for row in rows for k, v in row.swept if _numeric(v)))
    paths: list[Path] = []
    for key in keys:
        for metric in result.metrics:
            series: dict[str, tuple[list[float], list[float], list[float]]] = {}
            refs: dict[str, tuple[float, float]] = {}
            for row in rows:
                s = row.summaries[metric]
                swept = dict(row.swept)
                if key in swept and _numeric(swept[key]):
                    others = ",".join(f"{k}={format_value(v)}" for k, v in row.swept if k != key)
                    label = f"{row.method} {others}".strip()
                    xs, ms, es = series.setdefault(label, ([], [], []))
                    if s.n:
                        xs.append(float(swept[key]))
                        ms.append(s.mean)
                        es.append(s.std)
                elif key not in swept and s.n:
                    refs[row.group] = (s.mean, s.std)
            series = {k: v for k, v in series.items() if v[0]}
            if not series:
                continue
            name = _dir_name(f"{metric}_vs_{key}") + ".png"
            paths.append(
                errorbar_plot(
                    series,
                    out_dir / "plots" / name,
                    xlabel=key,
                    ylabel=f"{metric} (mean ± std over seeds)",
                    title=f"{metric} vs {key}",
                    references=refs,
                )
            )
    return paths


def write_reports(
    result: SweepResult, out_dir: str | Path, title: str = "Sweep results"
) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv``, ``cells.csv`` and ``plots/*.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    header = [f"# {title}", ""]
    if result.baseline:
        header += [f"Baseline: `{result.baseline}`; paired tests over matched seeds.", ""]
    md.write_text("\n".join(header) + "\n" + markdown_tables(result))
    groups_csv, cells_csv = _write_csvs(result, out_dir)
    files = {"markdown": md, "csv": groups_csv, "cells_csv": cells_csv}
    for i, p in enumerate(plot_vs_parameter(result, out_dir)):
        files[f"plot{i}"] = p
    return files


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _tabulate(
    results: list[CellResult],
    metrics: Sequence[str],
    baseline_group: str | None,
    plot_exclude: tuple[str, ...],
    out_dir: str | Path,
) -> SweepResult:
    rows = build_rows(results, metrics, baseline_group)
    result = SweepResult(results, rows, tuple(metrics), baseline_group, plot_exclude=plot_exclude)
    result.files = write_reports(result, out_dir)
    return result


def run_sweep(
    spec: GridSpec,
    out_dir: str | Path,
    base: str | Path | None = None,
    *,
    family: str | None = None,
    runner: Runner | None = None,
    validator: Validator | None = None,
    baseline: str | None = None,
    retries: int = 1,
    jobs: int = 1,
    dry_run: bool = False,
    collect_only: bool = False,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Validate, run (or, with ``dry_run``, only plan) and tabulate a sweep.

    ``family`` (else ``spec.family``) picks the default command template, metrics and config
    validator. ``runner`` (default: :class:`SubprocessRunner` with the template) is called as
    ``runner(cell, resume)`` and must leave ``{cell_dir}/summary.json``. ``validator`` (default:
    :func:`config_validator`) gets each configuration's ``key=value`` overrides and raises on a
    bad one. Everything that can be checked — grid, base config, output folder, baseline — is
    checked before the first run. Reports are written unless ``dry_run``.

    ``collect_only`` runs nothing: it tabulates the finished cells (e.g. of a sweep still running,
    or one stopped at a deadline) and reports every other cell as ``unfinished``.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    family = family or spec.family
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    if base is not None and not Path(base).is_file():
        raise FileNotFoundError(f"base config not found: {base}")
    spec = spec.with_defaults(family)
    metrics = spec.metrics
    if not metrics:
        hint = " (for lm, e.g. sets.test.greedy.mean of eval.json)" if family == "lm" else ""
        raise SweepError(f"no metrics: set 'metrics' in the grid file{hint}")
    template = spec.command

    cells = expand_cells(spec, out_dir, base)
    same: dict[str, set[str]] = {}
    for c in cells:
        same.setdefault(c.group_hash, set()).add(c.group)
    for groups in same.values():
        if len(groups) > 1:
            log(f"note: {', '.join(sorted(groups))} are the same configuration (run separately)")
    if validator is None:
        extra = template_assignments(template) if template else []
        validator, what = config_validator(family, base, extra=extra, seed_key=spec.seed_key)
        log(f"validating {len({c.group for c in cells})} configurations: {what}")
    validate_cells(cells, validator)
    baseline_group = resolve_baseline(cells, baseline if baseline is not None else spec.baseline)
    check_out_dir(cells)
    if collect_only:
        results = [
            _finished_result(c, metrics, spec.summary_file)
            if _finished(c, spec.summary_file)
            else CellResult(c, "unfinished", 0, {}, "not finished (collect only)")
            for c in cells
        ]
        return _tabulate(results, metrics, baseline_group, spec.plot_exclude, out_dir)
    if runner is None:
        if template is None:
            raise SweepError("no runner: set 'command' in the grid file or pick a --family")
        runner = SubprocessRunner(template, base, spec.resume_args or (), spec.timeout_s)

    if dry_run:
        planned: list[CellResult] = []
        for cell in cells:
            if _finished(cell, spec.summary_file):
                status = "skipped"
            elif _has_checkpoint(cell, spec.checkpoint_glob):
                status = "planned-resume"
            else:
                status = "planned-new"
            planned.append(CellResult(cell, status))
            line = f"{status:15s} {cell.name}"
            if isinstance(runner, SubprocessRunner) and status != "skipped":
                for cmd in runner.render(cell, status == "planned-resume"):
                    line += "\n    " + " ".join(cmd)
            log(line)
        return SweepResult(planned, [], tuple(metrics), baseline_group, dry_run=True)

    lock = threading.Lock()

    def locked_log(msg: str) -> None:
        with lock:
            log(msg)

    def work(cell: Cell) -> CellResult:
        return _run_one(
            cell, runner, retries, spec.checkpoint_glob, spec.summary_file, metrics, locked_log
        )

    if jobs == 1:
        results = [work(c) for c in cells]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(work, cells))
    result = _tabulate(results, metrics, baseline_group, spec.plot_exclude, out_dir)
    for r in result.failed:
        log(f"FAILED {r.cell.name} ({r.status}, {r.attempts} attempts): {r.error}")
    return result
