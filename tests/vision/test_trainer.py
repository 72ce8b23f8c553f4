"""The vision trainer on the built-in digits data: logging, every method, frozen teacher, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from logitkd.config import ConfigError
from logitkd.vision.config import MethodConfig, load_vision_config
from logitkd.vision.data import normalize
from logitkd.vision.losses_factory import METHODS, build_loss
from logitkd.vision.models_small import build_model
from logitkd.vision.trainer import Trainer, _digits, strong_augment, topk_correct

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _cfg(run_dir: Path, *overrides: str):
    base = [
        "data.name=digits",
        "data.augment=false",
        "data.batch_size=32",
        "model.name=mlp",
        "schedule.milestones=[]",
        "logging.progress=false",
        "logging.tensorboard=false",
        f"run_dir={run_dir}",
    ]
    return load_vision_config(None, [*base, *overrides])


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """An MLP teacher trained 3 epochs on 300 digits: good but imperfect (it mis-instructs)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = _cfg(run, "method.name=ce", "schedule.epochs=3", "data.train_subset=300")
    Trainer(cfg).fit()
    return run / "best.pt"


def test_topk_correct_matches_manual_count():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    target = torch.randint(0, 7, (50,), generator=g)
    ranks = (logits > logits.gather(1, target[:, None])).sum(1)  # classes scoring higher
    assert topk_correct(logits, target, (1, 5)) == [int((ranks < 1).sum()), int((ranks < 5).sum())]
    # k larger than the class count clips to "every row correct".
    assert topk_correct(logits[:, :3], target.clamp(max=2), (5,)) == [50]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), erase=st.sampled_from([0.0, 0.25, 0.5]))
def test_strong_augment_range_shape_and_determinism(seed: int, erase: float):
    x = torch.rand(6, 3, 8, 8)
    a = strong_augment(x, torch.Generator().manual_seed(seed), padding=2, erase=erase)
    b = strong_augment(x, torch.Generator().manual_seed(seed), padding=2, erase=erase)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    if erase:  # every image has an erased square of zeros of side round(erase * 8)
        side = round(erase * 8)
        zero_rows = (a == 0).all(dim=1).sum(dim=(1, 2))
        assert bool((zero_rows >= side * side).all())


def test_teacher_training_writes_logs_and_learns(tmp_path: Path):
    run = tmp_path / "t"
    cfg = _cfg(run, "method.name=ce", "schedule.epochs=3", "schedule.milestones=[2]")
    result = Trainer(cfg).fit()
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "last.pt",
        "best.pt",
        "summary.json",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in (
        "train/ce",
        "train/loss",
        "train/top1",
        "train/top5",
        "test/top1",
        "test/top5",
        "lr",
        "images_per_s",
    ):
        assert key in rows[0], key
    # Multi-step schedule: x0.1 after epoch 2.
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 0.005])
    assert result.last_top1 == pytest.approx(rows[-1]["test/top1"])
    assert result.best_top1 == max(r["test/top1"] for r in rows)
    assert result.last_top1 > 50.0  # 10 classes: chance is 10%
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/top1" in header and "test/top5" in header
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_top1"] == pytest.approx(result.best_top1)


