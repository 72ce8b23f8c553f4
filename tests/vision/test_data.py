"""Tests for logitkd.vision.data: readers checked against files written here by hand, batched
augmentation against a per-sample reference loop, sharding against torch's DistributedSampler."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from logitkd.vision.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASET_NAMES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ArrayDataset,
    ImageNetEvalTransform,
    ImageNetTrainTransform,
    batches_per_epoch,
    build_dataset,
    crop_flip,
    epoch_indices,
    iterate_batches,
    load_cifar,
    load_digits_split,
    load_fashion_mnist,
    load_image_folder,
    normalize,
    pad_to_size,
    random_crop_flip,
    random_resized_crop_box,
    repeat_channels,
    sample_crop_flip_params,
)

# tests/vision/test_data.py → repo root is parents[2]; shared/ sits beside the repo.
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CIFAR10_REAL = SHARED / "data" / "cifar10-jpeg"
FMNIST_REAL = SHARED / "data" / "fashion-mnist"


# --------------------------------------------------------------------------------------------
# CIFAR writers
# --------------------------------------------------------------------------------------------


def _key(k: str, key_type: str) -> str | bytes:
    return k.encode() if key_type == "bytes" else k


def _dump(path: Path, obj: dict, key_type: str, protocol: int) -> None:
    path.write_bytes(pickle.dumps({_key(k, key_type): v for k, v in obj.items()}, protocol))


def write_cifar(
    root: Path, name: str, n: int, key_type: str = "str", protocol: int = 4, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write a tiny CIFAR directory with ``n`` random images per batch file; return its content."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, labels_key, k = (
            "cifar-10-batches-py",
            [
                *(f"data_batch_{i}" for i in range(1, 6)),
                "test_batch",
            ],
            "labels",
            10,
        )
        meta_name, meta = "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    else:
        folder, files, labels_key, k = "cifar-100-python", ["train", "test"], "fine_labels", 100
        meta_name = "meta"
        meta = {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"g{i}" for i in range(20)],
        }
    if key_type == "bytes":  # as the original Python 2 files: names are bytes too
        meta = {mk: [s.encode() for s in mv] for mk, mv in meta.items()}
    d = root / folder
    d.mkdir(parents=True)
    content = {}
    for f in files:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, k, size=n).tolist()
        batch = {"data": data, labels_key: labels, "batch_label": f"batch {f}"}
        if name == "cifar100":
            batch["coarse_labels"] = rng.integers(0, 20, size=n).tolist()
        _dump(d / f, batch, key_type, protocol)
        content[f] = (data, labels)
    _dump(d / meta_name, meta, key_type, protocol)
    return content


def hwc_from_row(row: np.ndarray) -> np.ndarray:
    """The 32×32×3 image of one CIFAR row: R, G, B planes of 1024 values, each row-major."""
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    for c in range(3):
        for y in range(32):
            img[y, :, c] = row[c * 1024 + y * 32 : c * 1024 + y * 32 + 32]
    return img


@pytest.mark.parametrize("key_type", ["bytes", "str"])
@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_pixels_and_labels_exact(tmp_path, key_type, protocol, point_at):
    content = write_cifar(tmp_path, "cifar10", n=3, key_type=key_type, protocol=protocol)
    root = tmp_path if point_at == "parent" else tmp_path / "cifar-10-batches-py"
    train = load_cifar(root, "cifar10", "train")
    test = load_cifar(root, "cifar10", "test")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.classes == tuple(f"c{i}" for i in range(10))
    assert train.mean == CIFAR10_MEAN and train.std == CIFAR10_STD
    rows = np.concatenate([content[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = [y for i in range(1, 6) for y in content[f"data_batch_{i}"][1]]
    for i in range(15):
        np.testing.assert_array_equal(
            train.images[i].permute(1, 2, 0).numpy(), hwc_from_row(rows[i])
        )
    assert train.labels.tolist() == labels
    np.testing.assert_array_equal(
        test.images[2].permute(1, 2, 0).numpy(), hwc_from_row(content["test_batch"][0][2])
    )
    # one pixel by the raw formula: green channel of pixel (y=5, x=7) is column 1024 + 5·32 + 7
    assert int(train.images[4, 1, 5, 7]) == int(rows[4, 1024 + 5 * 32 + 7])


@pytest.mark.parametrize("key_type", ["bytes", "str"])
def test_cifar100_fine_labels_and_names(tmp_path, key_type):
    content = write_cifar(tmp_path, "cifar100", n=4, key_type=key_type)
    for split, f in (("train", "train"), ("test", "test")):
        ds = load_cifar(tmp_path, "cifar100", split)
        assert ds.num_classes == 100 and len(ds) == 4 and ds.classes[99] == "f99"
        assert ds.labels.tolist() == content[f][1]
        for i in range(4):
            np.testing.assert_array_equal(
                ds.images[i].permute(1, 2, 0).numpy(), hwc_from_row(content[f][0][i])
            )


def test_cifar_reads_numpy1_module_path_of_original_files(tmp_path):
    # The original release was pickled by Python 2 / numpy 1: globals name numpy.core.multiarray.
    write_cifar(tmp_path, "cifar10", n=2, key_type="bytes", protocol=2)
    d = tmp_path / "cifar-10-batches-py"
    for f in d.iterdir():
        f.write_bytes(f.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (d / "test_batch").read_bytes()
    assert load_cifar(tmp_path, "cifar10", "test").images.shape == (2, 3, 32, 32)


def test_cifar_missing_file_is_named(tmp_path):
    write_cifar(tmp_path, "cifar10", n=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar(tmp_path, "cifar10", "train")
    load_cifar(tmp_path, "cifar10", "test")  # the test split does not need it
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"batches\.meta"):
        load_cifar(tmp_path, "cifar10", "test")


def test_cifar_missing_folder_names_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar(tmp_path, "cifar100", "train")


def test_cifar_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name"):
        load_cifar(tmp_path, "cifar1000", "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        load_cifar(tmp_path, "cifar10", "val")  # type: ignore[arg-type]


def _corrupt(tmp_path: Path, f: str, payload: bytes | dict) -> Path:
    write_cifar(tmp_path, "cifar10", n=2)
    path = tmp_path / "cifar-10-batches-py" / f
    path.write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload))
    return path


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not a pickle at all", "test_batch.*not a readable"),
        ([1, 2, 3], "test_batch.*dict"),
        ({"data": np.zeros((2, 1000), np.uint8), "labels": [0, 1]}, "test_batch.*'data'.*3072"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "test_batch.*'data'.*uint8"),
        ({"data": np.zeros((2, 3072), np.uint8)}, "test_batch.*'labels'"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "test_batch.*'labels'.*2"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"test_batch.*\[0, 10\)"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.0, 1.5]}, "test_batch.*integers"),
    ],
)
def test_cifar_corrupt_batch_names_file_and_field(tmp_path, payload, match):
    if isinstance(payload, list):
        payload = pickle.dumps(payload)
    _corrupt(tmp_path, "test_batch", payload)
    with pytest.raises(ValueError, match=match):
        load_cifar(tmp_path, "cifar10", "test")


def test_cifar_bad_meta(tmp_path):
    _corrupt(tmp_path, "batches.meta", {"label_names": ["a", "b"]})
    with pytest.raises(ValueError, match=r"batches\.meta.*label_names"):
        load_cifar(tmp_path, "cifar10", "test")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_refuses_code_globals(tmp_path):
    _corrupt(tmp_path, "test_batch", pickle.dumps({"data": _Evil(), "labels": []}))
    with pytest.raises(ValueError, match="refusing global"):
        load_cifar(tmp_path, "cifar10", "test")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST IDX
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding: magic (0x0000 08 ndim) then big-endian uint32 sizes then the bytes."""
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fmnist(root: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            name = f"{prefix}-{kind}-idx{nd}-ubyte"
            raw = idx_bytes(arr)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_round_trip(tmp_path, gz):
    content = write_fmnist(tmp_path, 5, 3, gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_fashion_mnist(tmp_path, split)
        images, labels = content[prefix]
        assert ds.images.shape == (len(labels), 1, 28, 28) and ds.images.dtype == torch.uint8
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
        assert ds.num_classes == 10 and ds.mean == FASHION_MNIST_MEAN
    # the parent folder of fashion-mnist/ works too
    write_fmnist(tmp_path / "p" / "fashion-mnist", 2, 2, gz)
    assert len(load_fashion_mnist(tmp_path / "p", "test")) == 2


def test_fashion_mnist_wrong_magic(tmp_path):
    write_fmnist(tmp_path, 2, 2, gz=True)
    bad = idx_bytes(np.zeros((2, 28, 28), np.uint8), magic=2049)  # a labels magic on images
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bad))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*magic number 2049"):
        load_fashion_mnist(tmp_path, "train")


