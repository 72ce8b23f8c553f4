"""Causal language models and tokenizers: offline loading, tiny builders, compatibility checks.

Everything here works without network access. Loading reads a *local directory* only
(``local_files_only=True``, the ``HF_HUB_OFFLINE=1`` behaviour): a path that is not a directory is
never mistaken for a Hub repository id, and a directory that lacks a file needed to load raises
``FileNotFoundError`` naming every missing piece at once.

Distillation requires teacher and student to share one tokenizer (token-level KD compares the two
distributions id by id). :func:`check_tokenizers_match` enforces it and :func:`aligned_vocab_size`
resolves the common case of output layers padded to different sizes (Qwen2.5: 151936 rows for the
small models, 152064 for the 7B+ ones, both above the 151665 real tokens).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "aligned_vocab_size",
    "build_tiny_causal_lm",
    "check_tokenizers_match",
    "find_missing_files",
    "load_causal_lm",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "output_vocab_size",
    "resolve_dtype",
    "train_tokenizer",
]

#: Special tokens of tokenizers trained by :func:`train_tokenizer` (ids 0, 1, 2 in this order).
DEFAULT_SPECIAL_TOKENS: dict[str, str] = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}

_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
# A fast tokenizer is tokenizer.json; slow ones are a SentencePiece model or a BPE vocab + merges.
_TOKENIZER_ALTERNATIVES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Map ``"bf16"``/``"bfloat16"``/``torch.bfloat16``/… to a ``torch.dtype``; ``None`` stays ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be a torch.dtype or one of {sorted(_DTYPES)}, got {dtype!r}")


def _has_tokenizer_files(directory: Path) -> bool:
    return any(all((directory / f).is_file() for f in alt) for alt in _TOKENIZER_ALTERNATIVES)


def find_missing_files(
    directory: str | os.PathLike[str], *, weights: bool = True, tokenizer: bool = False
) -> list[str]:
    """Return a description of each file a local model/tokenizer directory lacks (empty if none).

    Checked: ``config.json`` and weights (``*.safetensors`` or ``pytorch_model*.bin``) when
    ``weights``; ``tokenizer.json`` or ``tokenizer.model`` or ``vocab.json`` + ``merges.txt`` when
    ``tokenizer``. A missing directory is reported as such.
    """
    path = Path(directory)
    if not path.is_dir():
        return [f"the directory itself ({path} does not exist or is not a directory)"]
    missing: list[str] = []
    if weights:
        if not (path / "config.json").is_file():
            missing.append("config.json")
        if not any(any(path.glob(p)) for p in _WEIGHT_PATTERNS):
            missing.append("model weights (*.safetensors or pytorch_model*.bin)")
    if tokenizer and not _has_tokenizer_files(path):
        missing.append(
            "tokenizer files (tokenizer.json, or tokenizer.model, or vocab.json + merges.txt)"
        )
    return missing


def _raise_if_missing(path: Path, what: str, missing: list[str]) -> None:
    if missing:
        raise FileNotFoundError(
            f"cannot load the {what} from local directory {str(path)!r}: missing "
            + "; ".join(missing)
            + ". Loading is offline only (local_files_only=True): download the model to this "
            "directory first (e.g. `huggingface-cli download <repo> --local-dir DIR`)."
        )


def _dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    # transformers 5 renamed ``torch_dtype`` to ``dtype``; 4.x only knows ``torch_dtype``.
    if dtype is None:
        return {}
    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def load_causal_lm(
    path_or_config: str | os.PathLike[str] | PretrainedConfig,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM from a local directory, or build a randomly initialised one from a config.

    A path must be a directory holding ``config.json`` and the weights; nothing is downloaded
    (``local_files_only=True``). ``dtype`` is e.g. ``torch.bfloat16`` or ``"bf16"``; ``None`` keeps
    the checkpoint's (transformers' default) dtype. Extra ``kwargs`` go to ``from_pretrained`` /
    ``from_config``. The model is returned in eval mode (as ``from_pretrained`` does).
    """
    torch_dtype = resolve_dtype(dtype)
    if isinstance(path_or_config, PretrainedConfig):
        model = AutoModelForCausalLM.from_config(
            path_or_config, **_dtype_kwargs(torch_dtype), **kwargs
        )
        return model.eval()
    if not isinstance(path_or_config, (str, os.PathLike)):
        raise TypeError(
            "path_or_config must be a local directory path or a transformers PretrainedConfig, "
            f"got {type(path_or_config).__name__}"
        )
    path = Path(path_or_config)
    _raise_if_missing(path, "causal LM", find_missing_files(path, weights=True))
    return AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, **_dtype_kwargs(torch_dtype), **kwargs
    )


