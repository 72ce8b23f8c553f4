"""Typed configuration of the language-model commands (``logitkd lm …``).

Plain dataclasses, filled from YAML recipes in ``configs/lm/`` plus ``key=value`` overrides by
:func:`logitkd.config.load_config` (``distill.loca_alpha=0.9``, ``train.learning_rate=1e-5``).
Validation happens here, in ``__post_init__``, so a bad recipe fails before a model is loaded.

Sections: ``model`` (local directories), ``data`` (instruction JSONL files and length limits),
``distill`` (the loss), ``train`` (mapped onto ``transformers.TrainingArguments``),
``generation`` (decoding for evaluation), ``seqkd`` (teacher generation for sequence-level KD),
``evaluate`` (outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DataSection",
    "DistillSection",
    "EvaluateSection",
    "GenerationSection",
    "LMConfig",
    "ModelSection",
    "SeqKDSection",
    "TrainSection",
]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class ModelSection:
    """Local model directories (nothing is downloaded at run time).

    ``student``: the model to train (``sft``, ``seqkd``, ``distill``) or to evaluate
    (``generate``, ``evaluate``). ``teacher``: needed by ``distill`` and ``seqkd``; optional for
    ``evaluate`` (then its token-level mis-instruction ratio is reported). ``tokenizer``: defaults
    to the student directory. ``dtype``/``teacher_dtype``: load dtype (``bf16``, ``fp32``, …;
    ``None`` keeps the checkpoint's; ``teacher_dtype`` defaults to ``dtype``).
    """

    student: str = ""
    teacher: str | None = None
    tokenizer: str | None = None
    dtype: str | None = None
    teacher_dtype: str | None = None


@dataclass
class DataSection:
    """Instruction data (Dolly or MiniLLM JSONL) and the truncation limits.

    ``limit``/``eval_limit`` keep the first records of the training / each test file (smoke
    runs). Prompts over ``max_prompt_length`` tokens keep their end (``prompt_truncation="left"``,
    see :mod:`logitkd.lm.data`), responses are cut to ``max_length`` in total.
    """

    train_file: str | None = None
    valid_file: str | None = None
    test_files: list[str] = field(default_factory=list)
    format: Literal["auto", "dolly", "minillm"] = "auto"
    max_prompt_length: int = 256
    max_length: int = 512
    prompt_truncation: Literal["left", "right"] = "left"
    limit: int | None = None
    eval_limit: int | None = None

    def __post_init__(self) -> None:
        _require(self.max_prompt_length > 0, "data.max_prompt_length must be > 0")
        _require(
            self.max_length > self.max_prompt_length,
            f"data.max_length ({self.max_length}) must exceed data.max_prompt_length "
            f"({self.max_prompt_length})",
        )
        for name in ("limit", "eval_limit"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"data.{name} must be > 0 or null")


@dataclass
class DistillSection:
    """Token-level loss ``(1 - kd_ratio) * CE + kd_ratio * KD`` (``kd_ratio = 0`` for SFT).

    ``divergence``: ``forward_kl`` (KD), ``reverse_kl``, ``jsd`` (with ``jsd_beta``).
    ``loca_alpha``: LoCa calibration of the teacher toward the reference next token.
    ``standardize``: z-score both logits (logit standardization; ``temperature`` is its base).
    ``chunked``: compute the loss through the LM head in ``chunk_size``-token chunks
    (:func:`logitkd.lm.chunked_distill_loss`); ``false`` uses the models' full logits (needed
    when the ``lm_head`` is sharded: FSDP, DeepSpeed ZeRO-3).
    """

    kd_ratio: float = 0.5
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    temperature: float = 1.0
    loca_alpha: float | None = None
    standardize: bool = False
    jsd_beta: float = 0.5
    chunked: bool = True
    chunk_size: int = 1024

    def __post_init__(self) -> None:
        _require(
            0.0 <= self.kd_ratio <= 1.0, f"distill.kd_ratio must be in [0, 1], got {self.kd_ratio}"
        )
        _require(self.temperature > 0, f"distill.temperature must be > 0, got {self.temperature}")
        _require(
            self.loca_alpha is None or 0.0 < self.loca_alpha < 1.0,
            f"distill.loca_alpha must be in (0, 1) or null, got {self.loca_alpha}",
        )
        _require(
            0.0 < self.jsd_beta < 1.0, f"distill.jsd_beta must be in (0, 1), got {self.jsd_beta}"
        )
        _require(self.chunk_size > 0, f"distill.chunk_size must be > 0, got {self.chunk_size}")


@dataclass
class TrainSection:
    """Training hyper-parameters, passed to ``transformers.TrainingArguments`` by name.

    The global batch is ``per_device_train_batch_size * gradient_accumulation_steps * #GPUs``.
    ``resume_from_checkpoint``: a checkpoint directory, or ``"last"`` for the newest one in
    ``output_dir``. ``warmup_steps``: steps, or a fraction of all steps when below 1.
    ``extra``: any other ``TrainingArguments`` field, verbatim.
    """

    output_dir: str = "runs/lm"
    num_train_epochs: float = 10.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: float = 0.0
    lr_scheduler_type: str = "constant"
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    logging_steps: int = 10
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"
    save_steps: int = 500
    save_total_limit: int | None = 2
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = None
    bf16: bool = False
    fp16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    use_cpu: bool = False
    dataloader_num_workers: int = 0
    report_to: list[str] = field(default_factory=lambda: ["none"])
    resume_from_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            self.per_device_train_batch_size > 0, "train.per_device_train_batch_size must be > 0"
        )
        _require(
            self.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps must be > 0"
        )
        _require(
            self.learning_rate > 0, f"train.learning_rate must be > 0, got {self.learning_rate}"
        )
        _require(not (self.bf16 and self.fp16), "train.bf16 and train.fp16 are exclusive")
        _require(
            self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}"
        )


@dataclass
class GenerationSection:
    """Decoding for ``generate``/``evaluate`` (MiniLLM's protocol by default).

    ``modes``: ``greedy`` (one run) and/or ``sample`` (one run per seed in ``seeds``, with
    ``temperature``, ``top_p``, ``top_k``; MiniLLM samples with T=1, top_p=1, no top-k, seeds
    10…50, and reports the mean ± std of Rouge-L over them).
    """

    modes: list[Literal["greedy", "sample"]] = field(default_factory=lambda: ["sample"])
    seeds: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50])
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        _require(len(self.modes) > 0, "generation.modes must list greedy and/or sample")
        _require(
            "sample" not in self.modes or len(self.seeds) > 0,
            "generation.seeds must not be empty when sampling",
        )
        _require(self.max_new_tokens > 0, "generation.max_new_tokens must be > 0")
        _require(self.batch_size > 0, "generation.batch_size must be > 0")


@dataclass
class SeqKDSection:
    """Sequence-level KD: the teacher answers the training prompts, the student is fine-tuned on
    the answers. ``generated_file`` defaults to ``<train.output_dir>/seqkd_train.jsonl``; with
    ``reuse`` an existing file is used as is (generation is the expensive part)."""

    generated_file: str | None = None
    reuse: bool = True
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 256
    batch_size: int = 8


@dataclass
class EvaluateSection:
    """Outputs of ``evaluate``/``generate``: the JSON summary (default
    ``<train.output_dir>/eval.json``) and per-run prediction files (``save_predictions``)."""

    output_file: str | None = None
    save_predictions: bool = True
    misinstruction: bool = True


@dataclass
class LMConfig:
    """One recipe for every ``logitkd lm`` action."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    distill: DistillSection = field(default_factory=DistillSection)
    train: TrainSection = field(default_factory=TrainSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    seqkd: SeqKDSection = field(default_factory=SeqKDSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
