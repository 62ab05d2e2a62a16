"""One RISE training iteration, inside the train stage's worker process.

Reads ``iter_K/curate/train.jsonl`` as TRL prompt-completion rows with
their RWR weights, starts from the base model (a new LoRA adapter, or the
whole model for full fine-tuning) or, with ``method.train_from: previous``,
from iteration K-1's adapter or model, and trains with
:class:`~pipeline.methods.rise.weighted_sft.WeightedSFTTrainer`, resuming from the newest
checkpoint. Paths come from :mod:`pipeline.run.layout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset

from pipeline.methods.rise.curate_stage import training_set
from pipeline.methods.rise.weighted_sft import REFUTED_SPAN, WEIGHT, WeightedSFTTrainer, build_trainer
from pipeline.run.layout import RunDir, checkpoints_dir, final_dir, summary_path
from pipeline.system.atomic import read_jsonl, write_json_atomic
from pipeline.tracking.callbacks import attach_trackers
from pipeline.training.checkpoints import train
from pipeline.training.progress import progress_path
from pipeline.training.trainer import (
    ProgressWriter,
    peak_rss_gb,
    runs_on_cpu,
    starting_model,
    training_precision,
    write_merged_copy,
)


def training_dataset(path: Path) -> Dataset:
    """The curated examples as rows of ``prompt`` (the history), ``completion`` (the target turn) and ``weight``.

    When some example is an unlikelihood one, every row also has its span's
    ``refuted_start``/``refuted_end`` (-1 on the others).
    """
    rows = read_jsonl(path, whole=True)
    spans = any(row.get("refuted_span") for row in rows)
    return Dataset.from_list([_training_row(row, spans) for row in rows])


def _training_row(row: dict[str, Any], spans: bool) -> dict[str, Any]:
    columns = {
        "prompt": row["messages"],
        "completion": [{"role": "assistant", "content": row["completion"]}],
        WEIGHT: float(row["weight"]),
    }
    if spans:
        columns.update(zip(REFUTED_SPAN, row.get("refuted_span") or (-1, -1)))
    return columns


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
        "peak_rss_gb": peak_rss_gb(),
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
        run.config.method,
        bf16=bf16,
        fp16=precision == "fp16",
        seed=run.config.run.seed,
        use_cpu=on_cpu,
        report_to=run.config.run.report_to,
    )
    if len(trainer.train_dataset) == 0:  # type: ignore[arg-type]  # a map-style Dataset (WeightedSFTTrainer)
        raise ValueError(
            f"no example has a target token within method.max_seq_length={run.config.method.max_seq_length}: "
            "every prompt fills it; raise it"
        )
    trainer.add_callback(ProgressWriter(progress_path(run, iteration)))
    attach_trackers(trainer, run, iteration)
    final = train(trainer, final_dir(run, iteration))
    if trainer.accelerator.is_main_process:
        write_merged_copy(run, iteration, final)
        write_json_atomic(summary_path(run, iteration), summarize(trainer, len(dataset)))
    return final