def test_fashion_mnist_size_and_count_errors(tmp_path):
    write_fmnist(tmp_path, 3, 2, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])  # truncated by one byte
    with pytest.raises(
        ValueError, match=r"t10k-images-idx3-ubyte.*1568 bytes of data, file holds 1567"
    ):
        load_fashion_mnist(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    with pytest.raises(ValueError, match=r"3 images but.*2 labels"):
        load_fashion_mnist(tmp_path, "test")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"train-labels.*shorter"):
        load_fashion_mnist(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(ValueError, match="corrupt gzip"):
        load_fashion_mnist(tmp_path, "train")


def test_fashion_mnist_missing_file(tmp_path):
    write_fmnist(tmp_path, 2, 2, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path, "test")


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def crop_flip_reference(images, top, left, flipped, padding):
    """Slow per-sample numpy reference: zero-pad, slice the window, mirror."""
    x = images.numpy()
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        p = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
        p[:, padding : padding + h, padding : padding + w] = x[i]
        win = p[:, int(top[i]) : int(top[i]) + h, int(left[i]) : int(left[i]) + w]
        out[i] = win[:, :, ::-1] if bool(flipped[i]) else win
    return out


shapes = st.tuples(
    st.integers(1, 5), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 4)
)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from(["uint8", "float32"]))
def test_crop_flip_matches_per_sample_reference(shape, seed, dtype):
    n, c, h, w, padding = shape
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, c, h, w), generator=g).to(getattr(torch, dtype))
    top, left, flipped = sample_crop_flip_params(n, padding, generator=g)
    out = crop_flip(images, top, left, flipped, padding)
    assert out.dtype == images.dtype and out.shape == images.shape
    np.testing.assert_array_equal(
        out.numpy(), crop_flip_reference(images, top, left, flipped, padding)
    )


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_random_crop_flip_outputs_are_windows_of_padded_input(shape, seed):
    n, c, h, w, padding = shape
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    out = random_crop_flip(images, padding, generator=g)
    for i in range(n):  # some (top, left, flip) must reproduce each output image
        candidates = [
            crop_flip_reference(images[i : i + 1], [t], [left], [f], padding)[0]
            for t in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            for f in (False, True)
        ]
        assert any(np.array_equal(out[i].numpy(), cand) for cand in candidates)


