"""What every trainer here shares (RISE's weighted SFT and ExIt's GRPO): precision, arguments, the model to start from.

Both methods' workers build their trainer from the same ``training``
section; keeping these helpers below ``methods/`` lets each method import
them without importing the other.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import parse_flag_from_env
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from pipeline.config.choices import Finetune
from pipeline.config.settings import PipelineConfig, TrainingSection
from pipeline.engine.adapters import merge_adapter
from pipeline.engine.model_store import resolve_model
from pipeline.engine.precision import cpu_has_native_bf16, resolve_dtype
from pipeline.run.layout import RunDir, merged_dir
from pipeline.run.timings import phase
from pipeline.training.launch import previous_output
from pipeline.training.progress import StepProgress, append_progress


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports ``ru_maxrss`` in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def runs_on_cpu() -> bool:
    """True without CUDA, or when the accelerate config asks for the CPU."""
    return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")


def training_precision(config: PipelineConfig, on_cpu: bool) -> str:
    """``training.mixed_precision`` resolved: ``auto`` is bf16 where ``model.dtype`` runs as bfloat16, else ``no``.

    That is a GPU, or a CPU with native bfloat16 (:mod:`pipeline.engine.precision`):
    elsewhere bfloat16 is emulated and slower than float32. float16 needs loss
    scaling, so ``auto`` never picks it. Under bf16 the frozen base weights are
    loaded in bfloat16, PEFT keeps the LoRA weights in float32, and the LM head's
    log-softmax runs in float32, so the loss stays float32.
    """
    precision = config.training.mixed_precision
    if precision != "auto":
        return precision
    native = not on_cpu or cpu_has_native_bf16()
    return "bf16" if native and resolve_dtype(config.model.dtype, on_cpu) == "bfloat16" else "no"


def model_load_kwargs(settings: TrainingSection, bf16: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments of the model to train.

    The dtype is the training precision, so that no mixed precision is
    needed. QLoRA loads the frozen base weights in 4-bit NF4 (bitsandbytes)
    and computes in that precision; only the LoRA weights train.
    """
    dtype = torch.bfloat16 if bf16 else torch.float32
    if settings.finetune != Finetune.QLORA:
        return {"dtype": dtype}
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
    )
    return {"dtype": dtype, "quantization_config": quantization}


def trainer_arguments(
    output_dir: str | Path,
    settings: TrainingSection,
    *,
    bf16: bool,
    fp16: bool,
    seed: int,
    use_cpu: bool,
    report_to: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``training`` section as the Trainer arguments every trainer here shares (SFT and GRPO).

    Every setting is explicit because TRL's configs default differently from
    Trainer (gradient checkpointing and bf16 on). ``bf16`` also picks the
    dtype the model is loaded in (float32 otherwise), so bf16 autocast is
    never asked of float32 weights or vice versa; ``fp16`` autocasts float32
    weights, with loss scaling. ``report_to`` (``run.report_to``) names the
    trackers whose integration callbacks the trainer builds; none by default.
    """
    return dict(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.per_device_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=settings.lr_scheduler,
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        bf16=bf16,
        fp16=fp16,
        use_cpu=use_cpu,
        seed=seed,
        report_to=list(report_to or []),
        model_init_kwargs=model_load_kwargs(settings, bf16),
    )


def lora_config(settings: TrainingSection) -> LoraConfig | None:
    """The LoRA adapter to train (also on QLoRA's 4-bit base), or None for full fine-tuning."""
    if settings.finetune == Finetune.FULL:
        return None
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def starting_model(run: RunDir, iteration: int, bf16: bool) -> str | PeftModel:
    """The checkpoint to start from, or iteration K-1's adapter on the base model, trainable, to continue it."""
    base = resolve_model(run.config.model.name_or_path)
    previous = previous_output(run, iteration)
    if previous is None:
        return base
    if run.config.training.finetune == Finetune.FULL:
        return str(previous)
    model = AutoModelForCausalLM.from_pretrained(base, **model_load_kwargs(run.config.training, bf16))
    return PeftModel.from_pretrained(model, previous, is_trainable=True)


def write_merged_copy(run: RunDir, iteration: int, adapter: Path) -> None:
    """With ``rollout.serve_merged``, fold the trained adapter into the base model beside it: the eval
    serves that copy, which vLLM's CPU build runs much faster than a runtime LoRA. The main process's job."""
    if (merged := merged_dir(run, iteration)) is not None:
        with phase("merge"):
            merge_adapter(resolve_model(run.config.model.name_or_path), adapter, merged)


class ProgressWriter(TrainerCallback):
    """Appends the step to the stage's progress file (:mod:`pipeline.training.progress`) when training starts
    (or resumes) and after each optimizer step; the main process alone writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._append(state, start=True)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._append(state, start=False)

    def _append(self, state: TrainerState, start: bool) -> None:
        if state.is_world_process_zero:
            append_progress(self.path, StepProgress(state.global_step, state.max_steps, start))
