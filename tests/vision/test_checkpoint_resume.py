"""Checkpoints: atomic writes, RNG capture, and resuming a crashed run to the same weights."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from logitkd.vision import checkpoint as ckpt_mod
from logitkd.vision.checkpoint import atomic_save, capture_rng, load_checkpoint, restore_rng
from logitkd.vision.config import load_vision_config
from logitkd.vision.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread_module")


class Crash(RuntimeError):
    pass


def _cfg(run_dir: Path, *overrides: str):
    return load_vision_config(
        None,
        [
            "data.name=digits",
            "data.augment=true",  # random crops/flips: their RNG must replay on resume
            "data.padding=1",
            "data.batch_size=32",
            "data.train_subset=320",
            "model.name=digits_cnn",
            "method.name=ce",
            "schedule.epochs=3",
            "schedule.milestones=[2]",
            "logging.progress=false",
            "logging.tensorboard=false",
            "deterministic=true",
            f"run_dir={run_dir}",
            *overrides,
        ],
    )


def _crash_at(epoch: int, step: int):
    def callback(e: int, s: int) -> None:
        if (e, s) == (epoch, step):
            raise Crash(f"simulated crash at epoch {e} step {s}")

    return callback


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("images_per_s")
    return rows


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    Trainer(_cfg(run)).fit()
    return run


@pytest.mark.parametrize(
    ("every_steps", "crash_epoch", "crash_step"),
    [(0, 1, 5), (4, 1, 6)],  # end-of-epoch checkpoints only / also every 4 steps (mid-epoch)
)
def test_resume_after_crash_matches_uninterrupted_run(
    tmp_path, reference_run, every_steps, crash_epoch, crash_step
):
    run = tmp_path / "run"
    overrides = [f"checkpoint.every_steps={every_steps}"]
    with pytest.raises(Crash):
        Trainer(_cfg(run, *overrides), step_callback=_crash_at(crash_epoch, crash_step)).fit()
    saved = load_checkpoint(run / "last.pt")
    # The checkpoint on disk is the last one written before the crash.
    expected_step = (crash_step // every_steps) * every_steps if every_steps else 0
    assert (saved["epoch"], saved["step_in_epoch"]) == (crash_epoch, expected_step)
    result = Trainer(_cfg(run, *overrides), resume=True).fit()
    assert result.epochs == 3
    ref, got = _weights(reference_run), _weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "resumed weights differ"
    got_rows, ref_rows = _rows(run), _rows(reference_run)
    assert len(got_rows) == len(ref_rows) == 3
    for a, b in zip(got_rows, ref_rows):  # every logged metric, too
        assert a == pytest.approx(b, rel=1e-12)


def test_resume_refuses_a_different_config(tmp_path, reference_run):
    with pytest.raises(ValueError, match=r"optim\.lr: saved 0\.05, now 0\.1"):
        Trainer(_cfg(reference_run, "optim.lr=0.1"), resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_cfg(reference_run))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(_cfg(tmp_path / "empty"), resume=True)


def test_resume_rejects_a_checkpoint_that_does_not_fit(tmp_path, reference_run):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes((reference_run / "last.pt").read_bytes())
    with pytest.raises(ValueError, match="does not fit mlp"):
        Trainer(_cfg(run, "model.name=mlp"), resume=True)
    torch.save({"model": {}}, run / "last.pt")
    with pytest.raises(ValueError, match="not a logitkd training checkpoint"):
        Trainer(_cfg(run), resume=True)


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"v": torch.tensor(1)}, target)

    def broken_save(obj, fh):
        fh.write(b"partial garbage")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"v": torch.tensor(2)}, target)
    monkeypatch.undo()
    assert int(torch.load(target, weights_only=True)["v"]) == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    gen = torch.Generator().manual_seed(3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    atomic_save({"rng": capture_rng({"aug": gen})}, tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"], {"aug": gen})
    second = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=gen))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
