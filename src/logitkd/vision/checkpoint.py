"""Training checkpoints: atomic writes, RNG capture, and resume checks.

A checkpoint is a ``torch.save`` dict (read back with ``weights_only=True``, so loading never
runs code)::

    {"format": "logitkd-vision-ckpt/1", "model": state_dict, "optimizer": ..., "scheduler": ...,
     "loss_module": state_dict, "epoch": completed epochs, "step_in_epoch": steps done in the
     current epoch, "global_step": ..., "rng": capture_rng(), "accumulators": {...},
     "best": {"acc": .., "epoch": ..}, "config": plain dict}

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over the
target with ``os.replace`` (atomic on POSIX and Windows): a crash or ``kill -9`` mid-write leaves
the previous ``last.pt`` intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "atomic_save",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
]

FORMAT = "logitkd-vision-ckpt/1"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written temp file
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state a training step reads, in ``weights_only``-loadable types.

    Python's ``random`` (a tuple of ints), numpy's legacy global RNG (converted from its
    ndarray), torch's CPU RNG, each CUDA device's RNG, and any named ``torch.Generator``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    return state


def restore_rng(
    state: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Inverse of :func:`capture_rng`; generators are restored by name."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        if name in state.get("generators", {}):
            gen.set_state(state["generators"][name])


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a trainer checkpoint (``weights_only=True``); clear errors for a missing file or
    a file that is not a logitkd training checkpoint (e.g. a bare teacher state dict)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read checkpoint {file}: {err}") from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(
            f"{file} is not a logitkd training checkpoint (format {FORMAT!r}); to start from "
            "plain weights use model.checkpoint=PATH instead of --resume"
        )
    return obj