def test_logged_misinstruction_is_the_teachers_error_on_the_training_set(tmp_path, teacher_ckpt):
    cfg = _cfg(
        tmp_path / "kd",
        "method.name=kd",
        "teacher.name=mlp",
        f"teacher.checkpoint={teacher_ckpt}",
        "schedule.epochs=1",
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    # Independent reference: the teacher's argmax over the whole (unaugmented) training split.
    train, _ = _digits()
    teacher = build_model("mlp", 10, (1, 8, 8))
    teacher.load_state_dict(torch.load(teacher_ckpt, weights_only=True)["model"])
    with torch.no_grad():
        pred = teacher.eval()(normalize(train.images, train.mean, train.std)).argmax(-1)
    expected = int((pred != train.labels).sum()) / len(train)
    assert result.teacher_misinstruction == pytest.approx(expected, abs=1e-9)
    assert expected > 0.0


@pytest.mark.parametrize("method", [m for m in METHODS if m != "ce"])
def test_every_method_trains_and_logs_its_terms(tmp_path, teacher_ckpt, method):
    cfg = _cfg(
        tmp_path / method,
        f"method.name={method}",
        "teacher.name=mlp",
        f"teacher.checkpoint={teacher_ckpt}",
        "schedule.epochs=1",
        "schedule.max_steps_per_epoch=4",
    )
    trainer = Trainer(cfg)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    loss_before = [p.detach().clone() for p in trainer.loss_module.parameters()]
    result = trainer.fit()
    row = result.history[-1]
    terms = [
        k
        for k in row
        if k.startswith("train/")
        and k not in ("train/loss", "train/top1", "train/top5", "train/misinstruction")
    ]
    assert "train/ce" in terms and len(terms) >= 2
    assert row["train/loss"] == pytest.approx(sum(row[k] for k in terms), rel=1e-9)
    assert 0.0 <= row["train/misinstruction"] <= 1.0
    # The teacher is frozen (weights untouched, eval mode); the student moved.
    assert not trainer.teacher.training
    assert all(torch.equal(teacher_before[k], v) for k, v in trainer.teacher.state_dict().items())
    assert any(
        not torch.equal(student_before[k], v) for k, v in trainer.student.state_dict().items()
    )
    if method == "ctkd":  # the learnable temperature is in the optimizer and moves
        assert loss_before and any(
            not torch.equal(a, b.detach())
            for a, b in zip(loss_before, trainer.loss_module.parameters())
        )
        assert "ctkd/temperature" in row


def test_teacher_logits_from_inference_mode_can_be_saved_for_backward(tmp_path, teacher_ckpt):
    cfg = _cfg(
        tmp_path / "im", "method.name=kd", "teacher.name=mlp", f"teacher.checkpoint={teacher_ckpt}"
    )
    trainer = Trainer(cfg)
    x = torch.randn(4, 1, 8, 8)
    t = trainer.teacher_logits(x)
    assert not t.is_inference() and not t.requires_grad
    s = trainer.student(x)
    F.kl_div(s.log_softmax(-1), t.softmax(-1), reduction="batchmean").backward()  # saves t


def test_build_loss_errors_name_the_problem():
    with pytest.raises(ValueError, match="valid methods: ce, kd, dkd, ctkd, mlkd, kd_star"):
        build_loss(MethodConfig(name="kdd"))
    with pytest.raises(ValueError, match=r"does not use method\.dkd_beta"):
        build_loss(MethodConfig(name="kd", dkd_beta=8.0))
    kd_star = build_loss(MethodConfig(name="kd_star"))
    assert kd_star.drop_misinstructed is True
    assert list(build_loss(MethodConfig(name="ctkd")).parameters())


def test_bad_input_errors(tmp_path, teacher_ckpt):
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        _cfg(tmp_path, "optim.lrr=0.1")
    with pytest.raises(ValueError, match=r"unknown model name 'resnet9'.*Valid names"):
        Trainer(_cfg(tmp_path / "a", "method.name=ce", "model.name=resnet9"))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        Trainer(
            load_vision_config(
                None,
                ["method.name=ce", f"data.root={tmp_path / 'nope'}", f"run_dir={tmp_path / 'b'}"],
            )
        )
    with pytest.raises(ConfigError, match=r"set teacher\.name"):
        _cfg(tmp_path, "method.name=kd")
    # A 10-class checkpoint into a 10-class teacher of another architecture: clear key report.
    with pytest.raises(ValueError, match=r"missing key|unexpected key|shape"):
        Trainer(
            _cfg(
                tmp_path / "c",
                "method.name=kd",
                "teacher.name=digits_cnn",
                f"teacher.checkpoint={teacher_ckpt}",
            )
        )
    # Teacher built for other classes than the student.
    with pytest.raises(ValueError, match=r"teacher\.num_classes=5"):
        Trainer(
            _cfg(
                tmp_path / "d",
                "method.name=kd",
                "teacher.name=mlp",
                "teacher.num_classes=5",
                f"teacher.checkpoint={teacher_ckpt}",
            )
        )
    with pytest.raises(ValueError, match=r"teacher\.checkpoint is not set"):
        Trainer(_cfg(tmp_path / "e", "method.name=kd", "teacher.name=mlp"))
    with pytest.raises(ValueError, match="expects 3-channel"):
        Trainer(_cfg(tmp_path / "f", "method.name=ce", "model.name=resnet8"))
