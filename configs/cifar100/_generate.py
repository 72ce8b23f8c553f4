"""Regenerate the per-cell CIFAR-100 and ImageNet recipes from the tables below.

    python configs/cifar100/_generate.py

Each cell file is a few lines on top of a method base (``methods/*.yaml``), which sits on
``base.yaml`` (mdistiller's CIFAR-100 recipe). Edit the tables here, not the generated files.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGENET = HERE.parent / "imagenet"

# The standard CIFAR-100 teacher -> student pairs of CRD / DKD / mdistiller; the LoCa (Table 2)
# and LS papers report these. (teacher, student, DKD beta from mdistiller's configs/cifar100/dkd).
PAIRS: list[tuple[str, str, float]] = [
    ("resnet56", "resnet20", 2.0),
    ("resnet110", "resnet32", 2.0),
    ("resnet32x4", "resnet8x4", 8.0),
    ("wrn_40_2", "wrn_16_2", 6.0),
    ("wrn_40_2", "wrn_40_1", 6.0),
    ("vgg13", "vgg8", 6.0),
    ("resnet32x4", "ShuffleV1", 8.0),
    ("resnet32x4", "ShuffleV2", 8.0),
    ("wrn_40_2", "ShuffleV1", 8.0),
    ("vgg13", "MobileNetV2", 6.0),
    ("ResNet50", "MobileNetV2", 8.0),
]
TEACHERS = sorted({t for t, _, _ in PAIRS})


def low_lr(student: str) -> bool:
    return student.startswith(("MobileNet", "Shuffle"))


def pair_block(teacher: str, student: str, dataset: str = "cifar100") -> str:
    lines = [
        f"teacher: {{name: {teacher}, checkpoint: checkpoints/{dataset}/{teacher}.pth}}",
        f"model: {{name: {student}}}",
    ]
    if low_lr(student):
        lines.append("optim: {lr: 0.01}  # mdistiller: 0.01 for MobileNet/ShuffleNet students")
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")


def main() -> None:
    for t in TEACHERS:
        write(
            HERE / "teachers" / f"{t}.yaml",
            f"_base_: ../base.yaml\nmodel: {{name: {t}}}\nmethod: {{name: ce, ce_weight: 1.0}}\n"
            f"run_dir: runs/cifar100/teacher_{t}",
        )
    for teacher, student, beta in PAIRS:
        stem = f"{teacher}_{student}".lower()
        pair = pair_block(teacher, student)
        # LoCa Table 2: KD, LoCa alpha 0.95 and 0.98.
        for suffix, method in (("kd", "kd"), ("loca095", "kd_loca095"), ("loca098", "kd_loca098")):
            write(
                HERE / "loca" / f"{stem}_{suffix}.yaml", f"_base_: ../methods/{method}.yaml\n{pair}"
            )
        # LoCa Table 1: KD* (KD on the rows the teacher classifies correctly).
        write(HERE / "kd_star" / f"{stem}.yaml", f"_base_: ../methods/kd_star.yaml\n{pair}")
        # LoCa Table 8: DKD and DKD + LoCa (beta per pair as mdistiller).
        for suffix, method in (("dkd", "dkd"), ("dkd_loca", "dkd_loca")):
            write(
                HERE / "dkd" / f"{stem}_{suffix}.yaml",
                f"_base_: ../methods/{method}.yaml\n{pair}\nmethod: {{dkd_beta: {beta}}}",
            )
        # LS paper: KD / CTKD / DKD / MLKD with and without logit standardization.
        for m in ("kd", "ctkd", "dkd", "mlkd"):
            for ls in ("", "_ls"):
                extra = f"\nmethod: {{dkd_beta: {beta}}}" if m == "dkd" else ""
                if m == "ctkd" and ls == "":
                    extra = ""
                write(
                    HERE / "ls" / f"{stem}_{m}{ls}.yaml",
                    f"_base_: ../methods/{m}{ls}.yaml\n{pair}{extra}",
                )
    # ImageNet pairs (ResNet34 -> ResNet18, ResNet50 -> MobileNetV1).
    for teacher, student in (("ResNet34", "ResNet18"), ("ResNet50", "MobileNetV1")):
        stem = f"{teacher}_{student}".lower()
        pair = (
            f"teacher: {{name: 'imagenet:{teacher}', checkpoint: checkpoints/imagenet/{teacher.lower()}.pth}}\n"
            f"model: {{name: 'imagenet:{student}'}}"
        )
        for suffix in ("kd", "loca099", "loca0995", "dkd", "dkd_loca"):
            write(IMAGENET / f"{stem}_{suffix}.yaml", f"_base_: methods/{suffix}.yaml\n{pair}")


if __name__ == "__main__":
    main()
