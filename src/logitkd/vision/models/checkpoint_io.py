"""Load published teacher weights from a local file into a model, with clear errors.

Accepted containers (what RepDistiller, mdistiller and plain ``torch.save`` write):

* ``{"model": state_dict, ...}`` (RepDistiller / mdistiller teachers; other entries such as
  ``epoch`` or ``optimizer`` are ignored),
* ``{"state_dict": state_dict, ...}``,
* a bare ``state_dict`` (``{name: Tensor}``),
* a ``.safetensors`` file, when the ``safetensors`` package is importable.

Files are read with ``torch.load(..., weights_only=True)``, so a checkpoint cannot run code.
A ``module.`` prefix on every key (``nn.DataParallel`` / DDP checkpoints) is removed.
Nothing is ever downloaded.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_DATA_PARALLEL_PREFIX = "module."
_CONTAINER_KEYS = ("model", "state_dict")
_SHOW = 5  # how many keys of each kind an error message lists


@dataclass(frozen=True)
class StateDictMismatch:
    """Differences between a checkpoint's state dict and a model's."""

    missing: tuple[str, ...]  # in the model, not in the checkpoint
    unexpected: tuple[str, ...]  # in the checkpoint, not in the model
    shape_mismatches: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # key, ckpt, model

    def is_empty(self, strict: bool = True) -> bool:
        """Whether loading can proceed: with ``strict=False`` only shapes must agree."""
        if strict:
            return not (self.missing or self.unexpected or self.shape_mismatches)
        return not self.shape_mismatches

    def describe(self, strict: bool = True) -> str:
        """A multi-line report: counts, then the first few keys of each kind."""
        lines = []
        if strict and self.missing:
            lines.append(
                _key_line("missing key", "in the model, not in the checkpoint", self.missing)
            )
        if strict and self.unexpected:
            lines.append(
                _key_line("unexpected key", "in the checkpoint, not in the model", self.unexpected)
            )
        if self.shape_mismatches:
            shown = ", ".join(
                f"{k!r} checkpoint {tuple(c)} vs model {tuple(m)}"
                for k, c, m in self.shape_mismatches[:_SHOW]
            )
            n = len(self.shape_mismatches)
            more = f", … and {n - _SHOW} more" if n > _SHOW else ""
            lines.append(f"  {n} shape mismatch{'es' if n != 1 else ''}: {shown}{more}")
        return "\n".join(lines)


def _key_line(kind: str, meaning: str, keys: tuple[str, ...]) -> str:
    n = len(keys)
    shown = ", ".join(repr(k) for k in keys[:_SHOW])
    more = f", … and {n - _SHOW} more" if n > _SHOW else ""
    return f"  {n} {kind}{'s' if n != 1 else ''} ({meaning}): {shown}{more}"


def compare_state_dicts(model: nn.Module, state_dict: Mapping[str, Tensor]) -> StateDictMismatch:
    """Compare ``state_dict`` with ``model.state_dict()`` by key and shape.

    A missing ``*.num_batches_tracked`` is not reported: checkpoints from before PyTorch 0.4.1
    lack it, and ``BatchNorm`` fills it in when loading a state dict without version metadata.
    """
    expected = model.state_dict()
    missing = tuple(
        k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")
    )
    unexpected = tuple(k for k in state_dict if k not in expected)
    mismatches = tuple(
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    return StateDictMismatch(missing, unexpected, mismatches)


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """Return the ``{name: Tensor}`` inside ``obj`` (one of the accepted containers)."""
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: expected a dict (a state dict, or {{'model': ...}} / {{'state_dict': ...}}),"
            f" got {type(obj).__name__}"
        )
    for key in _CONTAINER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        shown = ", ".join(repr(k) for k in not_tensors[:_SHOW])
        raise ValueError(
            f"{source}: not a state dict: {len(not_tensors)} entries are not tensors ({shown});"
            " expected {'model': state_dict}, {'state_dict': state_dict} or a bare state dict"
        )
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise ValueError(f"{source}: state dict keys must be str, got {bad_keys[:_SHOW]!r}")
    return dict(obj)


def strip_data_parallel_prefix(
    state_dict: Mapping[str, Tensor], model_keys: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """Remove a ``module.`` prefix present on *every* key (DataParallel/DDP checkpoints).

    Left alone when the model's own keys carry the prefix (the model is itself wrapped).
    """
    keys = list(state_dict)
    if not keys or not all(k.startswith(_DATA_PARALLEL_PREFIX) for k in keys):
        return dict(state_dict)
    if model_keys is not None and any(k.startswith(_DATA_PARALLEL_PREFIX) for k in model_keys):
        return dict(state_dict)
    return {k[len(_DATA_PARALLEL_PREFIX) :]: v for k, v in state_dict.items()}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a local ``.pt``/``.pth``/``.tar``/``.safetensors`` file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(file)!r}")
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(
                f"reading {str(file)!r} needs the safetensors package: pip install safetensors"
            ) from err
        return extract_state_dict(load_file(str(file), device="cpu"), source=str(file))
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        raise ValueError(
            f"could not read checkpoint {str(file)!r} with torch.load(weights_only=True): {err}."
            " Arbitrary pickles are not loaded; if you trust the file, re-save just its state"
            " dict with torch.save(state_dict, path)"
        ) from err
    return extract_state_dict(obj, source=str(file))


def load_state_dict_checked(
    model: ModuleT,
    state_dict: Mapping[str, Any],
    strict: bool = True,
    source: str = "state dict",
) -> ModuleT:
    """Load ``state_dict`` into ``model`` after checking keys and shapes; returns ``model``.

    ``state_dict`` may be any accepted container (``{"model": sd}``, ``{"state_dict": sd}``,
    a bare state dict); a ``module.`` prefix on every key is removed.

    ``strict=True``: keys must match exactly (a missing ``num_batches_tracked`` is tolerated)
    and shapes must agree. ``strict=False``: missing/unexpected keys are skipped, shapes of the
    shared keys must still agree. Raises ``ValueError`` listing missing keys, unexpected keys
    and shape mismatches (first few of each, with counts).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    sd = strip_data_parallel_prefix(extract_state_dict(state_dict, source), model.state_dict())
    mismatch = compare_state_dicts(model, sd)
    if not mismatch.is_empty(strict):
        hint = ""
        if any(k.endswith(".weight") and len(m) == 2 for k, _, m in mismatch.shape_mismatches):
            hint = "\nhint: a linear layer's shape differs; was the model built with the same num_classes?"
        raise ValueError(
            f"{source} does not match {type(model).__name__} (strict={strict}):\n"
            f"{mismatch.describe(strict)}{hint}"
        )
    model.load_state_dict(sd, strict=strict)
    return model


def load_pretrained(model: ModuleT, path: str | os.PathLike[str], strict: bool = True) -> ModuleT:
    """Load weights from the local checkpoint file ``path`` into ``model``; returns ``model``.

    See the module docstring for the accepted formats. Raises ``FileNotFoundError`` naming the
    path when it does not exist and ``ValueError`` on a key/shape mismatch.
    """
    state_dict = read_state_dict(path)
    return load_state_dict_checked(
        model, state_dict, strict=strict, source=f"checkpoint {str(path)!r}"
    )
