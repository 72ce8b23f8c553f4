"""CIFAR model zoo: architectures match the RepDistiller/mdistiller reference state dicts, and
checkpoints load (or fail clearly) through ``load_pretrained``.

The reference is ``cifar_zoo_state_dicts.json`` (per model built for 100 classes: parameter
count, output shape for a (2, 3, 32, 32) input, every state-dict key with its shape), kept in
``tests/data`` and also published in ``../shared/reference``.
"""

import copy
import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from logitkd.vision import available_models, create_model, load_pretrained
from logitkd.vision.models import load_state_dict_checked
from logitkd.vision.models.imagenet import MobileNetV1, create_imagenet_model

_REPO = Path(__file__).resolve().parents[2]
_JSON_NAME = "cifar_zoo_state_dicts.json"
_JSON_CANDIDATES = (
    _REPO / "tests" / "data" / _JSON_NAME,
    _REPO.parent / "shared" / "reference" / _JSON_NAME,
)

# The names the zoo must offer (issue "Vision", item 1).
_REQUIRED_NAMES = {
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet18",
    "ResNet50",
}


def _load_reference() -> dict | None:
    for path in _JSON_CANDIDATES:
        if path.is_file():
            return json.loads(path.read_text())
    return None


_REFERENCE = _load_reference()
_REF_NAMES = sorted(_REFERENCE) if _REFERENCE else []
needs_reference = pytest.mark.skipif(
    _REFERENCE is None, reason=f"{_JSON_NAME} not found in tests/data or ../shared/reference"
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Tiny batches gain nothing from intra-op threads, and on a busy 2-core machine thread
    hand-offs made MobileNetV2 on a (2, 3, 32, 32) batch ~100× slower (2.4 s vs 0.025 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    _model.cache_clear()  # free the ~120 M cached parameters for the rest of the suite


@functools.cache
def _model(name: str) -> nn.Module:
    """Each zoo model built once (100 classes, eval mode); tests that mutate take a copy."""
    torch.manual_seed(0)
    return create_model(name, num_classes=100).eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn_stats(model: nn.Module, seed: int) -> None:
    """Give BN layers non-trivial statistics so a wrong load would change the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)


# --------------------------------------------------------------------------- registry


def test_available_models_are_the_required_names() -> None:
    names = available_models()
    assert set(names) == _REQUIRED_NAMES
    assert len(names) == len(set(names))


@needs_reference
def test_reference_covers_every_model() -> None:
    assert set(_REFERENCE) == set(available_models())


@pytest.mark.parametrize(
    ("bad_name", "suggestion"),
    [("resnet32x2", "resnet32x4"), ("resnet18", "ResNet18"), ("wrn-40-2", "wrn_40_2")],
)
def test_unknown_name_lists_valid_names_and_suggests_closest(
    bad_name: str, suggestion: str
) -> None:
    with pytest.raises(ValueError) as info:
        create_model(bad_name)
    message = str(info.value)
    assert repr(bad_name) in message
    assert f"Did you mean {suggestion!r}?" in message
    for name in _REQUIRED_NAMES:
        assert name in message


def test_unknown_name_without_close_match_still_lists_names() -> None:
    with pytest.raises(ValueError, match=r"Valid names: .*ShuffleV2") as info:
        create_model("zzzzzzzz")
    assert "Did you mean" not in str(info.value)


def test_bad_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("resnet8", num_classes=0)
    with pytest.raises(TypeError, match="num_classes"):
        create_model("resnet8", num_classes="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="num_classes"):
        create_model("resnet8", num_classes=True)
    with pytest.raises(TypeError, match="name"):
        create_model(8)  # type: ignore[arg-type]


# --------------------------------------------------------------- architecture vs reference


@needs_reference
@pytest.mark.parametrize("name", _REF_NAMES)
def test_state_dict_keys_shapes_and_param_count_match_reference(name: str) -> None:
    ref = _REFERENCE[name]
    state = _model(name).state_dict()
    # Same keys in the same order: the modules are declared layer for layer as the reference.
    assert list(state) == list(ref["state_dict"])
    for key, shape in ref["state_dict"].items():
        assert list(state[key].shape) == shape, key
    assert _n_params(_model(name)) == ref["params"]


@needs_reference
@pytest.mark.parametrize("name", _REF_NAMES)
def test_forward_returns_logits_of_reference_shape(name: str) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = _model(name)(x)
    assert isinstance(out, torch.Tensor)
    assert list(out.shape) == _REFERENCE[name]["out"] == [2, 100]
    assert torch.isfinite(out).all()


@needs_reference
@pytest.mark.parametrize("name", _REF_NAMES)
def test_checkpoint_with_reference_layout_loads_strictly(name: str) -> None:
    """A state dict built only from the reference key/shape list (as a published teacher
    checkpoint would be) loads strictly and its values end up in the model."""
    # Entry i is filled with the value i + 1, so a tensor landing under the wrong key shows.
    ckpt = {}
    for i, (key, shape) in enumerate(_REFERENCE[name]["state_dict"].items()):
        dtype = torch.long if key.endswith("num_batches_tracked") else torch.float32
        ckpt[key] = torch.full(shape, i + 1, dtype=dtype)
    model = copy.deepcopy(_model(name))
    assert load_state_dict_checked(model, {"model": ckpt}) is model
    loaded = model.state_dict()
    for key, value in ckpt.items():
        assert torch.equal(loaded[key], value), key


# One model per family (families share their code); the smallest of each keeps this fast.
_FAMILY_REPRESENTATIVES = [
    "resnet8",
    "wrn_16_1",
    "vgg8",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "ResNet18",
    "ResNet50",
]


@pytest.mark.parametrize("name", _FAMILY_REPRESENTATIVES)
def test_channels_last_matches_default_layout(name: str) -> None:
    model = copy.deepcopy(_model(name))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    # Random-init deep nets in eval mode reach large logits; compare relative to their scale.
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV1", "ShuffleV2", "MobileNetV2"])
def test_train_step_channels_last_gives_finite_grads(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@settings(max_examples=5, deadline=None)
@given(num_classes=st.integers(1, 300), batch=st.integers(1, 3))
def test_num_classes_sets_logit_width(num_classes: int, batch: int) -> None:
    model = create_model("resnet8", num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, num_classes)
    assert model.fc.out_features == num_classes


def test_forward_features_feeds_the_classifier() -> None:
    model = _model("resnet8x4")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 256)
        torch.testing.assert_close(model.fc(feats), model(x))


# ------------------------------------------------------------------------- checkpoint io


def _source_and_target(name: str = "resnet8") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(10)
    source = create_model(name)
    _randomize_bn_stats(source, seed=3)
    torch.manual_seed(11)
    target = create_model(name)
    return source.eval(), target.eval()


def _assert_same_weights_and_outputs(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("container", ["model", "state_dict", "bare", "data_parallel"])
def test_load_pretrained_accepts_container_formats(container: str, tmp_path: Path) -> None:
    source, target = _source_and_target()
    sd = source.state_dict()
    if container == "model":
        # What RepDistiller/mdistiller save: extra training state next to the weights.
        opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
        obj = {
            "epoch": 240,
            "model": sd,
            "best_acc": torch.tensor(73.1),
            "optimizer": opt.state_dict(),
        }
    elif container == "state_dict":
        obj = {"state_dict": sd, "epoch": 3}
    elif container == "bare":
        obj = sd
    else:
        obj = {"model": {f"module.{k}": v for k, v in sd.items()}}
    path = tmp_path / "teacher.pth"
    torch.save(obj, path)
    assert load_pretrained(target, path) is target
    _assert_same_weights_and_outputs(source, target)


def test_load_pretrained_reads_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source, target = _source_and_target("ShuffleV2")
    path = tmp_path / "teacher.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    load_pretrained(target, str(path))
    _assert_same_weights_and_outputs(source, target)


def test_load_pretrained_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "resnet56_vanilla" / "ckpt_epoch_240.pth"
    with pytest.raises(FileNotFoundError, match=r"ckpt_epoch_240\.pth") as info:
        load_pretrained(create_model("resnet8"), path)
    assert str(path) in str(info.value)


def test_num_classes_mismatch_is_reported_with_shapes(tmp_path: Path) -> None:
    path = tmp_path / "cifar10.pth"
    torch.save({"model": create_model("resnet8", num_classes=10).state_dict()}, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(create_model("resnet8", num_classes=100), path)
    message = str(info.value)
    assert "2 shape mismatches" in message
    assert "'fc.weight' checkpoint (10, 64) vs model (100, 64)" in message
    assert "'fc.bias' checkpoint (10,) vs model (100,)" in message
    assert "num_classes" in message
    assert str(path) in message


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    sd = create_model("resnet8").state_dict()
    del sd["fc.bias"]
    sd["projector.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(create_model("resnet8"), path)
    message = str(info.value)
    assert "1 missing key (in the model, not in the checkpoint): 'fc.bias'" in message
    assert "1 unexpected key (in the checkpoint, not in the model): 'projector.weight'" in message
    assert "shape mismatch" not in message


def test_wrong_architecture_reports_counts_and_truncates(tmp_path: Path) -> None:
    source = create_model("resnet20").state_dict()
    target = create_model("resnet8")
    n_unexpected = len(set(source) - set(target.state_dict()))
    path = tmp_path / "resnet20.pth"
    torch.save({"model": source}, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(target, path)
    message = str(info.value)
    assert f"{n_unexpected} unexpected keys" in message
    assert f"… and {n_unexpected - 5} more" in message
    assert "missing key" not in message  # resnet20 holds every resnet8 key with equal shapes


def test_non_strict_skips_key_differences_but_not_shapes(tmp_path: Path) -> None:
    source, target = _source_and_target()
    sd = source.state_dict()
    del sd["fc.weight"], sd["fc.bias"]
    sd["extra.weight"] = torch.ones(2)
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    fc_before = target.fc.weight.detach().clone()
    load_pretrained(target, path, strict=False)
    assert torch.equal(target.fc.weight, fc_before)
    assert torch.equal(target.conv1.weight, source.conv1.weight)

    wrong = {"conv1.weight": torch.zeros(1, 1, 1, 1)}
    torch.save(wrong, path)
    with pytest.raises(ValueError, match=r"1 shape mismatch: 'conv1\.weight'"):
        load_pretrained(target, path, strict=False)


def test_checkpoint_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    """Pre-0.4.1 checkpoints have no ``num_batches_tracked``; BatchNorm fills it in."""
    source, target = _source_and_target()
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    load_pretrained(target, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"net": [1, 2, 3]}, "not a state dict"),
        ({"model": {"fc.weight": [1.0]}}, "not a state dict"),
        ([torch.zeros(1)], "expected a dict"),
    ],
)
def test_non_state_dict_files_are_rejected(obj: object, match: str, tmp_path: Path) -> None:
    path = tmp_path / "weird.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=match):
        load_pretrained(create_model("resnet8"), path)


class _Pickled:
    """Not allowed by torch.load(weights_only=True)."""


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "code.pth"
    torch.save({"model": create_model("resnet8").state_dict(), "extra": _Pickled()}, path)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_pretrained(create_model("resnet8"), path)


def test_load_state_dict_checked_rejects_non_module() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        load_state_dict_checked({"a": 1}, {})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ ImageNet


def _mobilenet_v1_param_count(num_classes: int) -> int:
    """Parameter count from the MobileNetV1 paper's Table 1 (BN adds 2 per channel)."""
    body = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    body += [(512, 512)] * 5 + [(512, 1024), (1024, 1024)]
    total = 3 * 32 * 9 + 2 * 32  # full 3×3 stem conv + BN
    for c_in, c_out in body:
        total += c_in * 9 + 2 * c_in  # depthwise 3×3 + BN
        total += c_in * c_out + 2 * c_out  # pointwise 1×1 + BN
    return total + 1024 * num_classes + num_classes


def test_mobilenet_v1_matches_paper_and_reference_layout() -> None:
    model = create_imagenet_model("MobileNetV1")
    assert isinstance(model, MobileNetV1)
    assert _n_params(model) == _mobilenet_v1_param_count(1000) == 4_231_976
    state = model.state_dict()
    # The CRD/mdistiller layout: model.<block>.<layer>, then fc.
    assert state["model.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["model.1.0.weight"].shape == (32, 1, 3, 3)
    assert state["model.13.3.weight"].shape == (1024, 1024, 1, 1)
    assert state["fc.weight"].shape == (1000, 1024)
    assert not any(k.startswith("model.14.") for k in state)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_mobilenet_v1_channels_last_and_weights_path(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = MobileNetV1(num_classes=7).eval()
    _randomize_bn_stats(source, seed=5)
    path = tmp_path / "mbv1.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = create_imagenet_model("mobilenetv1", num_classes=7, weights_path=path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = source(x)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_imagenet_unknown_name_and_bad_classes() -> None:
    with pytest.raises(ValueError, match="valid names: ResNet18, ResNet34, ResNet50, MobileNetV1"):
        create_imagenet_model("vgg16")
    with pytest.raises(ValueError, match="num_classes"):
        create_imagenet_model("MobileNetV1", num_classes=0)


def test_imagenet_resnet_needs_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install logitkd\[vision\]"):
            create_imagenet_model("ResNet50")
    else:
        model = create_imagenet_model("ResNet18", num_classes=10)
        assert model.fc.out_features == 10


def test_vision_package_imports_without_torchvision() -> None:
    code = "import sys, logitkd.vision; assert 'torchvision' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(_REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