def test_random_crop_flip_is_reproducible_and_default_is_cifar():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(images, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (16, 3, 32, 32)
    # padding=4 by default: a window can expose up to 4 zero rows and never more
    ones = torch.ones(4000, 1, 32, 32)
    out = random_crop_flip(ones, generator=torch.Generator().manual_seed(0))
    zero_rows = (out[:, 0, :, 16] == 0).sum(1)
    assert int(zero_rows.max()) == 4 and int(zero_rows.min()) == 0


def test_flip_probability_and_offsets_uniform():
    n = 8000
    ramp = torch.arange(8, dtype=torch.float32).expand(n, 1, 8, 8)  # x-coordinate as value
    out = random_crop_flip(ramp, padding=0, generator=torch.Generator().manual_seed(1))
    flipped = out[:, 0, 0, 0] == 7
    assert torch.all(flipped | (out[:, 0, 0, 0] == 0))
    assert abs(flipped.float().mean().item() - 0.5) < 0.03  # ±5σ for n=8000
    top, left, _ = sample_crop_flip_params(9000, 4, generator=torch.Generator().manual_seed(2))
    for t in (top, left):
        counts = torch.bincount(t, minlength=9)
        assert counts.numel() == 9 and torch.all((counts - 1000).abs() < 160)
    no_flip = sample_crop_flip_params(100, 4, flip=False, generator=torch.Generator())[2]
    assert not no_flip.any()


def test_crop_flip_rejects_bad_offsets():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="top"):
        crop_flip(x, torch.tensor([0, 9]), torch.tensor([0, 0]), torch.tensor([False, False]), 4)
    with pytest.raises(ValueError, match="left"):
        crop_flip(x, torch.tensor([0, 0]), torch.tensor([-1, 0]), torch.tensor([False, False]), 4)
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(x, padding=-1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop_flip(torch.zeros(3, 4, 4))


def test_normalize_formula_and_errors():
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    out = normalize(x, CIFAR10_MEAN, CIFAR10_STD)
    for c in range(3):
        expected = (x[:, c].double() / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        torch.testing.assert_close(out[:, c].double(), expected, rtol=1e-6, atol=1e-6)
    assert out.dtype == torch.float32
    torch.testing.assert_close(normalize(x.float() / 255, CIFAR10_MEAN, CIFAR10_STD), out)
    with pytest.raises(ValueError, match="per channel"):
        normalize(x, (0.5,), (0.5,))
    with pytest.raises(TypeError, match="uint8 or floating"):
        normalize(x.long(), CIFAR10_MEAN, CIFAR10_STD)


# --------------------------------------------------------------------------------------------
# Batching and sharding
# --------------------------------------------------------------------------------------------


def indexed_dataset(n: int) -> ArrayDataset:
    """Image i is filled with i % 256 and labelled i, so a batch tells which samples it holds."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return ArrayDataset(images, torch.arange(n), num_classes=n, mean=(0.25,), std=(0.5,))


def test_iterate_batches_covers_each_index_once_and_normalises():
    ds = indexed_dataset(103)
    seen = []
    for images, labels in iterate_batches(ds, 10, generator=torch.Generator().manual_seed(0)):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        expected = ((labels % 256).float() / 255 - 0.25) / 0.5
        torch.testing.assert_close(images[:, 0, 0, 0], expected)
        seen += labels.tolist()
    assert sorted(seen) == list(range(103)) and seen != list(range(103))
    unshuffled = [y for _, ys in iterate_batches(ds, 10, shuffle=False) for y in ys.tolist()]
    assert unshuffled == list(range(103))


def test_iterate_batches_deterministic_per_seed():
    ds = indexed_dataset(50)

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return [y for _, ys in iterate_batches(ds, 7, generator=g) for y in ys.tolist()]

    assert order(5) == order(5) and order(5) != order(6)


def test_iterate_batches_drop_last_and_count():
    ds = indexed_dataset(23)
    sizes = [len(y) for _, y in iterate_batches(ds, 5, shuffle=False, drop_last=True)]
    assert sizes == [5, 5, 5, 5] == [5] * batches_per_epoch(23, 5, drop_last=True)
    sizes = [len(y) for _, y in iterate_batches(ds, 5, shuffle=False)]
    assert sizes == [5, 5, 5, 5, 3] and len(sizes) == batches_per_epoch(23, 5)


def test_iterate_batches_augments_before_normalising():
    ds = indexed_dataset(8)
    received = []

    def augment(x):
        received.append(x)
        return torch.zeros_like(x)  # all black

    batches = list(iterate_batches(ds, 4, shuffle=False, augment=augment, device="cpu"))
    assert all(r.dtype == torch.uint8 for r in received)
    assert torch.allclose(batches[0][0], torch.full_like(batches[0][0], -0.5))  # (0 - .25)/.5


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 60),
    world_size=st.integers(1, 5),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 3),
    shuffle=st.booleans(),
)
def test_ddp_shards_match_distributed_sampler(n, world_size, batch_size, seed, epoch, shuffle):
    ds = indexed_dataset(n)
    shards, counts = [], []
    for rank in range(world_size):
        g = torch.Generator().manual_seed(seed + epoch)  # what every rank would build
        batches = list(
            iterate_batches(
                ds, batch_size, shuffle=shuffle, generator=g, rank=rank, world_size=world_size
            )
        )
        counts.append(len(batches))
        shards.append([y for _, ys in batches for y in ys.tolist()])
        sampler = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        sampler.set_epoch(epoch)
        assert shards[-1] == list(sampler)  # torch's own sampler as the reference
    assert len(set(counts)) == 1 and counts[0] == batches_per_epoch(
        n, batch_size, world_size=world_size
    )
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))
    assert len(flat) == math.ceil(n / world_size) * world_size
    if n % world_size == 0:  # no padding: shards are disjoint
        assert len(set(flat)) == n


def test_epoch_indices_argument_errors():
    with pytest.raises(ValueError, match="generator"):
        epoch_indices(10, shuffle=True, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        epoch_indices(10, rank=2, world_size=2, generator=torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(indexed_dataset(3), 0)  # checked at call time, not on first next()


def test_array_dataset_validation_and_subset():
    ds = indexed_dataset(6)
    assert len(ds) == 6 and ds.image_shape == (1, 2, 2)
    sub = ds.subset([4, 1])
    assert sub.labels.tolist() == [4, 1] and torch.equal(sub[0][0], ds[4][0])
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(ds.images, ds.labels, num_classes=3, mean=(0.0,), std=(1.0,))
    with pytest.raises(TypeError, match="int64"):
        ArrayDataset(ds.images, ds.labels.int(), num_classes=6, mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="one value per channel"):
        ArrayDataset(ds.images, ds.labels, num_classes=6, mean=(0.0, 0.0), std=(1.0, 1.0))
    with pytest.raises(ValueError, match="4-D"):
        ArrayDataset(ds.images[0], ds.labels, num_classes=6, mean=(0.0,), std=(1.0,))


# --------------------------------------------------------------------------------------------
# Digits demo set
# --------------------------------------------------------------------------------------------


def test_digits_split_is_stratified_and_fixed():
    train, test = load_digits_split(seed=0)
    assert len(train) + len(test) == 1797 and train.image_shape == (1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) >= 0.0 and float(train.images.max()) <= 1.0
    total = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    test_counts = torch.bincount(test.labels, minlength=10)
    assert torch.all((test_counts.double() - total.double() * len(test) / 1797).abs() <= 1.0)
    torch.testing.assert_close(
        torch.tensor(train.mean[0]), train.images.mean(), rtol=1e-5, atol=1e-6
    )
    again, _ = load_digits_split(seed=0)
    other, _ = load_digits_split(seed=1)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert not torch.equal(other.labels, train.labels)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=1.5)


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def expected_normalized(hwc: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(hwc.astype(np.float64) / 255).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    return ((x - mean) / std).float()


def test_image_folder_eval_centre_crop_exact(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, size=(256, 300, 3), dtype=np.uint8)  # h=256: no resize needed
    write_png(tmp_path / "val" / "cat" / "a.png", big)
    write_png(tmp_path / "val" / "dog" / "b.png", np.full((40, 90, 3), (10, 200, 90), np.uint8))
    ds = load_image_folder(tmp_path, "val")
    assert ds.classes == ("cat", "dog") and len(ds) == 2 and ds.targets == [0, 1]
    image, label = ds[0]
    assert label == 0 and image.shape == (3, 224, 224) and image.dtype == torch.float32
    # CenterCrop(224) of 256×300 (h×w): top = 16, left = 38
    torch.testing.assert_close(image, expected_normalized(big[16:240, 38:262]))
    # a flat image stays flat through resize (shorter side 40 → 256) and crop
    image, label = ds[1]
    assert label == 1
    torch.testing.assert_close(
        image, expected_normalized(np.full((224, 224, 3), (10, 200, 90), np.uint8))
    )
    # "test" reads val/ too
    assert len(load_image_folder(tmp_path, "test")) == 2


def test_image_folder_train_transform(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    write_png(tmp_path / "train" / "a" / "x.png", img)
    write_png(tmp_path / "train" / "b" / "y.PNG", rng.integers(0, 256, (60, 80, 3), np.uint8))
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, "train")
    assert len(ds) == 2 and ds.num_classes == 2
    out, label = ds[1]
    assert out.shape == (3, 224, 224) and label == 1 and torch.isfinite(out).all()
    # whole-image crop at the same size is the identity, so each draw is the image or its mirror
    g = torch.Generator().manual_seed(0)
    ds.transform = ImageNetTrainTransform(scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=g)
    plain, mirrored = expected_normalized(img), expected_normalized(img[:, ::-1].copy())
    kinds = set()
    for _ in range(12):
        out, _ = ds[0]
        if torch.allclose(out, plain, atol=1e-6):
            kinds.add("plain")
        elif torch.allclose(out, mirrored, atol=1e-6):
            kinds.add("mirrored")
        else:
            raise AssertionError("train transform produced neither the image nor its mirror")
    assert kinds == {"plain", "mirrored"}


def test_image_folder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        load_image_folder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        load_image_folder(tmp_path, "train")
    (tmp_path / "train" / "empty").mkdir()
    write_png(tmp_path / "train" / "full" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"no images.*empty"):
        load_image_folder(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="missing_class"):
        load_image_folder(tmp_path, "train", classes=["full", "missing_class"])
    ds = load_image_folder(tmp_path, "train", classes=["full"], transform=ImageNetEvalTransform())
    assert ds.classes == ("full",)
    with pytest.raises(ValueError, match="split"):
        load_image_folder(tmp_path, "valid")  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(width=st.integers(1, 600), height=st.integers(1, 600), seed=st.integers(0, 10_000))
def test_random_resized_crop_box_in_bounds(width, height, seed):
    left, top, w, h = random_resized_crop_box(
        width, height, generator=torch.Generator().manual_seed(seed)
    )
    assert 0 < w <= width and 0 < h <= height
    assert 0 <= left <= width - w and 0 <= top <= height - h


def test_random_resized_crop_box_fallback_clamps_ratio():
    # no 90%-area crop of a 1000×10 image has a ratio in [3/4, 4/3]: centred 13×10 fallback
    box = random_resized_crop_box(1000, 10, scale=(0.9, 1.0), generator=torch.Generator())
    assert box == ((1000 - 13) // 2, 0, 13, 10)


# --------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------


def test_build_dataset_dispatch(tmp_path):
    write_cifar(tmp_path, "cifar10", n=2)
    assert build_dataset("cifar10", tmp_path, "test").name == "cifar10"
    write_fmnist(tmp_path, 2, 3, gz=True)
    assert len(build_dataset("fashion-mnist", tmp_path, "test")) == 3
    assert len(build_dataset("digits", split="test", seed=0)) == 450
    with pytest.raises(ValueError, match=", ".join(DATASET_NAMES)):
        build_dataset("svhn", tmp_path)
    with pytest.raises(ValueError, match="root"):
        build_dataset("cifar100")


# --------------------------------------------------------------------------------------------
# Real data in ../shared (skipped when absent)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CIFAR10_REAL.is_dir(), reason="shared CIFAR-10 not present")
def test_real_cifar10_loads_fast():
    start = time.perf_counter()
    train = load_cifar(CIFAR10_REAL, "cifar10", "train")
    elapsed = time.perf_counter() - start
    test = load_cifar(CIFAR10_REAL / "cifar-10-batches-py", "cifar10", "test")
    assert elapsed < 10.0, f"loading 50k CIFAR-10 images took {elapsed:.1f} s"
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 5000))
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    # the published statistics describe this (re-encoded) copy to within 0.01
    sample = train.images[::10].float() / 255
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    torch.testing.assert_close(mean, torch.tensor(CIFAR10_MEAN), atol=0.01, rtol=0)
    torch.testing.assert_close(std, torch.tensor(CIFAR10_STD), atol=0.01, rtol=0)


@pytest.mark.skipif(not FMNIST_REAL.is_dir(), reason="shared Fashion-MNIST not present")
def test_real_fashion_mnist():
    train = load_fashion_mnist(FMNIST_REAL, "train")
    test = load_fashion_mnist(FMNIST_REAL.parent, "test")
    assert train.images.shape == (60_000, 1, 28, 28) and test.images.shape == (10_000, 1, 28, 28)
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    x = train.images.float() / 255
    assert abs(x.mean().item() - FASHION_MNIST_MEAN[0]) < 0.005
    assert abs(x.std().item() - FASHION_MNIST_STD[0]) < 0.005


# --------------------------------------------------------------------------------------------
# Shape adapters: grey 28×28 sets through 3×32×32 CIFAR-zoo models
# --------------------------------------------------------------------------------------------


def _grey_set(n: int = 5, h: int = 28, w: int = 28, seed: int = 0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 1, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ArrayDataset(images, labels, 10, FASHION_MNIST_MEAN, FASHION_MNIST_STD, "grey")


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), extra=st.integers(0, 5))
def test_pad_to_size_centres_and_zero_fills(h, w, extra):
    ds = _grey_set(3, h, w)
    size = max(h, w) + extra
    out = pad_to_size(ds, size)
    assert out.images.shape == (3, 1, size, size)
    top, left = (size - h) // 2, (size - w) // 2
    # Per-pixel reference: the window holds the input, everything else is 0 (input pixels are >= 1).
    for i in range(size):
        for j in range(size):
            inside = top <= i < top + h and left <= j < left + w
            expected = ds.images[:, :, i - top, j - left] if inside else torch.zeros(3, 1).byte()
            assert torch.equal(out.images[:, :, i, j], expected)
    assert torch.equal(out.labels, ds.labels) and out.mean == ds.mean and out.std == ds.std


def test_pad_to_size_errors_and_identity():
    ds = _grey_set()
    assert pad_to_size(ds, 28) is ds
    with pytest.raises(ValueError, match="smaller than"):
        pad_to_size(ds, 27)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive int"):
            pad_to_size(ds, bad)


def test_repeat_channels_normalises_every_channel_like_the_grey_one():
    ds = _grey_set()
    out = repeat_channels(ds, 3)
    assert out.images.shape == (5, 3, 28, 28) and out.images.is_contiguous()
    assert out.mean == FASHION_MNIST_MEAN * 3 and out.std == FASHION_MNIST_STD * 3
    grey = normalize(ds.images, ds.mean, ds.std)
    rgb = normalize(out.images, out.mean, out.std)
    for c in range(3):
        assert torch.equal(rgb[:, c : c + 1], grey)
    assert repeat_channels(out, 3) is out  # already 3 channels
    with pytest.raises(ValueError, match="only a 1-channel set"):
        repeat_channels(out, 4)


def test_fashion_mnist_through_a_cifar_zoo_model(tmp_path):
    """data.pad_to=32 data.channels=3 makes a 1×28×28 set trainable by a CIFAR resnet."""
    from logitkd.vision.config import ConfigError, load_vision_config
    from logitkd.vision.trainer import Trainer, build_datasets

    root = tmp_path / "fmnist"
    write_fmnist(root, 40, 20, gz=True)
    args = [
        "data.name=fashion_mnist",
        f"data.root={root}",
        "data.pad_to=32",
        "data.channels=3",
        "data.batch_size=8",
        "model.name=resnet8",
        "method.name=ce",
        "schedule.epochs=1",
        "schedule.milestones=[]",
        "logging.progress=false",
        "logging.tensorboard=false",
        "cpu_threads=1",
        f"run_dir={tmp_path / 'run'}",
    ]
    cfg = load_vision_config(None, args)
    train, test = build_datasets(cfg)
    assert train.image_shape == (3, 32, 32) and test.image_shape == (3, 32, 32)
    result = Trainer(cfg).fit()
    assert 0.0 <= result.best_top1 <= 100.0
    with pytest.raises(ConfigError, match=r"data\.pad_to must be a positive int"):
        load_vision_config(None, [*args, "data.pad_to=0"])
    with pytest.raises(ConfigError, match="in-memory sets"):
        load_vision_config(None, [*args, "data.name=imagenet"])
