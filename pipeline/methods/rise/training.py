"""One RISE training iteration, inside the train stage's worker process.

Reads ``iter_K/curate/train.jsonl`` as TRL prompt-completion rows with
their RWR weights, starts from the base model (a new LoRA adapter, or the
whole model for full fine-tuning) or, with ``method.train_from: previous``,
from iteration K-1's adapter or model, and trains with
:class:`~pipeline.methods.rise.weighted_sft.WeightedSFTTrainer`, resuming from the newest
checkpoint. Paths come from :mod:`pipeline.training.launch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import parse_flag_from_env
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from pipeline.engine.adapters import merge_adapter
from pipeline.system.atomic import read_jsonl, write_json_atomic
from pipeline.config.settings import PipelineConfig
from pipeline.engine.model_store import resolve_model
from pipeline.run.layout import RunDir
from pipeline.tracking.callbacks import attach_trackers
from pipeline.training.launch import (
    checkpoints_dir,
    final_dir,
    merged_dir,
    previous_output,
    step_line,
    summary_path,
    training_set,
)
from pipeline.methods.rise.weighted_sft import WEIGHT, WeightedSFTTrainer, build_trainer, model_load_kwargs, train


def training_dataset(path: Path) -> Dataset:
    """The curated examples as rows of ``prompt`` (the history), ``completion`` (the target turn) and ``weight``."""
    return Dataset.from_list(
        [
            {
                "prompt": row["messages"],
                "completion": [{"role": "assistant", "content": row["completion"]}],
                WEIGHT: float(row["weight"]),
            }
            for row in read_jsonl(path, whole=True)
        ]
    )


def runs_on_cpu() -> bool:
    """True without CUDA, or when the accelerate config asks for the CPU."""
    return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")


def training_precision(config: PipelineConfig, on_cpu: bool) -> str:
    """``training.mixed_precision`` resolved: ``auto`` is bf16 on a GPU with ``model.dtype: bfloat16``, else ``no``.

    The CPU has no fast bf16 training, and float16 needs loss scaling, so
    ``auto`` never picks either there.
    """
    precision = config.training.mixed_precision
    if precision != "auto":
        return precision
    return "bf16" if not on_cpu and config.model.dtype == "bfloat16" else "no"


def starting_model(run: RunDir, iteration: int, bf16: bool) -> str | PeftModel:
    """The checkpoint to start from, or iteration K-1's adapter on the base model, trainable, to continue it."""
    base = resolve_model(run.config.model.name_or_path)
    previous = previous_output(run, iteration)
    if previous is None:
        return base
    if run.config.training.finetune == "full":
        return str(previous)
    model = AutoModelForCausalLM.from_pretrained(base, **model_load_kwargs(run.config.training, bf16))
    return PeftModel.from_pretrained(model, previous, is_trainable=True)


class StepPrinter(TrainerCallback):
    """Prints :func:`~pipeline.training.launch.step_line` when training starts (or resumes) and after each step."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._print(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._print(state)

    @staticmethod
    def _print(state: TrainerState) -> None:
        if state.is_world_process_zero:
            print(step_line(state.global_step, state.max_steps), flush=True)


def summarize(trainer: WeightedSFTTrainer, examples: int) -> dict[str, Any]:
    """What the stage reports; runtime and throughput are those of the last attempt (the one that resumed).

    The throughput is the one of the last logging step: Trainer's final
    metrics leave it out.
    """
    history = trainer.state.log_history
    return {
        "examples": examples,
        "steps": trainer.state.global_step,
        "final_loss": _last(history, "loss"),
        "runtime_s": _last(history, "train_runtime"),
        "train_tokens_per_s": _last(history, "train_tokens_per_second"),
    }


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((entry[key] for entry in reversed(history) if key in entry), None)


def train_iteration(run: RunDir, iteration: int) -> Path:
    """Train iteration ``iteration`` and write its adapter (or model) and summary; returns the adapter's directory.

    Every process runs this; only the main one writes the summary and the
    merged model (the adapter is saved by all, written by the main one).
    """
    on_cpu = runs_on_cpu()
    precision = training_precision(run.config, on_cpu)
    bf16 = precision == "bf16"
    dataset = training_dataset(training_set(run, iteration))
    trainer = build_trainer(
        starting_model(run, iteration, bf16),
        dataset,
        checkpoints_dir(run, iteration),
        run.config.training,
        bf16=bf16,
        fp16=precision == "fp16",
        seed=run.config.run.seed,
        use_cpu=on_cpu,
        report_to=run.config.run.report_to,
    )
    if len(trainer.train_dataset) == 0:
        raise ValueError(
            f"no example has a target token within training.max_seq_length={run.config.training.max_seq_length}: "
            "every prompt fills it; raise it"
        )
    trainer.add_callback(StepPrinter())
    attach_trackers(trainer, run, iteration)
    final = train(trainer, final_dir(run, iteration))
    if trainer.accelerator.is_main_process:
        if (merged := merged_dir(run, iteration)) is not None:
            merge_adapter(resolve_model(run.config.model.name_or_path), final, merged)
        write_json_atomic(summary_path(run, iteration), summarize(trainer, len(dataset)))
    return final
