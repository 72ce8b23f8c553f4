"""Images/s of one full distillation step: logitkd's trainer against an mdistiller-style loop.

A step is teacher forward + student forward/backward + SGD step, batch 64 of 3×32×32 random
images, 100 classes, KD (T=4, CE 0.1 + KD 0.9). Variants, timed interleaved round by round
(drift hits all alike), median reported, ratio to the plain loop:

* ``plain``: written the way mdistiller's trainer works — teacher under ``torch.no_grad``,
  default (NCHW) memory layout, CE and KD computed separately
  (``log_softmax``/``softmax``/``kl_div(reduction="none").sum(1).mean() * T^2``).
* ``plain+inference_mode``: the same loop with the teacher under ``torch.inference_mode``.
* ``plain+channels_last``: the same loop with models and inputs in channels_last.
* ``logitkd``: ``Trainer.train_step`` with the config's defaults (inference-mode teacher,
  fused KD loss, default layout).
* ``logitkd+channels_last``: the same with ``channels_last=true``.
* ``logitkd+channels_last+compile`` (``--compile``): plus ``torch.compile`` (slow to compile on
  CPU: 13-40 s per model).

    python benchmarks/train_throughput.py [--steps 3] [--pairs resnet32x4:resnet8x4,...] [--compile]

``--epoch-images N`` instead times one whole training epoch of resnet32x4 -> resnet8x4 through
``Trainer.fit`` on N random 32x32 images held on the device (the GPU check of the issue:
``--epoch-images 50000 --device cuda --amp bf16``, target <= 10 s on one H100).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from logitkd.config import load_config
from logitkd.vision.config import VisionConfig
from logitkd.vision.data import ArrayDataset, normalize
from logitkd.vision.models import create_model
from logitkd.vision.trainer import Trainer

BATCH = 64
CLASSES = 100


def plain_step_factory(
    teacher: nn.Module, student: nn.Module, *, inference_mode: bool, channels_last: bool
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """An mdistiller-style KD step (distillers/KD.py + engine/trainer.py), optionally tweaked."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    teacher, student = teacher.to(memory_format=fmt).eval(), student.to(memory_format=fmt).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ctx = torch.inference_mode if inference_mode else torch.no_grad
    temperature = 4.0

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.contiguous(memory_format=fmt)
        with ctx():
            logits_teacher = teacher(x)
        if inference_mode:
            logits_teacher = logits_teacher.clone()
        logits_student = student(x)
        loss_ce = 0.1 * F.cross_entropy(logits_student, y)
        log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
        pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
        loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
        loss = loss_ce + 0.9 * loss_kd * temperature**2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def logitkd_step_factory(
    teacher: nn.Module, student: nn.Module, *, channels_last: bool, compile: bool, run_dir: str
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    overrides = [
        "method.name=kd",
        "teacher.name=resnet56",  # the module is passed in; the name only satisfies the config
        "method.temperature=4",
        f"channels_last={str(channels_last).lower()}",
        f"compile={str(compile).lower()}",
        f"run_dir={run_dir}",
        "device=cpu",
        "logging.progress=false",
        "logging.tensorboard=false",
    ]
    cfg = load_config(VisionConfig, None, overrides)
    images = torch.zeros(BATCH, 3, 32, 32, dtype=torch.uint8)
    ds = ArrayDataset(
        images, torch.zeros(BATCH, dtype=torch.int64), CLASSES, (0.5,) * 3, (0.25,) * 3
    )
    trainer = Trainer(
        cfg, train_set=ds, test_set=ds, student=student, teacher=teacher, write_outputs=False
    )

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        trainer.train_step(x, y)

    return step


def time_epoch(n: int, device: str, amp: str, batch: int) -> None:
    """One epoch of resnet32x4 -> resnet8x4 KD (channels_last, ``amp``) over ``n`` images."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev)
    labels = torch.randint(0, CLASSES, (n,), generator=g).to(dev)
    ds = ArrayDataset(images, labels, CLASSES, (0.5,) * 3, (0.25,) * 3)
    test = ds.subset(torch.arange(min(n, 1000), device=dev))
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            "method.name=kd",
            "teacher.name=resnet32x4",
            "model.name=resnet8x4",
            "schedule.epochs=1",
            f"data.batch_size={batch}",
            f"device={device}",
            f"amp={amp}",
            "channels_last=true",
            f"run_dir={tmp}/run",
            "logging.progress=false",
            "logging.tensorboard=false",
        ]
        cfg = load_config(VisionConfig, None, overrides)
        trainer = Trainer(
            cfg, train_set=ds, test_set=test, student=fresh("resnet8x4"),
            teacher=fresh("resnet32x4"), write_outputs=False,
        )  # fmt: skip
        # Warm-up steps (cuDNN autotuning, allocator) before the timed epoch.
        x, y = normalize(images[:batch].float() / 255, ds.mean, ds.std), labels[:batch]
        for _ in range(3):
            trainer.train_step(x, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = trainer.fit()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    row = result.history[-1]
    print(
        f"one epoch, {n} images, batch {batch}, {device}, amp={amp}, channels_last: "
        f"{seconds:.1f} s incl. eval of {len(test)} images; train {row['images_per_s']:.0f} img/s"
    )


def fresh(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, CLASSES)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="timed rounds per variant")
    parser.add_argument("--pairs", default="resnet32x4:resnet8x4,resnet56:resnet20")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--epoch-images", type=int, default=0, help="time one epoch instead")
    parser.add_argument("--device", default="cpu", help="for --epoch-images")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=BATCH, help="for --epoch-images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.epoch_images:
        time_epoch(args.epoch_images, args.device, args.amp, args.batch)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, KD T=4")
    print(f"{'pair':<22} {'variant':<32} {'median s/step':>13} {'img/s':>8} {'vs plain':>8}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.pairs.split(","):
            t_name, s_name = spec.split(":")
            variants: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {
                "plain (mdistiller-style)": plain_step_factory(
                    fresh(t_name), fresh(s_name), inference_mode=False, channels_last=False
                ),
                "plain+inference_mode": plain_step_factory(
                    fresh(t_name), fresh(s_name), inference_mode=True, channels_last=False
                ),
                "plain+channels_last": plain_step_factory(
                    fresh(t_name), fresh(s_name), inference_mode=False, channels_last=True
                ),
                "logitkd": logitkd_step_factory(
                    fresh(t_name), fresh(s_name), channels_last=False, compile=False, run_dir=tmp
                ),
                "logitkd+channels_last": logitkd_step_factory(
                    fresh(t_name), fresh(s_name), channels_last=True, compile=False, run_dir=tmp
                ),
            }
            if args.compile:
                variants["logitkd+channels_last+compile"] = logitkd_step_factory(
                    fresh(t_name), fresh(s_name), channels_last=True, compile=True, run_dir=tmp
                )
            times: dict[str, list[float]] = {k: [] for k in variants}
            for step in variants.values():  # warm-up (and compilation)
                step(x, y)
            for _ in range(args.steps):
                for name, step in variants.items():
                    start = time.perf_counter()
                    step(x, y)
                    times[name].append(time.perf_counter() - start)
            base = statistics.median(times["plain (mdistiller-style)"])
            for name, ts in times.items():
                med = statistics.median(ts)
                print(f"{spec:<22} {name:<32} {med:>13.3f} {BATCH / med:>8.1f} {base / med:>7.2f}x")


if __name__ == "__main__":
    main()
