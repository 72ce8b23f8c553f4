"""Models, generation, Rouge-L and teacher mis-instruction, against independent references."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logitkd.lm.data import (
    IGNORE_INDEX,
    InstructionRecord,
    collate_batch,
    read_instruction_jsonl,
    tokenize_records,
)
from logitkd.lm.generate import generate_responses
from logitkd.lm.models import (
    aligned_vocab_size,
    build_tiny_causal_lm,
    check_tokenizers_match,
    find_missing_files,
    load_causal_lm,
    load_model_and_tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from logitkd.lm.rouge import (
    evaluate_rouge,
    rouge_l_fmeasure,
    rouge_l_per_sample,
    summarize_over_seeds,
    token_misinstruction_ratio,
)

# ----------------------------------------------------------------------------- Rouge-L


def lcs_length(a: list[str], b: list[str]) -> int:
    """Textbook O(len(a) * len(b)) dynamic programme."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = (
                table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
            )
    return table[-1][-1]


def reference_rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F on whitespace tokens: 2PR/(P+R), P = LCS/|pred|, R = LCS/|ref|."""
    p, r = prediction.split(), reference.split()
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


# Lower-case words of <= 3 letters: rouge_score neither splits nor stems them, so its score must
# equal the plain LCS F-measure on whitespace tokens.
short_words = st.lists(
    st.sampled_from(["a", "b", "cat", "dog", "the", "sat", "on", "mat", "x"]), max_size=15
)


@settings(max_examples=150, deadline=None)
@given(pred=short_words, ref=short_words)
def test_rouge_l_matches_lcs_reference(pred, ref):
    p, r = " ".join(pred), " ".join(ref)
    assert rouge_l_fmeasure(p, r) == pytest.approx(reference_rouge_l(p, r), abs=1e-12)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat on mat") = 4: P = 4/6, R = 4/4, F = 0.8
    assert rouge_l_fmeasure("the cat sat on the mat", "the cat on mat") == pytest.approx(0.8)
    assert rouge_l_fmeasure("", "the cat") == 0.0
    assert rouge_l_fmeasure("dog", "the cat") == 0.0


def test_rouge_l_tokenisation_and_stemming():
    # Case and punctuation are normalised away by rouge_score's tokenizer.
    assert rouge_l_fmeasure("The CAT, sat!", "the cat sat") == pytest.approx(1.0)
    # Porter stemming (use_stemmer=True): "running dogs" ~ "run dog".
    assert rouge_l_fmeasure("running dogs", "run dog") == pytest.approx(1.0)


def test_max_over_references_and_mean():
    preds = ["the cat sat on the mat", "a dog"]
    refs = [["dog", "the cat on mat", "x"], ["a dog", "the dog"]]
    per_sample = rouge_l_per_sample(preds, refs)
    assert per_sample == pytest.approx([0.8, 1.0])
    assert evaluate_rouge(preds, refs) == pytest.approx(100 * (0.8 + 1.0) / 2)


def test_rouge_bad_input():
    with pytest.raises(ValueError, match="one entry per prediction"):
        evaluate_rouge(["a", "b"], [["a"]])
    with pytest.raises(TypeError, match=r"wrap a single reference"):
        evaluate_rouge(["a"], ["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="is empty"):
        evaluate_rouge(["a"], [[]])
    with pytest.raises(ValueError, match="must not be empty"):
        evaluate_rouge([], [])
    with pytest.raises(TypeError, match="strings"):
        rouge_l_fmeasure(1, "a")  # type: ignore[arg-type]


def test_rouge_on_real_references(instructions_dir):
    dolly = read_instruction_jsonl(instructions_dir / "dolly" / "test.jsonl", limit=100)
    refs = [r.references for r in dolly]
    assert evaluate_rouge([r[0] for r in refs], refs) == pytest.approx(100.0)
    sinst = [
        r
        for r in read_instruction_jsonl(instructions_dir / "sinst" / "test.jsonl")
        if len(r.references) > 1
    ]
    # Predicting the LAST reference still scores 100: the max over references finds it.
    assert evaluate_rouge(
        [r.references[-1] for r in sinst[:50]], [r.references for r in sinst[:50]]
    ) == pytest.approx(100.0)


def test_summarize_over_seeds():
    mean, std = summarize_over_seeds([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3))
    assert summarize_over_seeds([1.0, 2.0, 3.0, 4.0], ddof=0)[1] == pytest.approx(math.sqrt(1.25))
    mean1, std1 = summarize_over_seeds([7.0])
    assert mean1 == 7.0 and math.isnan(std1)
    with pytest.raises(ValueError, match="empty"):
        summarize_over_seeds([])
    with pytest.raises(ValueError, match="finite"):
        summarize_over_seeds([1.0, float("nan")])


# ---------------------------------------------------------------------------- generation

RECORDS = [
    InstructionRecord("Name three primary colours.", "", ["Red, yellow and blue."]),
    InstructionRecord(
        "Summarise the text.", "It is a truth universally acknowledged.", ["A truth."]
    ),
    InstructionRecord("Why can camels survive without water?", "", ["Fat in their humps."]),
    InstructionRecord("Who is Emma?", "", ["A young woman."]),
    InstructionRecord("Say hi.", "", ["Hi."]),
]


def test_greedy_generation_deterministic_and_batch_invariant(tiny_lm, tokenizer):
    batched = generate_responses(tiny_lm, tokenizer, RECORDS, max_new_tokens=12, batch_size=3)
    again = generate_responses(tiny_lm, tokenizer, RECORDS, max_new_tokens=12, batch_size=3)
    # Left padding must not change what a prompt generates: batch of 1 vs mixed-length batches.
    single = [generate_responses(tiny_lm, tokenizer, [r], max_new_tokens=12)[0] for r in RECORDS]
    assert batched == again == single
    assert len(batched) == len(RECORDS) and all(isinstance(s, str) for s in batched)
    assert all(s == s.strip() for s in batched)


def test_seeded_sampling_reproducible(tiny_lm, tokenizer):
    kwargs = {
        "max_new_tokens": 12,
        "do_sample": True,
        "temperature": 1.5,
        "top_p": 0.95,
        "batch_size": 2,
    }
    state = torch.random.get_rng_state()
    a = generate_responses(tiny_lm, tokenizer, RECORDS, seed=123, **kwargs)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    b = generate_responses(tiny_lm, tokenizer, RECORDS, seed=123, **kwargs)
    c = generate_responses(tiny_lm, tokenizer, RECORDS, seed=7, **kwargs)
    assert a == b
    assert a != c  # a random tiny model at temperature 1.5: distinct seeds give distinct text


def test_generation_returns_only_new_text_cut_at_eos(tokenizer):
    model = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=0)
    forced = tokenizer(" the cat", add_special_tokens=False)["input_ids"]
    plan = [*forced, tokenizer.eos_token_id, *forced]  # tokens after eos must never appear
    step = {"i": 0}

    def force(_module, _inputs, logits):  # the i-th decoding step emits plan[i]
        logits = logits.clone()
        logits[..., plan[min(step["i"], len(plan) - 1)]] += 1e4
        step["i"] += 1
        return logits

    handle = model.lm_head.register_forward_hook(force)
    try:
        (out,) = generate_responses(model, tokenizer, RECORDS[:1], max_new_tokens=10)
    finally:
        handle.remove()
    assert out == "the cat"  # decoded, stripped of its leading space, no prompt, nothing past eos


def test_generation_bad_arguments(tiny_llama, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_responses(tiny_llama, tokenizer, RECORDS, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate_responses(tiny_llama, tokenizer, RECORDS, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate_responses(tiny_llama, tokenizer, RECORDS, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        generate_responses(tiny_llama, tokenizer, RECORDS, batch_size=0)


# -------------------------------------------------------------------------- models, I/O


def test_save_load_round_trip(tmp_path, tiny_gpt2, tokenizer):
    tiny_gpt2.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tok = load_model_and_tokenizer(tmp_path)
    ids = torch.tensor([tokenizer("It is a truth universally acknowledged")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_gpt2(ids).logits, rtol=0, atol=0)
    check_tokenizers_match(tokenizer, tok)
    assert load_causal_lm(tmp_path, dtype="bf16").dtype == torch.bfloat16
    assert load_tokenizer(tmp_path).pad_token_id == tokenizer.pad_token_id
    assert find_missing_files(tmp_path, weights=True, tokenizer=True) == []


def test_missing_files_are_listed(tmp_path, tiny_llama, tokenizer):
    tiny_llama.save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_model_and_tokenizer(tmp_path)
    msg = str(info.value)
    assert "config.json" in msg and "weights" in msg and "tokenizer" in msg and str(tmp_path) in msg
    with pytest.raises(FileNotFoundError, match="tokenizer files"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    with pytest.raises(TypeError, match="path_or_config"):
        load_causal_lm(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(tmp_path, dtype="int3")


def test_load_from_config(tiny_llama):
    model = load_causal_lm(tiny_llama.config)
    assert type(model) is type(tiny_llama) and not model.training


def test_build_tiny_validation():
    with pytest.raises(ValueError, match="kind"):
        build_tiny_causal_lm("bert", 300)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_causal_lm("llama", 300, hidden=30, heads=4)
    with pytest.raises(ValueError, match="eos_token_id"):
        build_tiny_causal_lm("gpt2", 300, eos_token_id=300)
    a = build_tiny_causal_lm("gpt2", 300, hidden=16, seed=5)
    b = build_tiny_causal_lm("gpt2", 300, hidden=16, seed=5)
    assert a.config.eos_token_id == 2 and a.config.bos_token_id == 1
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_train_tokenizer_round_trip_and_validation(tokenizer):
    text = "Café — naïve 東京 😀\n### Response:\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte level: no unknown tokens
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        train_tokenizer(["abc"], 100)
    with pytest.raises(ValueError, match="at least one"):
        train_tokenizer([], 300)


def test_tokenizer_mismatch(tokenizer, bos_tokenizer):
    other = train_tokenizer(["completely different text about ships and the sea"] * 50, 300)
    with pytest.raises(ValueError, match=r"tokenizers differ: vocabularies of 512 and \d+ tokens"):
        check_tokenizers_match(tokenizer, other)
    with pytest.raises(ValueError, match="encode differently"):
        check_tokenizers_match(tokenizer, bos_tokenizer)
    check_tokenizers_match(tokenizer, copy.deepcopy(tokenizer))


def test_aligned_vocab_size():
    # Qwen-like: 151936 vs 152064 rows over a 151665-token tokenizer, scaled down.
    tok_size = 300
    teacher = build_tiny_causal_lm("llama", 384, hidden=16)
    student = build_tiny_causal_lm("llama", 320, hidden=16)
    assert aligned_vocab_size(teacher, student, tok_size) == 320
    assert aligned_vocab_size(151936, 152064, 151665) == 151936
    with pytest.raises(ValueError, match=r"\(384\).*\(290\).*300"):
        aligned_vocab_size(teacher, 290, tok_size)


# ---------------------------------------------------------------------- mis-instruction


def reference_misinstruction(model, batch):
    """Loop over every (sequence, position) pair: argmax(logits[t]) vs labels[t + 1]."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    counts = {"first": [0, 0], "rest": [0, 0]}
    for b in range(logits.shape[0]):
        labels = batch["labels"][b].tolist()
        for t in range(len(labels) - 1):
            if labels[t + 1] == IGNORE_INDEX:
                continue
            kind = "first" if labels[t] == IGNORE_INDEX else "rest"
            counts[kind][0] += int(int(logits[b, t].argmax()) != labels[t + 1])
            counts[kind][1] += 1
    return counts


