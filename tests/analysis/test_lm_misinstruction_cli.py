"""``logitkd analyze lm-misinstruction`` end to end on two tiny, briefly trained teachers.

The teachers use different tokenizers (GPT-2 style without bos, Llama style with bos, different
vocabulary sizes), so each must read the data through its own. The counts in the JSON are checked
against a count made here, one unpadded example at a time: the prompt and response are encoded
by hand (Alpaca template, response + eos), and a response token is mis-instructed when the
teacher's argmax at the previous position is not that token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from logitkd.cli import main

PNG = b"\x89PNG\r\n\x1a\n"

#: (instruction, input, output): MiniLLM-format rows; one has an input (the other template).
ROWS = [
    ("What colour is the sky?", "", "The sky is blue."),
    ("Give the opposite of the word.", "hot", "The opposite of hot is cold."),
    ("Add one to 4.", "", "4 plus one is 5."),
    ("Repeat the word big twice.", "", "big big"),
    ("What colour is the grass?", "", "The grass is green."),
    ("Name a fruit.", "", "An apple, or a pear."),
]

#: name -> (model kind, tokenizer vocabulary, tokenizer prepends bos)
TEACHERS = {"gpt": ("gpt2", 300, False), "llama": ("llama", 360, True)}


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _encode(tok: Any, bos: bool, instruction: str, inp: str, output: str) -> tuple[list[int], int]:
    """``(input_ids, n_prompt)``: [bos] + Alpaca prompt + response + eos, written out here."""
    from logitkd.lm.data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT

    if inp:
        prompt = PROMPT_WITH_INPUT.format(instruction=instruction, input=inp)
    else:
        prompt = PROMPT_NO_INPUT.format(instruction=instruction)
    prompt_ids = ([tok.bos_token_id] if bos else []) + tok(prompt, add_special_tokens=False)[
        "input_ids"
    ]
    response_ids = [*tok(output, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    return prompt_ids + response_ids, len(prompt_ids)


@torch.inference_mode()
def independent_counts(model: Any, tok: Any, bos: bool, rows: list[tuple[str, str, str]]) -> dict:
    """Mis-instruction counts, one example at a time, no padding, no batching."""
    c = dict.fromkeys(
        ("tokens", "mis", "first_tokens", "mis_first", "later_tokens", "mis_later"), 0
    )
    for row in rows:
        ids, n_prompt = _encode(tok, bos, *row)
        pred = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)
        for pos in range(n_prompt, len(ids)):  # token ids[pos] is predicted at pos - 1
            wrong = int(pred[pos - 1].item() != ids[pos])
            group = "first" if pos == n_prompt else "later"
            c["tokens"] += 1
            c["mis"] += wrong
            c[f"{group}_tokens"] += 1
            c[f"mis_{group}"] += wrong
    return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two teachers (own tokenizer each, saved to local directories) and the data files."""
    from logitkd.lm.data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, collate_batch, tokenize_record
    from logitkd.lm.data import InstructionRecord as Rec
    from logitkd.lm.models import build_tiny_causal_lm, train_tokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_mis")
    texts = [PROMPT_NO_INPUT, PROMPT_WITH_INPUT] + [" ".join(r) for r in ROWS]
    teachers: dict[str, Any] = {}
    for name, (kind, vocab, bos) in TEACHERS.items():
        tok = train_tokenizer(texts * 3, vocab, min_frequency=1, add_bos=bos)
        model = build_tiny_causal_lm(kind, len(tok), hidden=32, layers=1, heads=2, seed=0)
        # A few full-batch steps on the rows: the teacher gets some tokens right, not all.
        examples = [tokenize_record(tok, Rec(i, x, [o]))[0] for i, x, o in ROWS]
        batch = collate_batch(examples, tok.pad_token_id)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(10):
            opt.zero_grad()
            model(**batch).loss.backward()
            opt.step()
        model.eval().requires_grad_(False)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        teachers[name] = {"model": model, "tok": tok, "bos": bos, "dir": root / name}
    torch.set_num_threads(before)
    minillm = [{"instruction": i, "input": x, "output": o} for i, x, o in ROWS]
    dolly = [{"instruction": i, "context": x, "response": o, "category": "qa"} for i, x, o in ROWS]
    return {
        "root": root,
        "teachers": teachers,
        "data": _write_jsonl(root / "minillm.jsonl", minillm),
        "dolly": _write_jsonl(root / "dolly.jsonl", dolly),
    }


pytestmark = pytest.mark.usefixtures("one_thread")


