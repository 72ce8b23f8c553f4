"""Reusable LM fixtures: a byte-level BPE tokenizer trained in-process, tiny random Llama/GPT-2.

Everything is built offline (``HF_HUB_OFFLINE=1``) in well under a second once transformers is
imported. The tokenizer trains on a few hundred lines of Jane Austen from ``../shared`` when that
folder exists, else on the built-in sentences below, so the fixtures work on any machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"  # tests/lm/ → repo → ../shared
INSTRUCTIONS = SHARED / "data" / "instructions"
AUSTEN = SHARED / "data" / "text" / "austen" / "prideprejudice.txt"

#: Vocabulary of the fixture tokenizer (256 bytes + 3 specials + merges).
TINY_VOCAB = 512

BUILTIN_TEXT = [
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
    "### Instruction:\nName three primary colours.\n\n### Response:\nRed, yellow and blue.",
    "### Input:\nThe quick brown fox jumps over the lazy dog.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "Distillation trains a small student model to match the predictions of a large teacher.",
    "The teacher sometimes ranks a wrong token first; calibration moves the target back on top.",
    "When did Virgin Australia start operating? It commenced services on 31 August 2000.",
    "Which is a species of fish? Tope or Rope. Tope is a fish; rope is not.",
    "Why can camels survive for long without water? Camels use the fat in their humps.",
    "Alice's parents have three daughters: Amy, Jessy, and the third daughter is Alice.",
]


def fixture_texts(n_lines: int = 400) -> list[str]:
    """Training text for the fixture tokenizer: Austen lines when available, plus built-ins."""
    texts = list(BUILTIN_TEXT) * 3
    if AUSTEN.is_file():
        lines = [ln for ln in AUSTEN.read_text(encoding="utf-8").splitlines() if ln.strip()]
        texts += lines[:n_lines]
    return texts


@pytest.fixture(scope="session")
def tokenizer():
    """A GPT-2-style byte-level BPE tokenizer (no bos added); pad 0, bos 1, eos 2."""
    from logitkd.lm.models import train_tokenizer

    return train_tokenizer(fixture_texts(), TINY_VOCAB)


@pytest.fixture(scope="session")
def bos_tokenizer():
    """Same vocabulary and merges as ``tokenizer`` but prepends ``<s>`` like Llama's."""
    from logitkd.lm.models import train_tokenizer

    return train_tokenizer(fixture_texts(), TINY_VOCAB, add_bos=True)


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    from logitkd.lm.models import build_tiny_causal_lm

    return build_tiny_causal_lm("llama", len(tokenizer), hidden=32, layers=2, heads=2, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2(tokenizer):
    from logitkd.lm.models import build_tiny_causal_lm

    return build_tiny_causal_lm("gpt2", len(tokenizer), hidden=32, layers=2, heads=2, seed=1)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_lm(request, tiny_llama, tiny_gpt2):
    """Each tiny model in turn."""
    return tiny_llama if request.param == "llama" else tiny_gpt2


@pytest.fixture()
def instructions_dir() -> Path:
    """``../shared/data/instructions`` or skip."""
    if not INSTRUCTIONS.is_dir():
        pytest.skip(f"shared instruction data not found at {INSTRUCTIONS}")
    return INSTRUCTIONS


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run each LM test on one intra-op thread, then restore the setting.

    The tiny models do microsecond-sized matmuls; on a loaded 2-core machine a second OpenMP
    thread only adds synchronisation (measured: generation 10× slower with 2 threads).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def lm_assets(tmp_path_factory) -> dict[str, str]:
    """Tiny teacher/student/tokenizer directories and train/test JSONL (``make_tiny_assets``)."""
    from logitkd.lm.methods import make_tiny_assets

    return make_tiny_assets(tmp_path_factory.mktemp("lm_assets"))
