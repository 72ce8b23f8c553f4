"""Every recipe in configs/ loads into a VisionConfig and builds its loss module."""

from __future__ import annotations

from pathlib import Path

import pytest

from logitkd.vision.config import load_vision_config
from logitkd.vision.losses_factory import build_loss
from logitkd.vision.models_small import all_model_names

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = [
    *sorted(p for sub in ("cifar100", "imagenet") for p in (CONFIGS / sub).rglob("*.yaml")),
    CONFIGS / "demo.yaml",
]


def _model_ok(name: str) -> bool:
    return name.removeprefix("imagenet:") in all_model_names()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_builds_config_and_loss(path: Path):
    is_base = "methods" in path.parts or path.name == "base.yaml"
    # Shared bases name no teacher; load them as a cell would, with one.
    cfg = load_vision_config(path, ["teacher.name=resnet56"] if is_base else [])
    loss = build_loss(cfg.method, num_classes=100)
    assert callable(loss)
    assert _model_ok(cfg.model.name), cfg.model.name
    if cfg.method.name != "ce" and not is_base:
        assert cfg.teacher.name is not None and _model_ok(cfg.teacher.name)
        ckpt = cfg.teacher.checkpoint or ""
        assert ckpt.startswith("checkpoints/") and ckpt.endswith(".pth"), ckpt  # local, never a URL
    if cfg.model.name.startswith(("MobileNet", "Shuffle")) and cfg.data.name == "cifar100":
        assert cfg.optim.lr == 0.01
    elif cfg.data.name == "cifar100":
        assert cfg.optim.lr == 0.05


def test_the_paper_cells_are_all_there():
    def count(pattern: str) -> int:
        return len(list((CONFIGS / "cifar100").glob(pattern)))

    pairs = 11
    assert (
        count("loca/*_kd.yaml")
        == count("loca/*_loca095.yaml")
        == count("loca/*_loca098.yaml")
        == pairs
    )
    assert count("kd_star/*.yaml") == pairs
    assert count("dkd/*_dkd_loca.yaml") == pairs
    for m in ("kd", "ctkd", "dkd", "mlkd"):
        assert count(f"ls/*_{m}.yaml") == count(f"ls/*_{m}_ls.yaml") == pairs
    assert len(list((CONFIGS / "imagenet").glob("resnet34_resnet18_*.yaml"))) == 5
    assert len(list((CONFIGS / "imagenet").glob("resnet50_mobilenetv1_*.yaml"))) == 5


def test_cell_values_follow_the_papers():
    cfg = load_vision_config(CONFIGS / "cifar100/loca/resnet32x4_resnet8x4_loca098.yaml")
    assert (cfg.method.name, cfg.method.loca_alpha, cfg.method.temperature) == ("kd", 0.98, 4.0)
    assert (cfg.schedule.epochs, cfg.schedule.milestones, cfg.data.batch_size) == (
        240,
        [150, 180, 210],
        64,
    )
    assert cfg.optim.weight_decay == 5e-4
    dkd = load_vision_config(CONFIGS / "cifar100/dkd/resnet56_resnet20_dkd.yaml")
    assert (dkd.method.dkd_beta, dkd.method.warmup_epochs) == (2.0, 20)
    ls = load_vision_config(CONFIGS / "cifar100/ls/vgg13_vgg8_kd_ls.yaml")
    assert (ls.method.standardize, ls.method.temperature, ls.method.kd_weight) == (True, 2.0, 9.0)
    star = build_loss(
        load_vision_config(CONFIGS / "cifar100/kd_star/resnet56_resnet20.yaml").method
    )
    assert star.drop_misinstructed


def test_default_run_dirs_of_one_pair_never_collide():
    """KD, KD+LoCa 0.95 / 0.98, KD+LS and other seeds of one pair default to distinct folders."""
    from logitkd.vision.config import load_vision_config

    base = ["teacher.name=resnet32x4", "model.name=resnet8x4", "method.name=kd"]
    variants = {
        (): "runs/cifar100/kd_resnet32x4_resnet8x4",
        ("method.loca_alpha=0.95",): "runs/cifar100/kd_loca0.95_resnet32x4_resnet8x4",
        ("method.loca_alpha=0.98",): "runs/cifar100/kd_loca0.98_resnet32x4_resnet8x4",
        ("method.standardize=true",): "runs/cifar100/kd_ls_resnet32x4_resnet8x4",
        ("method.standardize=true", "method.loca_alpha=0.95", "seed=2"): (
            "runs/cifar100/kd_ls_loca0.95_resnet32x4_resnet8x4_seed2"
        ),
    }
    got = {k: load_vision_config(None, [*base, *k]).run_dir for k in variants}
    assert got == variants
    # An explicit run_dir always wins.
    assert load_vision_config(None, [*base, "run_dir=x/y"]).run_dir == "x/y"
    # The LoCa recipes of one pair: each its own folder.
    dirs = {
        load_vision_config(p).run_dir
        for p in sorted(CONFIGS.glob("cifar100/loca/resnet32x4_resnet8x4_*.yaml"))
    }
    assert len(dirs) == len(list(CONFIGS.glob("cifar100/loca/resnet32x4_resnet8x4_*.yaml"))) >= 3
