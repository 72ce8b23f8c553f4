"""DistillationTrainer under 2-process DDP on CPU (gloo), launched once with torchrun.

``accelerate launch --cpu --num_processes 2`` silently runs one process on this machine
(MACHINE-NOTES), so the test uses ``torchrun`` and checks that two ranks really ran: each rank
writes its rank, world size, losses and a checksum of its trained weights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


@pytest.mark.slow
def test_two_process_ddp_training(lm_assets, tmp_path, launch_ranks):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
        "torchrun"
    )
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    asset_dir = str(Path(lm_assets["student"]).parent)
    cmd = [
        torchrun, "--standalone", "--nproc_per_node", "2",
        str(HERE / "_lm_helpers.py"), asset_dir, str(tmp_path),
    ]  # fmt: skip
    # gloo occasionally hangs or aborts in teardown after both ranks finished (MACHINE-NOTES):
    # launch_ranks then reports returncode None, and the results below are still checked.
    done = lambda: len(list(tmp_path.glob("rank*.json"))) == 2  # noqa: E731
    proc = launch_ranks(cmd, env, done, 240, str(tmp_path))
    files = sorted(tmp_path.glob("rank*.json"))
    assert proc.returncode in (0, None) and len(files) == 2, proc.stderr[-3000:]
    results = [json.loads(f.read_text()) for f in files]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["world_size"] == 2 and r["args_world_size"] == 2
        assert r["losses"] and r["finite"] and all(math.isfinite(v) for v in r["losses"])
        assert r["model_wrapped"] == "DistributedDataParallel"
        assert r["teacher_wrapped"] != "DistributedDataParallel"  # frozen teacher: never wrapped
    # DDP kept the replicas identical: every rank applied the same averaged gradient
    assert results[0]["checksum"] == pytest.approx(results[1]["checksum"], rel=1e-6)