def test_misinstruction_ratio_matches_loop(tiny_lm, tokenizer):
    examples, _ = tokenize_records(tokenizer, RECORDS)
    batches = [
        collate_batch(examples[:3], tokenizer.pad_token_id),
        collate_batch(examples[3:], tokenizer.pad_token_id),
    ]
    stats = token_misinstruction_ratio(tiny_lm, batches)
    ref = [reference_misinstruction(tiny_lm, b) for b in batches]
    mis_first = sum(r["first"][0] for r in ref)
    n_first = sum(r["first"][1] for r in ref)
    mis_rest = sum(r["rest"][0] for r in ref)
    n_rest = sum(r["rest"][1] for r in ref)
    assert (
        (stats.n_first, stats.n_rest)
        == (n_first, n_rest)
        == (len(RECORDS), stats.n_tokens - len(RECORDS))
    )
    assert stats.ratio == pytest.approx((mis_first + mis_rest) / (n_first + n_rest))
    assert stats.ratio_first == pytest.approx(mis_first / n_first)
    assert stats.ratio_rest == pytest.approx(mis_rest / n_rest)


def test_misinstruction_zero_on_teacher_greedy_text(tiny_llama, tokenizer):
    # A response the teacher itself produced greedily is, token by token, its own argmax.
    prompt = tokenizer("### Instruction:\nSay something.\n\n### Response:\n")["input_ids"]
    with torch.no_grad():
        out = tiny_llama.generate(
            torch.tensor([prompt]),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[0].tolist()
    labels = [IGNORE_INDEX] * len(prompt) + out[len(prompt) :]
    batch = collate_batch(
        [{"input_ids": out, "attention_mask": [1] * len(out), "labels": labels}], 0
    )
    stats = token_misinstruction_ratio(tiny_llama, [batch])
    assert stats.ratio == 0.0 and stats.n_tokens == 10


def test_misinstruction_vocab_slicing(tokenizer):
    teacher = build_tiny_causal_lm("llama", len(tokenizer) + 64, hidden=16, seed=3)
    examples, _ = tokenize_records(tokenizer, RECORDS[:2])
    batch = collate_batch(examples, tokenizer.pad_token_id)
    padded_row = len(tokenizer) + 10

    def boost_padding(_m, _i, logits):  # a padded (never real) row wins every argmax
        logits = logits.clone()
        logits[..., padded_row] += 1e4
        return logits

    unboosted = token_misinstruction_ratio(teacher, [batch], vocab_size=len(tokenizer))
    handle = teacher.lm_head.register_forward_hook(boost_padding)
    try:
        assert token_misinstruction_ratio(teacher, [batch]).ratio == 1.0
        assert token_misinstruction_ratio(teacher, [batch], vocab_size=len(tokenizer)) == unboosted
    finally:
        handle.remove()


def test_misinstruction_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="lacks"):
        token_misinstruction_ratio(tiny_llama, [{"input_ids": torch.zeros(1, 3, dtype=torch.long)}])
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="no response tokens"):
        token_misinstruction_ratio(
            tiny_llama, [{"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX)}]
        )


def test_rouge_reference_consistency():
    # The hand-written DP itself: classic LCS examples.
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert statistics.fmean([reference_rouge_l("a b", "a b"), reference_rouge_l("a", "b")]) == 0.5
