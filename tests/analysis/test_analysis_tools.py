"""Timing, mis-instruction and LS views: numbers against hand loops, PNGs that really are PNGs,
and the ``logitkd analyze`` commands end to end on the built-in digits set."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from logitkd.analysis.ls_views import (
    difference_heatmap,
    logit_difference,
    logit_mean_std,
    mean_std_histogram,
)
from logitkd.analysis.misinstruction import (
    MisinstructionReport,
    collect_logits,
    lm_misinstruction,
    lm_misinstruction_bar_plot,
    misinstruction_bar_plot,
    misinstruction_markdown,
    per_class_bar_plot,
    per_class_counts,
    teacher_misinstruction,
)
from logitkd.analysis.timing import loss_function, measure_timing, time_loss, timing_markdown
from logitkd.cli import main
from logitkd.vision.data import load_digits_split, normalize

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    assert len(data) > 2000, f"{path} is suspiciously small ({len(data)} bytes)"


def tiny_net(in_ch: int = 3, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_ch, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes)
    )


@pytest.fixture(scope="module")
def digits_test() -> object:
    _, test = load_digits_split(seed=0)
    return test.subset(range(120))


# ---------------------------------------------------------------------------- timing


def test_measure_timing_tiny_models(one_thread: object) -> None:
    torch.manual_seed(0)
    teacher, student = tiny_net(), tiny_net()
    teacher(torch.zeros(1, 3, 8, 8)), student(torch.zeros(1, 3, 8, 8))  # materialise LazyLinear
    rows = measure_timing(
        teacher,
        student,
        variants=("KD", "KD+LoCa", "DKD+LoCa"),
        batch_size=8,
        num_classes=10,
        image_shape=(3, 8, 8),
        dataset_size=100,
        repeats=2,
        warmup=1,
        loss_repeats=3,
    )
    assert [r.variant for r in rows] == ["KD", "KD+LoCa", "DKD+LoCa"]
    for r in rows:
        assert r.loss_s > 0 and r.batch_s > 0
        assert r.epoch_s == pytest.approx(r.batch_s * math.ceil(100 / 8))
        assert r.loss_overhead == pytest.approx(r.loss_s / rows[0].loss_s - 1)
    assert rows[0].loss_overhead == 0.0 and rows[0].batch_overhead == 0.0
    table = timing_markdown(rows, "caption")
    assert table.count("\n| ") == 1 + 3 and "| KD+LoCa |" in table and "vs KD" in table


def test_loss_variants_compute_the_documented_losses() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    from logitkd.losses import kd_loss

    want = kd_loss(s, t, y, temperature=2.0, loca_alpha=0.8, standardize=True)
    assert torch.equal(loss_function("KD+LS+LoCa", temperature=2.0, loca_alpha=0.8)(s, t, y), want)
    assert time_loss(loss_function("KD"), 4, 5, repeats=3, warmup=0) > 0
    with pytest.raises(ValueError, match="unknown variant"):
        loss_function("KD+LOCA")
    with pytest.raises(ValueError, match="batch_size"):
        measure_timing(tiny_net(), tiny_net(), batch_size=0)


def test_timing_cli_with_zoo_names(
    tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: object
) -> None:
    out = tmp_path / "timing.md"
    argv = ["analyze", "timing", "--teacher", "resnet8", "--student", "resnet8"]
    argv += ["--batch-size", "2", "--num-classes", "10", "--image-size", "16", "--repeats", "1"]
    argv += ["--warmup", "0", "--loss-repeats", "2", "--variants", "KD,KD+LoCa", "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert "resnet8 → resnet8" in text and "| KD+LoCa |" in text
    assert main(["analyze", "timing", "--teacher", "resnet9", "--student", "resnet8"]) == 2
    assert "unknown model name 'resnet9'" in capsys.readouterr().err
    # The small models the trainer builds work too (here on digits-shaped 1×8×8 input).
    small = ["analyze", "timing", "--teacher", "mlp", "--student", "mlp_tiny", "--channels", "1"]
    small += ["--batch-size", "4", "--num-classes", "10", "--image-size", "8", "--repeats", "1"]
    small += ["--warmup", "0", "--loss-repeats", "2", "--variants", "KD,KD+LoCa"]
    assert main(small) == 0
    assert "mlp → mlp_tiny" in capsys.readouterr().out


# ---------------------------------------------------------------------------- mis-instruction


def test_per_class_counts_against_hand_loop() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 7, generator=g)
    labels = torch.randint(0, 6, (200,), generator=g)  # class 6 never occurs
    mis, totals = per_class_counts(logits, labels, 7)
    hand_mis, hand_tot = [0] * 7, [0] * 7
    for row, y in zip(logits.tolist(), labels.tolist()):
        hand_tot[y] += 1
        if max(range(7), key=lambda k: row[k]) != y:
            hand_mis[y] += 1
    assert mis.tolist() == hand_mis and totals.tolist() == hand_tot
    rep = MisinstructionReport("t", False, tuple(hand_mis), tuple(hand_tot))
    assert rep.overall == pytest.approx(sum(hand_mis) / 200)
    assert rep.per_class[0] == pytest.approx(hand_mis[0] / hand_tot[0])
    assert math.isnan(rep.per_class[6])


def test_per_class_counts_bad_input() -> None:
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="num_classes=5"):
        per_class_counts(logits, torch.zeros(4, dtype=torch.long), 5)
    with pytest.raises(TypeError, match="integer"):
        per_class_counts(logits, torch.zeros(4), 3)
    with pytest.raises(ValueError, match="outside"):
        per_class_counts(logits, torch.full((4,), 3), 3)
    with pytest.raises(ValueError, match=">= 0"):
        per_class_counts(logits, torch.full((4,), -100), 3)


def test_teacher_misinstruction_matches_sample_by_sample(digits_test: object) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ds = digits_test
    report = teacher_misinstruction(model, ds, label="lin", batch_size=32)
    hand_mis = [0] * 10
    with torch.no_grad():
        for img, y in zip(ds.images, ds.labels):
            x = normalize(img.unsqueeze(0), ds.mean, ds.std)
            if int(model(x).argmax()) != int(y):
                hand_mis[int(y)] += 1
    assert list(report.mis_counts) == hand_mis
    assert list(report.totals) == torch.bincount(ds.labels, minlength=10).tolist()
    aug1 = teacher_misinstruction(model, ds, augment=True, padding=2, seed=5, batch_size=32)
    aug2 = teacher_misinstruction(model, ds, augment=True, padding=2, seed=5, batch_size=32)
    assert aug1.mis_counts == aug2.mis_counts and aug1.totals == report.totals
    assert aug1.augmented and not report.augmented
    logits, labels = collect_logits(model, ds, batch_size=50, limit=10)
    assert logits.shape == (10, 10) and torch.equal(labels, ds.labels[:10])


def test_misinstruction_outputs(tmp_path: Path) -> None:
    reports = [
        MisinstructionReport("resnet56", False, (1, 2, 0), (10, 10, 10), ("a", "b", "c")),
        MisinstructionReport("resnet56", True, (3, 4, 1), (10, 10, 10), ("a", "b", "c")),
        MisinstructionReport("resnet110", False, (0, 1, 0), (10, 10, 10), ("a", "b", "c")),
        MisinstructionReport("resnet110", True, (2, 2, 2), (10, 10, 10), ("a", "b", "c")),
    ]
    table = misinstruction_markdown(reports)
    assert "| resnet56 | crop+flip | 30 | 26.67 | 30.00 | 40.00 | 10.00 |" in table
    assert_png(misinstruction_bar_plot(reports, tmp_path / "fig2.png"))
    assert_png(per_class_bar_plot(reports, tmp_path / "per_class.png"))


class FakeLM(nn.Module):
    """Returns fixed logits (B, T, V) whatever the input, in a ``.logits`` attribute."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[: input_ids.shape[0]])