def test_counts_match_an_independent_count(setup: dict, tmp_path: Path, capsys: Any) -> None:
    t = setup["teachers"]
    out = tmp_path / "out"
    argv = ["analyze", "lm-misinstruction", "--teacher", f"GPT-2 tiny:{t['gpt']['dir']}"]
    argv += ["--teacher", str(t["llama"]["dir"]), "--data", str(setup["data"])]
    argv += ["--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out

    summary = json.loads((out / "lm_misinstruction.json").read_text())
    assert summary["records"] == len(ROWS)
    rows = {r["teacher"]: r for r in summary["teachers"]}
    assert list(rows) == ["GPT-2 tiny", "llama"]  # label given, label = directory name
    for label, name in (("GPT-2 tiny", "gpt"), ("llama", "llama")):
        te, row = t[name], rows[label]
        want = independent_counts(te["model"], te["tok"], te["bos"], ROWS)
        assert {k: row[k] for k in want} == want, label
        assert 0 < row["mis"] < row["tokens"], "teacher should be neither perfect nor all wrong"
        assert row["first_tokens"] == len(ROWS)
        assert row["mis_first"] + row["mis_later"] == row["mis"]
        assert row["first_tokens"] + row["later_tokens"] == row["tokens"]
        assert row["ratio"] == pytest.approx(want["mis"] / want["tokens"])
        assert row["ratio_first"] == pytest.approx(want["mis_first"] / want["first_tokens"])
        assert row["ratio_later"] == pytest.approx(want["mis_later"] / want["later_tokens"])
        assert row["tokenizer"] == str(te["dir"])
        # The Markdown table (also on stdout) shows the same numbers, in percent.
        cells = f"| {label} | {want['tokens']} | {100 * want['mis'] / want['tokens']:.2f} |"
        assert cells in (out / "lm_misinstruction.md").read_text()
        assert cells in stdout
    # Different tokenizers: each teacher counted its own tokens.
    assert rows["GPT-2 tiny"]["vocab_size"] != rows["llama"]["vocab_size"]
    assert rows["GPT-2 tiny"]["tokens"] != rows["llama"]["tokens"]
    png = (out / "lm_misinstruction.png").read_bytes()
    assert png[:8] == PNG and len(png) > 2000


def test_dolly_format_and_limit(setup: dict, tmp_path: Path, capsys: Any) -> None:
    te = setup["teachers"]["llama"]
    out = tmp_path / "dolly"
    argv = ["analyze", "lm-misinstruction", "--teacher", f"L:{te['dir']}"]
    argv += ["--data", str(setup["dolly"]), "--data-format", "dolly", "--limit", "3"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    summary = json.loads((out / "lm_misinstruction.json").read_text())
    assert summary["records"] == 3 and summary["limit"] == 3
    row = summary["teachers"][0]
    want = independent_counts(te["model"], te["tok"], te["bos"], ROWS[:3])
    assert {k: row[k] for k in want} == want


def _bad_cases(setup: dict) -> dict[str, tuple[list[str], str]]:
    """name -> (argv after `analyze lm-misinstruction`, text the error must contain)."""
    root, data = setup["root"], str(setup["data"])
    gpt, llama = str(setup["teachers"]["gpt"]["dir"]), str(setup["teachers"]["llama"]["dir"])
    (root / "empty.jsonl").write_text("")
    (root / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    (root / "no_weights").mkdir(exist_ok=True)
    (root / "no_weights" / "config.json").write_text("{}")
    t = ["--teacher", gpt]
    return {
        "missing teacher": (["--teacher", str(root / "nope"), "--data", data], "--teacher"),
        "incomplete teacher": (["--teacher", str(root / "no_weights"), "--data", data], "weights"),
        "missing data": ([*t, "--data", str(root / "nope.jsonl")], "--data"),
        "data is a folder": ([*t, "--data", str(root)], "--data"),
        "empty data": ([*t, "--data", str(root / "empty.jsonl")], "no records"),
        "malformed data": ([*t, "--data", str(root / "broken.jsonl")], "broken.jsonl:2"),
        "wrong format": ([*t, "--data", data, "--data-format", "dolly"], "--data"),
        "empty label": (["--teacher", f":{gpt}", "--data", data], "--teacher"),
        "empty dir": (["--teacher", "lab:", "--data", data], "--teacher"),
        "pipe in label": (["--teacher", f"a|b:{gpt}", "--data", data], "label"),
        "duplicate labels": (
            [*t, "--teacher", f"{Path(gpt).name}:{llama}", "--data", data],
            "distinct",
        ),
        "limit 0": ([*t, "--data", data, "--limit", "0"], "--limit"),
        "batch 0": ([*t, "--data", data, "--batch-size", "0"], "--batch-size"),
        "lengths": ([*t, "--data", data, "--max-length", "100"], "--max-length"),
        "foreign tokenizer": ([*t, "--data", data, "--tokenizer", llama], "tokenizer"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing teacher",
        "incomplete teacher",
        "missing data",
        "data is a folder",
        "empty data",
        "malformed data",
        "wrong format",
        "empty label",
        "empty dir",
        "pipe in label",
        "duplicate labels",
        "limit 0",
        "batch 0",
        "lengths",
        "foreign tokenizer",
    ],
)
def test_bad_input_is_one_clear_error(setup: dict, tmp_path: Path, capsys: Any, case: str) -> None:
    argv, needle = _bad_cases(setup)[case]
    out = tmp_path / "out"
    assert main(["analyze", "lm-misinstruction", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert needle in lines[0], err
    assert "Traceback" not in err
    assert not (out / "lm_misinstruction.json").exists()
