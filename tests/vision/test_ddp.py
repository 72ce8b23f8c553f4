"""DDP over 2 CPU processes (torchrun, gloo) equals one process on the same global batch.

Why equality holds exactly (up to float summation order): the model is an MLP without
BatchNorm (BN statistics are per rank under DDP, so a BN model would differ), augmentation is
off, and the loss is a per-sample mean. Rank ``r`` takes ``order[r::2]`` of the shared epoch
permutation, so its ``k``-th batch of ``b`` samples and the other rank's together are exactly
the single process's ``k``-th batch of ``2b``; DDP averages the two ranks' mean-loss gradients,
which is the gradient of the mean over ``2b``. Only one multi-process launch (~10 s) is run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

from logitkd.vision.config import load_vision_config
from logitkd.vision.models_small import build_model
from logitkd.vision.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, teacher: Path) -> Path:
    cfg = {
        "data": {"name": "digits", "augment": False, "eval_batch_size": 100},
        "model": {"name": "mlp"},
        "teacher": {"name": "mlp", "checkpoint": str(teacher)},
        "method": {"name": "kd", "temperature": 4.0},
        "schedule": {"epochs": 2, "milestones": [1], "max_steps_per_epoch": 4},
        "logging": {"progress": False, "tensorboard": False},
        "cpu_threads": 1,
        "seed": 7,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_global_batch(tmp_path, launch_ranks):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": build_model("mlp", 10, (1, 8, 8)).state_dict()}, teacher)
    recipe = _recipe(tmp_path, teacher)

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    ddp_dir = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "logitkd", "distill", "--config", str(recipe),
        "data.batch_size=16", f"run_dir={ddp_dir}", "--device", "cpu",
    ]  # fmt: skip
    # last.pt and summary.json are written by rank 0 after the last step and evaluation.
    proc = launch_ranks(cmd, env, lambda: (ddp_dir / "summary.json").is_file(), 240, str(ddp_dir))
    assert proc.returncode in (0, None), proc.stdout[-3000:] + proc.stderr[-3000:]

    single_dir = tmp_path / "single"
    before = torch.get_num_threads()
    try:
        cfg = load_vision_config(
            recipe, ["data.batch_size=32", f"run_dir={single_dir}", "device=cpu"]
        )
        Trainer(cfg).fit()
    finally:
        torch.set_num_threads(before)

    ddp = torch.load(ddp_dir / "last.pt", weights_only=True)
    one = torch.load(single_dir / "last.pt", weights_only=True)
    for k, v in one["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert ddp["global_step"] == one["global_step"] == 8

    rows_ddp = [json.loads(x) for x in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    rows_one = [json.loads(x) for x in (single_dir / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows_ddp, rows_one, strict=True):
        # All-reduced metrics: same sample counts and sums as the single process.
        for key in ("train/top1", "train/misinstruction", "test/top1", "test/top5"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
        for key in ("train/ce", "train/kd", "train/loss", "test/loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    # Rank 0 alone wrote the run directory.
    assert sorted(p.name for p in ddp_dir.iterdir()) == sorted(p.name for p in single_dir.iterdir())
