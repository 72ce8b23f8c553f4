"""Project-wide test fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOGITKD_SHARED", REPO.parent / "shared"))


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test: tiny models (and timings) on a shared 2-core machine
    stall when the threads oversubscribe the cores."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """:func:`one_thread` for a whole test module (``pytest.mark.usefixtures``)."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (real data); tests using it skip when it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@dataclass
class LaunchResult:
    returncode: int | None  # None: the ranks finished their work, the launcher did not exit cleanly
    stdout: str
    stderr: str


def _kill_marked(marker: str) -> list[int]:
    """SIGKILL every process whose command line contains ``marker`` (Linux ``/proc``).

    torchrun starts its ranks in sessions of their own and, when it gives up on a hung rank,
    exits and leaves it to init: neither its process group nor its children find it then.
    """
    proc_dir = Path("/proc")
    killed: list[int] = []
    if not proc_dir.is_dir():
        return killed
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def _wait(
    proc: subprocess.Popen, finished: Callable[[], bool], timeout: float, grace: float
) -> int | None:
    """The exit code, or ``None`` once ``timeout`` has passed or ``grace`` seconds after
    ``finished()`` first held (a teardown hang need not cost the whole timeout)."""
    start = time.monotonic()
    done_at: float | None = None
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if done_at is None and finished():
                done_at = now
            if now - start > timeout or (done_at is not None and now - done_at > grace):
                return None


def _launch(
    cmd: list[str],
    env: dict[str, str],
    finished: Callable[[], bool],
    timeout: float,
    marker: str,
    grace: float = 30.0,
) -> LaunchResult:
    # Output goes to files, not pipes: a rank left behind would hold a pipe open forever.
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
        with out_path.open("w") as out_f, err_path.open("w") as err_f:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out_f, stderr=err_f, text=True, start_new_session=True
            )
            rc = _wait(proc, finished, timeout, grace)
            if rc is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            leftovers = _kill_marked(marker)  # no rank outlives its test
        out, err = out_path.read_text(), err_path.read_text()
    if leftovers:
        err += f"\n[launch_ranks] killed {len(leftovers)} process(es) left running: {leftovers}"
    if rc == 0:
        return LaunchResult(0, out, err)
    if finished():  # every rank wrote its results; the launcher hung or failed in teardown
        return LaunchResult(None, out, err)
    what = f"timed out after {timeout} s" if rc is None else f"exited with {rc}"
    pytest.fail(f"{cmd[:3]}... {what} before the ranks finished\n{out[-2000:]}\n{err[-3000:]}")


@pytest.fixture
def launch_ranks() -> Callable[..., LaunchResult]:
    """Run a multi-process (torchrun/gloo) command: ``launch(cmd, env, finished, timeout,
    marker, grace=30)``; ``marker`` is a string in every rank's command line (e.g. the test's
    tmp dir).

    gloo sometimes hangs or aborts in teardown after every rank finished its work
    (MACHINE-NOTES: 2 of 33 runs; seen here too: torchrun exited, one rank stayed in teardown).
    A clean exit gives ``returncode=0``. If the launcher fails, outlives ``timeout``, or is still
    running ``grace`` seconds after ``finished()`` first held, and ``finished()`` says every rank
    wrote its results, the result has ``returncode=None`` (the
    caller checks those results); otherwise the test fails with the output. Any process still
    carrying ``marker`` afterwards is killed, so no rank outlives its test.
    """
    return _launch
