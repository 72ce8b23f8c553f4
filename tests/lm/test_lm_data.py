"""Instruction data: readers, prompt template, response-only labels, truncation, collate, split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logitkd.lm.data import (
    IGNORE_INDEX,
    InstructionCollator,
    InstructionRecord,
    build_prompt,
    collate_batch,
    encode_prompt,
    filter_records,
    parse_instruction_record,
    read_instruction_jsonl,
    special_prefix_ids,
    split_dolly,
    tokenize_record,
    tokenize_records,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------- readers


def test_read_dolly_format(tmp_path):
    path = write_lines(
        tmp_path / "dolly.jsonl",
        [
            json.dumps(
                {"instruction": "Q1?", "context": "ctx", "response": "A1.", "category": "closed_qa"}
            ),
            json.dumps(
                {
                    "instruction": "Q2?",
                    "context": "",
                    "response": "A2.",
                    "category": "brainstorming",
                }
            ),
        ],
    )
    recs = read_instruction_jsonl(path)
    assert recs[0] == InstructionRecord("Q1?", "ctx", ["A1."], None, "closed_qa")
    assert recs[1].input == "" and recs[1].response == "A2." and recs[1].category == "brainstorming"


def test_read_minillm_format_with_list_references(tmp_path):
    path = write_lines(
        tmp_path / "sinst.jsonl",
        [
            json.dumps(
                {
                    "instruction": "I",
                    "input": "x",
                    "output": ["r1", "r2"],
                    "prompt": "P:",
                    "topic": "t",
                }
            ),
            json.dumps({"instruction": "J", "input": "", "output": "only"}),
        ],
    )
    a, b = read_instruction_jsonl(path)
    assert (
        a.references == ["r1", "r2"]
        and a.response == "r1"
        and a.prompt == "P:"
        and a.category == "t"
    )
    assert b.references == ["only"] and b.prompt is None


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("", "empty line"),
        ("   ", "empty line"),
        ('{"instruction": "x", "output": "y"', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"instruction": "x", "input": ""}', "no response"),
        ('{"instruction": "x", "output": ""}', "empty response"),
        ('{"instruction": "x", "response": "  "}', "empty response"),
        ('{"instruction": "x", "output": [1, 2]}', "list of strings"),
        ('{"input": "x", "output": "y"}', "missing field 'instruction'"),
    ],
)
def test_bad_line_reports_file_and_line_number(tmp_path, bad_line, message):
    good = json.dumps({"instruction": "i", "input": "", "output": "o"})
    path = write_lines(tmp_path / "bad.jsonl", [good, good, bad_line, good])
    with pytest.raises(ValueError, match=message) as info:
        read_instruction_jsonl(path)
    assert "bad.jsonl:3:" in str(info.value)


def test_missing_file_and_bad_format():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_instruction_jsonl("/nonexistent/file.jsonl")
    with pytest.raises(ValueError, match="format must be"):
        parse_instruction_record({"instruction": "i", "output": "o"}, format="alpaca")  # type: ignore[arg-type]


def test_allow_empty_response(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [json.dumps({"instruction": "i", "output": ""})])
    (rec,) = read_instruction_jsonl(path, allow_empty_response=True)
    assert rec.references == [""]


# ---------------------------------------------------------------------------------- prompts


def test_prompt_templates_exact_strings():
    with_input = InstructionRecord("Summarise.", "Some text.", ["ok"])
    assert build_prompt(with_input) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSummarise.\n\n### Input:\nSome text.\n\n### Response:\n"
    )
    no_input = InstructionRecord("Name a colour.", "", ["red"])
    assert build_prompt(no_input) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n"
    )
    given_prompt = InstructionRecord("ignored", "ignored", ["r"], prompt="Q: custom\nA:")
    assert build_prompt(given_prompt) == "Q: custom\nA:"


@pytest.mark.parametrize(
    ("rel", "n", "multi_ref"),
    [
        ("dolly/test.jsonl", 500, False),
        ("dolly/valid.jsonl", 1000, False),
        ("dolly/train-partial.jsonl", 4905, False),
        ("sinst/test.jsonl", 1694, True),
        ("self-inst/test.jsonl", 242, False),
    ],
)
def test_real_instruction_sets(instructions_dir, rel, n, multi_ref):
    recs = read_instruction_jsonl(instructions_dir / rel)
    assert len(recs) == n
    assert all(r.references and all(isinstance(x, str) for x in r.references) for r in recs)
    assert any(len(r.references) > 1 for r in recs) == multi_ref
    # The template must rebuild every ready-made prompt of the evaluation sets verbatim.
    with_prompt = [r for r in recs if r.prompt is not None]
    for r in with_prompt:
        rebuilt = build_prompt(InstructionRecord(r.instruction, r.input, r.references))
        assert rebuilt == r.prompt


# ------------------------------------------------------------------------- tokenisation


def check_example(tok, rec, ex, max_prompt_length, max_length, truncation="left"):
    """Independent re-derivation of one tokenised example from the tokenizer alone."""
    prefix = special_prefix_ids(tok)
    body = enc(tok, build_prompt(rec))
    room = max_prompt_length - len(prefix)
    kept = body if len(body) <= room else (body[-room:] if truncation == "left" else body[:room])
    prompt = prefix + kept
    response = [*enc(tok, rec.response), tok.eos_token_id][: max_length - len(prompt)]
    assert ex["input_ids"] == prompt + response
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt) + response
    # Every scored position holds the very token at that position.
    for t, lab in enumerate(ex["labels"]):
        assert lab == IGNORE_INDEX or lab == ex["input_ids"][t]
    assert len(ex["input_ids"]) <= max_length
    return len(body) > room, len(prompt) + len(enc(tok, rec.response)) + 1 > max_length


def test_labels_mask_prompt_and_end_with_eos(tokenizer):
    rec = InstructionRecord("Name three colours.", "", ["Red, yellow and blue."])
    ex, p_cut, r_cut = tokenize_record(tokenizer, rec)
    assert not p_cut and not r_cut
    n_prompt = len(enc(tokenizer, build_prompt(rec)))
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex["labels"][n_prompt:-1]) == "Red, yellow and blue."


words = st.lists(
    st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "Emma", "fortune", ",", "."]),
    min_size=0,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    instr=words,
    inp=words,
    resp=words.filter(bool),
    max_prompt=st.integers(4, 120),
    extra=st.integers(1, 60),
    side=st.sampled_from(["left", "right"]),
    use_bos=st.booleans(),
)
def test_truncation_rule_and_counts(
    tokenizer, bos_tokenizer, instr, inp, resp, max_prompt, extra, side, use_bos
):
    tok = bos_tokenizer if use_bos else tokenizer
    rec = InstructionRecord(" ".join(instr), " ".join(inp), [" ".join(resp)])
    ex, p_cut, r_cut = tokenize_record(tok, rec, max_prompt, max_prompt + extra, side)
    expected = check_example(tok, rec, ex, max_prompt, max_prompt + extra, side)
    assert (p_cut, r_cut) == expected
    if use_bos:
        assert ex["input_ids"][0] == tok.bos_token_id  # the prefix survives truncation
    # A complete response ends with eos; a cut one has none (it must not teach stopping there).
    assert (tok.eos_token_id in ex["labels"]) == (not r_cut)
    assert (ex["labels"][-1] == tok.eos_token_id) == (not r_cut)


def test_tokenize_records_stats_and_warning(tokenizer, caplog):
    short = InstructionRecord("Hi.", "", ["Hello."])
    long_prompt = InstructionRecord("word " * 200, "", ["Yes."])
    long_resp = InstructionRecord("Hi.", "", ["word " * 300])
    with caplog.at_level(logging.WARNING, logger="logitkd.lm.data"):
        examples, stats = tokenize_records(tokenizer, [short, long_prompt, long_resp], 128, 256)
    assert (stats.n_examples, stats.n_prompt_truncated, stats.n_response_truncated) == (3, 1, 1)
    assert stats.n_prompt_tokens + stats.n_response_tokens == sum(
        len(e["input_ids"]) for e in examples
    )
    assert "truncated 1 of 3 prompts" in caplog.text
    # The kept prompt is the END of the long prompt: the "### Response:" cue survives.
    prompt_ids = [
        t for t, lab in zip(examples[1]["input_ids"], examples[1]["labels"]) if lab == IGNORE_INDEX
    ]
    assert len(prompt_ids) == 128
    assert tokenizer.decode(prompt_ids).endswith("### Response:\n")
    # The cut response drops its eos.
    assert (
        len(examples[2]["input_ids"]) == 256 and examples[2]["labels"][-1] != tokenizer.eos_token_id
    )

    with caplog.at_level(logging.WARNING, logger="logitkd.lm.data"):
        caplog.clear()
        tokenize_records(tokenizer, [short], 128, 256)
    assert "truncated" not in caplog.text


def test_bad_lengths_and_tokenizer(tokenizer):
    rec = InstructionRecord("Hi.", "", ["Hello."])
    with pytest.raises(ValueError, match="greater than max_prompt_length"):
        tokenize_record(tokenizer, rec, max_prompt_length=64, max_length=64)
    with pytest.raises(ValueError, match="max_prompt_length must exceed"):
        encode_prompt(tokenizer, "x", max_prompt_length=0)
    with pytest.raises(ValueError, match="prompt_truncation"):
        encode_prompt(tokenizer, "x", prompt_truncation="middle")  # type: ignore[arg-type]


def test_special_prefix(tokenizer, bos_tokenizer):
    assert special_prefix_ids(tokenizer) == []
    assert special_prefix_ids(bos_tokenizer) == [bos_tokenizer.bos_token_id]


# -------------------------------------------------------------------------------- collate


def test_collate_right_and_left_padding(tokenizer):
    recs = [
        InstructionRecord("Short?", "", ["Yes."]),
        InstructionRecord(
            "A much longer instruction with more words in it?", "ctx", ["A longer answer."]
        ),
    ]
    examples, _ = tokenize_records(tokenizer, recs)
    lens = [len(e["input_ids"]) for e in examples]
    pad = tokenizer.pad_token_id
    right = collate_batch(examples, pad)
    assert right["input_ids"].shape == (2, max(lens)) and right["input_ids"].dtype == torch.long
    for i, ex in enumerate(examples):
        n = lens[i]
        assert right["input_ids"][i, :n].tolist() == ex["input_ids"]
        assert right["labels"][i, :n].tolist() == ex["labels"]
        assert (right["input_ids"][i, n:] == pad).all() and (
            right["labels"][i, n:] == IGNORE_INDEX
        ).all()
        assert right["attention_mask"][i].tolist() == [1] * n + [0] * (max(lens) - n)
    left = InstructionCollator(pad, "left", pad_to_multiple_of=8)(
        [{"input_ids": e["input_ids"]} for e in examples]
    )
    width = left["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(lens) and set(left) == {"input_ids"}
    for i, ex in enumerate(examples):
        assert left["input_ids"][i, width - lens[i] :].tolist() == ex["input_ids"]
        assert (left["input_ids"][i, : width - lens[i]] == pad).all()


def test_collate_errors():
    with pytest.raises(ValueError, match="non-empty"):
        collate_batch([], 0)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_batch([{"input_ids": [1]}], None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inconsistent"):
        collate_batch([{"input_ids": [1, 2], "labels": [1]}], 0)
    with pytest.raises(ValueError, match="padding_side"):
        collate_batch([{"input_ids": [1]}], 0, padding_side="center")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- split


def make_records(n: int) -> list[InstructionRecord]:
    return [InstructionRecord(f"question {i}?", "", [f"answer {i}"]) for i in range(n)]


def test_split_dolly_deterministic_disjoint_and_sized():
    recs = [*make_records(60), InstructionRecord("empty?", "", ["   "])]
    a = split_dolly(recs, seed=0, n_valid=10, n_test=5)
    b = split_dolly(recs, seed=0, n_valid=10, n_test=5)
    c = split_dolly(recs, seed=1, n_valid=10, n_test=5)
    assert (len(a.train), len(a.valid), len(a.test), a.n_dropped_empty) == (45, 10, 5, 1)
    assert [r.instruction for r in a.test] == [r.instruction for r in b.test]
    assert [r.instruction for r in a.train] == [r.instruction for r in b.train]
    assert [r.instruction for r in a.test] != [r.instruction for r in c.test]
    parts = [{r.instruction for r in part} for part in (a.train, a.valid, a.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {r.instruction for r in recs[:60]}


def test_split_filters_long_prompts_and_needs_enough_records(tokenizer):
    recs = [*make_records(20), InstructionRecord("word " * 300, "", ["x"])]
    kept, n_empty, n_long = filter_records(recs, tokenizer, max_prompt_length=256)
    assert (len(kept), n_empty, n_long) == (20, 0, 1)
    split = split_dolly(recs, seed=0, n_valid=5, n_test=5, tokenizer=tokenizer)
    assert split.n_dropped_long_prompt == 1 and len(split.train) == 10
    with pytest.raises(ValueError, match="only 20 records remain"):
        split_dolly(recs, seed=0, n_valid=15, n_test=10, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="n_valid"):
        split_dolly(recs, seed=0, n_valid=-1)


def test_tokenize_real_dolly(instructions_dir, tokenizer):
    recs = read_instruction_jsonl(instructions_dir / "dolly" / "test.jsonl", limit=50)
    examples, stats = tokenize_records(tokenizer, recs, 256, 512)
    assert stats.n_examples == 50
    for rec, ex in zip(recs, examples):
        check_example(tokenizer, rec, ex, 256, 512)