def load_tokenizer(path: str | os.PathLike[str], **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (offline), giving it a pad token if it has none.

    Decoder-only tokenizers often ship without a pad token; batching needs one, so ``eos`` is used
    as pad (padding positions are masked out everywhere, so its identity does not matter).
    """
    p = Path(path)
    _raise_if_missing(p, "tokenizer", find_missing_files(p, weights=False, tokenizer=True))
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True, **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    add_bos: bool = False,
    special_tokens: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer in-process (Hugging Face ``tokenizers``) and wrap it.

    The model is GPT-2's design: bytes mapped to 256 printable symbols, BPE merges learned on
    ``texts``, so every string round-trips without an unknown token. ``vocab_size`` counts the 256
    byte symbols and the special tokens (pad, bos, eos; ids 0, 1, 2), so it must be at least 259.
    With ``add_bos`` the tokenizer prepends ``bos`` when called with ``add_special_tokens=True``
    (Llama's convention); otherwise it adds nothing (GPT-2's convention).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = dict(DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens)
    if set(specials) != {"pad", "bos", "eos"}:
        raise ValueError(
            f"special_tokens must have exactly the keys pad, bos, eos; got {sorted(specials)}"
        )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(specials)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be >= {minimum} (256 byte symbols + {len(specials)} special tokens), "
            f"got {vocab_size}"
        )
    texts = list(texts)
    if not texts:
        raise ValueError("texts must contain at least one string to train the tokenizer on")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    order = [specials["pad"], specials["bos"], specials["eos"]]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=order,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if add_bos:
        bos = specials["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=specials["pad"],
        bos_token=specials["bos"],
        eos_token=specials["eos"],
    )


def build_tiny_causal_lm(
    kind: Literal["llama", "gpt2"],
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    *,
    max_positions: int = 1024,
    intermediate: int | None = None,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = 0,
    tie_word_embeddings: bool = False,
    seed: int | None = None,
) -> PreTrainedModel:
    """A small randomly initialised ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` for tests and demos.

    The special-token ids default to those of :func:`train_tokenizer` (pad 0, bos 1, eos 2); they
    are set explicitly because GPT-2's config otherwise points bos/eos at id 50256, outside a small
    vocabulary. ``seed`` makes the initial weights reproducible without touching the global RNG.
    Returned in eval mode.
    """
    for name, value in (
        ("vocab_size", vocab_size),
        ("hidden", hidden),
        ("layers", layers),
        ("heads", heads),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    for name, tid in (
        ("bos_token_id", bos_token_id),
        ("eos_token_id", eos_token_id),
        ("pad_token_id", pad_token_id),
    ):
        if tid is not None and not 0 <= tid < vocab_size:
            raise ValueError(f"{name}={tid} is outside the vocabulary [0, {vocab_size})")
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    config: PretrainedConfig
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate or 4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=tie_word_embeddings,
            **ids,
        )
        cls: type[PreTrainedModel] = LlamaForCausalLM
    elif kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            n_positions=max_positions,
            tie_word_embeddings=tie_word_embeddings,
            **ids,
        )
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"kind must be 'llama' or 'gpt2', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(config)
    return model.eval()


def output_vocab_size(model: nn.Module | int) -> int:
    """Rows of a causal LM's output layer (``lm_head``), i.e. the width of its logits.

    An ``int`` is returned as is, so callers can pass sizes directly.
    """
    if isinstance(model, bool):
        raise TypeError("model must be a causal LM or an int vocabulary size, got bool")
    if isinstance(model, int):
        return model
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    raise TypeError(f"cannot find the output vocabulary size of {type(model).__name__}")


def aligned_vocab_size(
    teacher_model: nn.Module | int,
    student_model: nn.Module | int,
    tokenizer: PreTrainedTokenizerBase | int,
) -> int:
    """The logit width teacher and student share: ``min`` of their output sizes.

    Output layers are often padded past the tokenizer (to a multiple of 64/128 for speed); rows at
    or beyond ``len(tokenizer)`` are never a real token, so slicing both logits to
    ``min(V_teacher, V_student)`` loses nothing as long as both cover the tokenizer. Otherwise the
    models were trained with different tokenizers and ``ValueError`` is raised.
    """
    v_t = output_vocab_size(teacher_model)
    v_s = output_vocab_size(student_model)
    n_tok = tokenizer if isinstance(tokenizer, int) else len(tokenizer)
    if v_t < n_tok or v_s < n_tok:
        raise ValueError(
            f"teacher output vocabulary ({v_t}) and student output vocabulary ({v_s}) must both cover "
            f"the tokenizer's {n_tok} tokens; sizes that differ beyond padded rows mean the models "
            "use different tokenizers and cannot be distilled token by token"
        )
    return min(v_t, v_s)


_PROBE_TEXT = (
    "Below is an instruction. ### Response:\n Distillation, 1234 café — naïve «test» 東京 😀\t end."
)


def check_tokenizers_match(
    teacher_tok: PreTrainedTokenizerBase,
    student_tok: PreTrainedTokenizerBase,
    probes: Sequence[str] = (_PROBE_TEXT,),
) -> None:
    """Raise ``ValueError`` unless both tokenizers map text to the same ids.

    Compared: the full vocabularies (``get_vocab()``, added tokens included), the bos/eos ids, and
    the encodings of ``probes`` with and without special tokens (catches differing normalisers,
    pre-tokenisers or bos/eos post-processing over one vocabulary).
    """
    v_t, v_s = teacher_tok.get_vocab(), student_tok.get_vocab()
    if v_t != v_s:
        only_t = sorted(set(v_t) - set(v_s))[:5]
        only_s = sorted(set(v_s) - set(v_t))[:5]
        moved = sorted(k for k in set(v_t) & set(v_s) if v_t[k] != v_s[k])[:5]
        raise ValueError(
            "teacher and student tokenizers differ: vocabularies of "
            f"{len(v_t)} and {len(v_s)} tokens; only in teacher: {only_t}; only in student: {only_s}; "
            f"same token, different id: {moved}. Token-level distillation needs one shared tokenizer."
        )
    for name in ("bos_token_id", "eos_token_id"):
        a, b = getattr(teacher_tok, name), getattr(student_tok, name)
        if a != b:
            raise ValueError(f"teacher and student tokenizers differ: {name} is {a} vs {b}")
    for text in probes:
        for specials in (False, True):
            a_ids = teacher_tok(text, add_special_tokens=specials)["input_ids"]
            b_ids = student_tok(text, add_special_tokens=specials)["input_ids"]
            if a_ids != b_ids:
                raise ValueError(
                    "teacher and student tokenizers share a vocabulary but encode differently "
                    f"(add_special_tokens={specials}): {text[:40]!r}… gives {a_ids[:12]}… vs "
                    f"{b_ids[:12]}…"
                )


def load_model_and_tokenizer(
    path: str | os.PathLike[str], dtype: torch.dtype | str | None = None, **kwargs: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from one local directory (offline).

    Checks the directory first and reports *every* missing file (config, weights, tokenizer) in one
    ``FileNotFoundError``, so a half-copied checkpoint is diagnosed in one go.
    """
    p = Path(path)
    _raise_if_missing(
        p, "causal LM and tokenizer", find_missing_files(p, weights=True, tokenizer=True)
    )
    return load_causal_lm(p, dtype=dtype, **kwargs), load_tokenizer(p)
