"""Assets of the language study (issue 5, item 5b): tokenizer, pre-trained teacher and student.

``logitkd lm make-tiny`` writes random models on toy data; the study needs models that have seen
real English first. This script, using only ``logitkd.lm``'s public API, writes under ``OUT``:

* a byte-level BPE tokenizer (:func:`logitkd.lm.train_tokenizer`) trained on the Austen novels
  plus the prompts and responses of the Dolly training rows, so instructions tokenise well;
* ``teacher/`` and ``student/``: Llama models (:func:`logitkd.lm.build_tiny_causal_lm`), each
  pre-trained by next-token prediction, ``L = -1/N sum_i log p(x_{i+1} | x_{<=i})``, on
  fixed-length chunks of the Austen text (causal LM pre-training as in GPT-2 / Llama, at toy
  scale), with AdamW and a cosine schedule. The teacher is larger and trains longer, so after
  instruction tuning it should beat the student trained alone (the premise of any KD table).

Usage, from the repo root::

    PYTHONPATH=src python configs/studies/lm_pretrain.py OUT --teacher-steps 600 --student-steps 300

Prints a JSON summary (paths, sizes, final losses, seconds) and writes it to ``OUT/pretrain.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from logitkd.lm import build_prompt, build_tiny_causal_lm, read_instruction_jsonl, train_tokenizer

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read_corpus(text_dir: Path, instruction_file: Path) -> tuple[list[str], list[str]]:
    """``(austen_paragraphs, dolly_texts)``: blank-line-separated paragraphs of every ``*.txt``
    in ``text_dir`` and ``prompt + response`` of every record in ``instruction_file``."""
    files = sorted(text_dir.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"text_dir {text_dir} holds no *.txt files")
    if not instruction_file.is_file():
        raise FileNotFoundError(f"instruction_file {instruction_file} does not exist")
    paragraphs: list[str] = []
    for f in files:
        for block in f.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            block = " ".join(block.split())
            if block:
                paragraphs.append(block)
    dolly = [build_prompt(r) + r.response for r in read_instruction_jsonl(instruction_file)]
    return paragraphs, dolly


def chunk_ids(ids: Sequence[int], length: int) -> torch.Tensor:
    """Non-overlapping ``(n, length)`` chunks of one long token stream (the tail is dropped)."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one chunk of {length}")
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def pretrain(
    model: torch.nn.Module,
    chunks: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    log_every: int = 50,
) -> float:
    """Causal-LM pre-training on random batches of ``chunks`` (linear warm-up over 5% of the
    steps, then cosine decay to 10% of ``lr``); returns the mean loss of the last 10% of steps."""
    if steps < 1:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    tail: list[float] = []
    for step in range(steps):
        idx = torch.randint(0, chunks.shape[0], (batch_size,), generator=gen)
        batch = chunks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  step {step:5d}/{steps}  loss {loss.item():.3f}", flush=True)
    model.eval()
    return sum(tail) / len(tail)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the tokenizer and the two pre-trained models; print and save the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--text-dir", type=Path, default=SHARED / "text" / "austen")
    p.add_argument(
        "--instructions", type=Path, default=SHARED / "instructions/dolly/train-partial.jsonl"
    )
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--teacher-hidden", type=int, default=256)
    p.add_argument("--teacher-layers", type=int, default=4)
    p.add_argument("--teacher-heads", type=int, default=4)
    p.add_argument("--student-hidden", type=int, default=128)
    p.add_argument("--student-layers", type=int, default=2)
    p.add_argument("--student-heads", type=int, default=2)
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-chars", type=int, default=0, help="cap the Austen text (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    paragraphs, dolly = read_corpus(args.text_dir, args.instructions)
    if args.max_chars > 0:
        kept, total = [], 0
        for par in paragraphs:
            if total >= args.max_chars:
                break
            kept.append(par)
            total += len(par)
        paragraphs, dolly = kept, dolly[: max(1, len(dolly) * len(kept) // len(paragraphs))]
    # Llama convention: bos before every sequence, so instruction prompts start like chunks do.
    tokenizer = train_tokenizer(paragraphs + dolly, args.vocab_size, add_bos=True)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for par in paragraphs:
        stream.extend(tokenizer(par)["input_ids"])
        stream.append(eos)
    chunks = chunk_ids(stream, args.seq_len)
    print(f"tokenizer {len(tokenizer)} tokens; Austen: {len(stream)} tokens, {len(chunks)} chunks")

    summary: dict[str, object] = {
        "out": str(args.out),
        "vocab_size": len(tokenizer),
        "austen_tokens": len(stream),
        "seq_len": args.seq_len,
    }
    specs = (
        (
            "teacher",
            args.teacher_hidden,
            args.teacher_layers,
            args.teacher_heads,
            args.teacher_steps,
        ),
        (
            "student",
            args.student_hidden,
            args.student_layers,
            args.student_heads,
            args.student_steps,
        ),
    )
    for i, (name, hidden, layers, heads, steps) in enumerate(specs):
        start = time.perf_counter()
        torch.manual_seed(args.seed + i)
        model = build_tiny_causal_lm(
            "llama", len(tokenizer), hidden=hidden, layers=layers, heads=heads,
            max_positions=1024, seed=args.seed + i,
        )  # fmt: skip
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{name}: hidden {hidden}, {layers} layers, {n_params / 1e6:.2f}M params, {steps} steps"
        )
        loss = pretrain(
            model, chunks, steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed + i
        )
        model.save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)
        summary[name] = {
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "params": n_params,
            "steps": steps,
            "final_loss": loss,
            "seconds": round(time.perf_counter() - start, 1),
        }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrain.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
