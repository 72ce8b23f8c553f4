"""The multi-process launcher fixture: a teardown hang or failure after the work is done is
tolerated (and the leftover processes killed), a hang or failure before it is a test failure."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest


def _worker(flag: Path, write: bool, then: str) -> list[str]:
    """A process that may write its result, then sleeps / exits with ``then``; ``flag``'s path is
    on its command line (the marker)."""
    code = (
        "import pathlib, sys, time\n"
        f"if {write}: pathlib.Path({str(flag)!r}).write_text('done')\n"
        f"{then}\n"
    )
    return [sys.executable, "-c", code, str(flag)]


def _alive(marker: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_hang_after_the_results_is_killed_and_tolerated(tmp_path: Path, launch_ranks) -> None:
    flag = tmp_path / "rank0.json"
    res = launch_ranks(_worker(flag, True, "time.sleep(60)"), dict(os.environ), flag.is_file, 3,
                       str(flag))  # fmt: skip
    assert res.returncode is None and flag.read_text() == "done"


def test_teardown_hang_costs_the_grace_not_the_timeout(tmp_path: Path, launch_ranks) -> None:
    flag = tmp_path / "rank0.json"
    start = time.monotonic()
    res = launch_ranks(_worker(flag, True, "time.sleep(120)"), dict(os.environ), flag.is_file,
                       120, str(flag), grace=1)  # fmt: skip
    assert res.returncode is None and time.monotonic() - start < 30
    assert not _alive(str(flag))


def test_failure_after_the_results_is_tolerated(tmp_path: Path, launch_ranks) -> None:
    flag = tmp_path / "rank0.json"
    res = launch_ranks(_worker(flag, True, "sys.exit(134)"), dict(os.environ), flag.is_file, 30,
                       str(flag))  # fmt: skip
    assert res.returncode is None


def test_orphan_holding_the_output_is_killed(tmp_path: Path, launch_ranks) -> None:
    """Like torchrun giving up on a hung rank: the launcher exits, a child it started in a
    session of its own keeps running (and holds stdout). The call returns and kills it."""
    flag = tmp_path / "rank0.json"
    child = _worker(flag, True, "time.sleep(120)")
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen({child!r}, start_new_session=True)\n"
        f"while not __import__('pathlib').Path({str(flag)!r}).exists(): time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    start = time.monotonic()
    res = launch_ranks([sys.executable, "-c", code], dict(os.environ), flag.is_file, 60, str(flag))
    assert res.returncode is None and time.monotonic() - start < 30
    assert "left running" in res.stderr
    time.sleep(0.2)
    assert not _alive(str(flag))


@pytest.mark.parametrize("then", ["time.sleep(60)", "sys.exit(3)"])
def test_hang_or_failure_before_the_results_fails(tmp_path: Path, launch_ranks, then) -> None:
    flag = tmp_path / "rank0.json"
    with pytest.raises(pytest.fail.Exception, match="before the ranks finished"):
        launch_ranks(_worker(flag, False, then), dict(os.environ), flag.is_file, 2, str(flag))


def test_normal_exit_passes_the_output_through(tmp_path: Path, launch_ranks) -> None:
    cmd = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    res = launch_ranks(cmd, dict(os.environ), lambda: False, 30, str(tmp_path))
    assert (res.returncode, res.stdout.strip(), res.stderr.strip()) == (0, "out", "err")
