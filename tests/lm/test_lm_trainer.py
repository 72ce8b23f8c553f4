"""DistillationTrainer: loss vs a materialised reference, vocab alignment, accumulation, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from _lm_helpers import examples, training_args

from logitkd.lm.data import InstructionCollator, collate_batch
from logitkd.lm.models import build_tiny_causal_lm
from logitkd.lm.trainer import DistillationTrainer
from logitkd.losses.kd import kd_loss


@pytest.fixture()
def pair(tokenizer):
    """A GPT-2 student with tied embeddings and a wider Llama teacher, one tokenizer; float64 so
    that comparisons with the reference are not blurred by fp32 matmul kernels."""
    student = build_tiny_causal_lm(
        "gpt2", len(tokenizer), hidden=32, tie_word_embeddings=True, seed=1
    )
    teacher = build_tiny_causal_lm("llama", len(tokenizer), hidden=48, heads=2, seed=2)
    return student.double(), teacher.double()


def _trainer(tmp_path, tokenizer, student, teacher, **kw):
    args = kw.pop("args", None) or training_args(tmp_path)
    return DistillationTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=examples(tokenizer),
        data_collator=InstructionCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        **kw,
    )


def _reference(student, teacher, batch, kd_ratio, vocab=None, **kd_kw):
    """(1 - r) CE + r KD from the models' full logits, shifted for causal LM."""
    labels = batch["labels"][:, 1:].reshape(-1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s = student(**inputs).logits[:, :-1].reshape(labels.shape[0], -1)
    with torch.no_grad():
        t = teacher(**inputs).logits[:, :-1].reshape(labels.shape[0], -1)
    v = vocab or s.shape[-1]
    ce = F.cross_entropy(s, labels, ignore_index=-100)
    kd = kd_loss(s[:, :v], t[:, :v], labels, **kd_kw)
    return (1 - kd_ratio) * ce + kd_ratio * kd


@pytest.mark.parametrize(
    "kd_kw",
    [
        {"temperature": 1.0},
        {"temperature": 2.0, "loca_alpha": 0.9},
        {"temperature": 1.0, "standardize": True, "divergence": "reverse_kl"},
    ],
)
def test_compute_loss_equals_materialised_reference(tmp_path, tokenizer, pair, kd_kw):
    student, teacher = pair
    trainer = _trainer(tmp_path, tokenizer, student, teacher, kd_ratio=0.3, chunk_size=7, **kd_kw)
    batch = collate_batch(examples(tokenizer)[:3], tokenizer.pad_token_id)
    student.eval()  # GPT-2's dropout would make the two forward passes differ
    loss = trainer.compute_loss(student, dict(batch))
    (g_tied,) = torch.autograd.grad(loss, student.get_input_embeddings().weight)
    ref = _reference(student, teacher, batch, 0.3, **kd_kw)
    (g_ref,) = torch.autograd.grad(ref, student.get_input_embeddings().weight)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    # tied embeddings: the chunked loss's weight gradient joins the embedding's own
    torch.testing.assert_close(g_tied, g_ref, rtol=1e-8, atol=1e-10 * float(g_ref.abs().max()))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_full_logits_path_matches_chunked(tmp_path, tokenizer, pair):
    student, teacher = pair
    batch = collate_batch(examples(tokenizer)[:4], tokenizer.pad_token_id)
    student.eval()
    losses = []
    for chunked in (True, False):
        trainer = _trainer(tmp_path, tokenizer, student, teacher, loca_alpha=0.9, chunked=chunked)
        losses.append(trainer.compute_loss(student, dict(batch)).detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=0)


def test_padded_teacher_head_is_sliced_to_the_shared_vocabulary(tmp_path, tokenizer):
    n = len(tokenizer)
    student = build_tiny_causal_lm("llama", n, hidden=32, seed=3).double()
    teacher = build_tiny_causal_lm("llama", n + 64, hidden=32, seed=4).double()  # padded rows
    trainer = _trainer(tmp_path, tokenizer, student, teacher, kd_ratio=1.0)
    assert trainer.vocab_size == n
    batch = collate_batch(examples(tokenizer)[:2], tokenizer.pad_token_id)
    loss = trainer.compute_loss(student, dict(batch))
    ref = _reference(student, teacher, batch, 1.0, vocab=n, temperature=1.0)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)


