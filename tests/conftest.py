"""Project-wide test fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOGITKD_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (real data); tests using it skip when it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@dataclass
class LaunchResult:
    returncode: int | None  # None: killed after the ranks had finished (teardown hang)
    stdout: str
    stderr: str


def _launch(
    cmd: list[str], env: dict[str, str], finished: Callable[[], bool], timeout: float
) -> LaunchResult:
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        return LaunchResult(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if not finished():  # a real hang or a slow run: fail with what it printed
            pytest.fail(f"{cmd[:3]}... timed out after {timeout} s\n{out[-2000:]}\n{err[-3000:]}")
        return LaunchResult(None, out, err)


@pytest.fixture
def launch_ranks() -> Callable[..., LaunchResult]:
    """Run a multi-process (torchrun/gloo) command; ``launch(cmd, env, finished, timeout)``.

    gloo sometimes hangs or aborts in teardown after every rank finished its work
    (MACHINE-NOTES: 2 of 33 runs). If the command outlives ``timeout`` but ``finished()`` says
    every rank wrote its results, the process group is killed and the result has
    ``returncode=None``; otherwise the test fails with the output.
    """
    return _launch