def test_lm_misinstruction_per_position_type(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, v = 3, 6, 11
    logits = torch.randn(b, t, v, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = -100  # prompt
    labels[2, 5] = -100  # padding
    batch = {"input_ids": torch.zeros(b, t, dtype=torch.long), "labels": labels}
    stats = lm_misinstruction(FakeLM(logits), [batch])
    first_mis = first_n = rest_mis = rest_n = 0
    for i in range(b):
        for pos in range(t - 1):
            target = int(labels[i, pos + 1])
            if target == -100:
                continue
            wrong = int(logits[i, pos].argmax()) != target
            if int(labels[i, pos]) == -100:
                first_mis, first_n = first_mis + wrong, first_n + 1
            else:
                rest_mis, rest_n = rest_mis + wrong, rest_n + 1
    assert stats.n_first == first_n and stats.n_rest == rest_n
    assert stats.ratio_first == pytest.approx(first_mis / first_n)
    assert stats.ratio_rest == pytest.approx(rest_mis / rest_n)
    assert stats.ratio == pytest.approx((first_mis + rest_mis) / (first_n + rest_n))
    assert_png(lm_misinstruction_bar_plot({"teacher": stats}, tmp_path / "lm.png"))


# ---------------------------------------------------------------------------- LS views


def test_logit_mean_std_and_difference_against_hand() -> None:
    g = torch.Generator().manual_seed(4)
    t = torch.randn(40, 5, generator=g) * 3 + 1
    s = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)  # class 4 has no sample
    mean, std = logit_mean_std(t)
    assert np.allclose(mean.numpy(), t.double().numpy().mean(axis=1))
    assert np.allclose(std.numpy(), t.double().numpy().std(axis=1, ddof=0))
    mat = logit_difference(t, s, y)
    tn, sn, yn = t.double().numpy(), s.double().numpy(), y.numpy()
    for c in range(4):
        assert np.allclose(mat[c].numpy(), (tn[yn == c] - sn[yn == c]).mean(axis=0))
    assert torch.isnan(mat[4]).all()
    vec = logit_difference(t, s)
    assert np.allclose(vec.numpy(), (tn - sn).mean(axis=0))

    def z(a: np.ndarray) -> np.ndarray:
        m = a.mean(axis=1, keepdims=True)
        return (a - m) / (a.std(axis=1, keepdims=True) + 1e-7)

    zvec = logit_difference(t, s, standardize=True)
    assert np.allclose(zvec.numpy(), (z(tn) - z(sn)).mean(axis=0))


def test_ls_views_bad_input() -> None:
    t = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same number of classes"):
        logit_difference(t, torch.randn(4, 5))
    with pytest.raises(ValueError, match="contains NaN"):
        logit_mean_std(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        logit_mean_std(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=">= 0"):
        logit_difference(t, t, torch.tensor([0, 1, -100, 2]))


def test_ls_view_pngs(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    t = torch.randn(300, 10, generator=g) * 4
    kd = t * 0.9 + torch.randn(300, 10, generator=g)
    ls = torch.randn(300, 10, generator=g)
    y = torch.randint(0, 10, (300,), generator=g)
    hist = mean_std_histogram({"teacher": t, "KD": kd, "KD+LS": ls}, tmp_path / "h.png", bins=20)
    assert_png(hist)
    diffs = {"KD": logit_difference(t, kd, y), "KD+LS": logit_difference(t, ls, y)}
    assert_png(difference_heatmap(diffs, tmp_path / "d.png"))
    assert_png(difference_heatmap({"KD": logit_difference(t, kd)}, tmp_path / "v.png"))


# ---------------------------------------------------------------------------- CLI end to end


def test_misinstruction_and_ls_views_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: object
) -> None:
    from logitkd.vision.models import create_model

    ckpts = {}
    for name, seed in (("teacher", 0), ("kd", 1), ("ls", 2)):
        torch.manual_seed(seed)
        ckpts[name] = tmp_path / f"{name}.pt"
        torch.save({"model": create_model("resnet8", 10).state_dict()}, ckpts[name])
    common = ["--dataset", "digits", "--limit", "24", "--batch-size", "24"]
    out = tmp_path / "mis"
    argv = ["analyze", "misinstruction", "--teacher", f"resnet8={ckpts['teacher']}"]
    argv += ["--teacher", f"other:resnet8={ckpts['kd']}", "--out", str(out), *common]
    assert main(argv) == 0
    rows = json.loads((out / "misinstruction.json").read_text())
    assert [(r["teacher"], r["augmented"]) for r in rows] == [
        ("resnet8", False),
        ("resnet8", True),
        ("other", False),
        ("other", True),
    ]
    assert all(sum(r["totals"]) == 24 for r in rows)
    assert_png(out / "misinstruction.png")
    assert_png(out / "misinstruction_per_class.png")

    out2 = tmp_path / "ls"
    argv = ["analyze", "ls-views", "--teacher", f"resnet8={ckpts['teacher']}"]
    argv += ["--student", f"KD:resnet8={ckpts['kd']}", "--student", f"KD+LS:resnet8={ckpts['ls']}"]
    assert main([*argv, "--out", str(out2), *common]) == 0
    for name in ("logit_mean_std.png", "logit_difference.png", "logit_difference_zscore.png"):
        assert_png(out2 / name)

    capsys.readouterr()
    missing = ["analyze", "misinstruction", "--teacher", "resnet8=nope.pt", "--out", str(out)]
    assert main([*missing, *common]) == 2
    assert "checkpoint for 'resnet8' not found: nope.pt" in capsys.readouterr().err
    bad_spec = ["analyze", "misinstruction", "--teacher", "resnet8", "--out", str(out)]
    assert main([*bad_spec, *common]) == 2
    assert "NAME=CHECKPOINT" in capsys.readouterr().err
    wrong_classes = [*argv, "--out", str(out2), *common, "--num-classes", "100"]
    assert main(wrong_classes) == 2
    assert "does not match" in capsys.readouterr().err


def test_misinstruction_cli_with_a_small_model(
    tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: object
) -> None:
    """Models the trainer builds for the data (here `mlp` on 1x8x8 digits) load too."""
    from logitkd.vision.models_small import build_model

    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 8, 8))
    ckpt = tmp_path / "mlp.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "mis"
    argv = ["analyze", "misinstruction", "--teacher", f"mlp={ckpt}", "--out", str(out)]
    argv += ["--dataset", "digits", "--limit", "24", "--batch-size", "24"]
    assert main(argv) == 0
    rows = json.loads((out / "misinstruction.json").read_text())
    assert {r["teacher"] for r in rows} == {"mlp"}
    for r in rows:  # overall ratio = mis-instructed / all, from the per-class counts
        assert sum(r["totals"]) == 24
        assert r["overall"] == pytest.approx(sum(r["mis_counts"]) / 24)
