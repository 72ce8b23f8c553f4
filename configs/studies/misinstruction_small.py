"""Mis-instruction ratio of a small-model teacher (``mlp``, ``digits_cnn`` ...) on a dataset.

``logitkd analyze misinstruction`` builds teachers from the CIFAR zoo only, so it cannot load the
Fashion-MNIST teacher of this study; this script does the same computation with
:func:`logitkd.vision.models_small.build_model`, which also knows the small models. Usage, from
the repo root::

    python configs/studies/misinstruction_small.py mlp runs/studies/fmnist/teacher_mlp/best.pt \
        fashion_mnist ../shared/data 5000 runs/studies/fmnist/misinstruction

Arguments: model name, checkpoint, dataset, data root, first N training samples, output folder.
Writes ``misinstruction.md`` (clean and crop+flip, padding 2, seed 0) and prints it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from logitkd.analysis.misinstruction import misinstruction_markdown, teacher_misinstruction
from logitkd.vision.data import build_dataset
from logitkd.vision.models.checkpoint_io import load_pretrained
from logitkd.vision.models_small import build_model


def main(argv: list[str]) -> int:
    """Compute the clean and augmented mis-instruction ratios and write the Markdown table."""
    if len(argv) != 6:
        raise SystemExit(__doc__)
    name, ckpt, dataset, root, limit, out = argv
    ds = build_dataset(dataset, root, "train")
    model = build_model(name, ds.num_classes, ds.image_shape)
    load_pretrained(model, ckpt).eval()
    reports = [
        teacher_misinstruction(model, ds, label=name, augment=aug, padding=2, limit=int(limit))
        for aug in (False, True)
    ]
    table = misinstruction_markdown(reports)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "misinstruction.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