def test_teacher_vocabulary_that_cannot_be_aligned_is_an_error(tmp_path, tokenizer):
    student = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=3)
    teacher = build_tiny_causal_lm("llama", len(tokenizer) - 10, hidden=32, seed=4)
    with pytest.raises(ValueError, match="cover"):
        _trainer(tmp_path, tokenizer, student, teacher)


def test_bad_arguments(tmp_path, tokenizer, pair):
    student, teacher = pair
    with pytest.raises(ValueError, match="teacher_model"):
        _trainer(tmp_path, tokenizer, student, None, kd_ratio=0.5)
    with pytest.raises(ValueError, match="kd_ratio"):
        _trainer(tmp_path, tokenizer, student, teacher, kd_ratio=1.5)


def test_post_processed_logits_are_detected(tmp_path, tokenizer):
    student = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=5)
    # a soft-capping-like head: the logits are no longer hidden @ W.T
    student.lm_head.register_forward_hook(lambda _m, _i, out: 10 * torch.tanh(out / 10))
    trainer = _trainer(tmp_path, tokenizer, student, None, kd_ratio=0.0)
    batch = collate_batch(examples(tokenizer)[:2], tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="chunked=False"):
        trainer.compute_loss(student, dict(batch))


def _params_after(tmp_path, tokenizer, teacher, name, **args_kw):
    student = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=6)
    args = training_args(
        tmp_path / name, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, **args_kw
    )
    trainer = _trainer(tmp_path, tokenizer, student, teacher, args=args, loca_alpha=0.9)
    trainer.train()
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def test_gradient_accumulation_equals_the_large_batch(tmp_path, tokenizer):
    """Micro-batches with different token counts must add up to the whole batch's mean."""
    teacher = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=7)
    one = _params_after(
        tmp_path, tokenizer, teacher, "ga1", per_device_train_batch_size=8, max_steps=1
    )
    two = _params_after(
        tmp_path, tokenizer, teacher, "ga4", per_device_train_batch_size=2,
        gradient_accumulation_steps=4, max_steps=1,
    )  # fmt: skip
    start = torch.cat(
        [
            p.flatten()
            for p in build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=6).parameters()
        ]
    )
    assert (one - start).abs().max() > 1e-4  # the step did something
    torch.testing.assert_close(two, one, rtol=0, atol=1e-6)


def test_training_logs_terms_and_resumes_from_a_checkpoint(tmp_path, tokenizer):
    teacher = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=8)

    def run(out, steps, resume=None):
        student = build_tiny_causal_lm("llama", len(tokenizer), hidden=32, seed=9)
        args = training_args(
            out, max_steps=steps, per_device_train_batch_size=2, save_strategy="steps", save_steps=2
        )
        trainer = _trainer(tmp_path, tokenizer, student, teacher, args=args)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, torch.cat([p.detach().flatten() for p in student.parameters()])

    full, w_full = run(tmp_path / "full", 4)
    logs = [h for h in full.state.log_history if "loss" in h]
    assert len(logs) == 4 and all("ce" in h and "kd" in h for h in logs)
    for h in logs:  # the logged loss is the weighted sum of the logged terms
        assert h["loss"] == pytest.approx(0.5 * h["ce"] + 0.5 * h["kd"], rel=1e-3)
    assert (tmp_path / "full" / "checkpoint-2").is_dir()
    resumed, w_resumed = run(tmp_path / "full", 4, resume=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    torch.testing.assert_close(w_resumed, w_full, rtol=0, atol=1e-6)


def test_evaluate_reports_a_finite_loss_without_touching_training_logs(tmp_path, tokenizer, pair):
    student, teacher = pair
    trainer = _trainer(tmp_path, tokenizer, student, teacher, loca_alpha=0.9)
    metrics = trainer.evaluate(eval_dataset=examples(tokenizer))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert trainer._n_logged_tokens == 0  # eval batches are not counted as training terms
