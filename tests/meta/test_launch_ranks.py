"""The multi-process launcher fixture: a teardown hang after the work is done is tolerated,
a hang before it is a failure."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def _sleeper(flag: Path, write: bool) -> list[str]:
    code = f"import pathlib, time\nif {write}: pathlib.Path({str(flag)!r}).write_text('done')\n"
    return [sys.executable, "-c", code + "time.sleep(60)"]


def test_hang_after_the_results_is_killed_and_tolerated(tmp_path: Path, launch_ranks) -> None:
    flag = tmp_path / "rank0.json"
    res = launch_ranks(_sleeper(flag, True), dict(os.environ), flag.is_file, 3)
    assert res.returncode is None and flag.read_text() == "done"


def test_hang_before_the_results_fails(tmp_path: Path, launch_ranks) -> None:
    flag = tmp_path / "rank0.json"
    with pytest.raises(pytest.fail.Exception, match="timed out after 2 s"):
        launch_ranks(_sleeper(flag, False), dict(os.environ), flag.is_file, 2)


def test_normal_exit_passes_the_output_through(launch_ranks) -> None:
    cmd = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    res = launch_ranks(cmd, dict(os.environ), lambda: False, 30)
    assert (res.returncode, res.stdout.strip(), res.stderr.strip()) == (0, "out", "err")
