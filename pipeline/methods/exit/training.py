"""One ExIt training iteration, inside the train stage's worker process.

TRL's GRPOTrainer trains the LoRA policy for ``method.steps_per_iteration``
steps. Its dataset is the training tasks; its ``rollout_func``
(:class:`~pipeline.methods.exit.rollout.ExitRollout`) replaces a task by a buffered
partial history when the curriculum says so, generates through the rollout
servers the stage started, grades, and updates the buffer. Iteration 1
starts a new adapter on the base model, iteration K continues iteration
K-1's adapter and buffer.

With ``rollout.serve_merged`` the main process also folds the final adapter
into a merged copy of the base model, which the eval stage serves (faster on
vLLM's CPU build); training itself always serves the base model and loads
the adapter it syncs by name.

Several training processes share one generation batch: the main process
generates and scores it, and alone holds the buffer and writes the run's
files (:class:`~pipeline.methods.exit.rollout.ExitRollout`).

Every checkpoint carries a copy of the buffer as it was at that step
(written before the checkpoint's ``trainer_state.json``, so a checkpoint
that counts as complete always has it), and a resumed training restarts
from both, after dropping the group log's lines of the steps it will redo:
the buffer, the weights and the log stay consistent with each other.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from pipeline.config.settings import PipelineConfig
from pipeline.engine.model_store import resolve_model
from pipeline.methods.exit.buffer import LearnabilityBuffer
from pipeline.methods.exit.layout import buffer_path, groups_path, sync_dir
from pipeline.methods.exit.method import ExitMethod
from pipeline.methods.exit.rollout import ADVANTAGE_SCALE, REWARD, ExitRollout, open_rollout
from pipeline.run.files import BUFFER_NAME
from pipeline.run.layout import RunDir, checkpoints_dir, final_dir, summary_path
from pipeline.system.atomic import read_jsonl, write_json_atomic
from pipeline.tracking.callbacks import attach_trackers
from pipeline.training.checkpoints import checkpoint_step, last_checkpoint, train
from pipeline.training.lm_head import use_compact_lm_head
from pipeline.training.progress import progress_path
from pipeline.training.trainer import (
    ProgressWriter,
    lora_config,
    peak_rss_gb,
    runs_on_cpu,
    starting_model,
    trainer_arguments,
    training_precision,
    write_merged_copy,
)

# The per-token fields GRPOTrainer asks its policy's fused LM head for (the entropy feeds its metric and mask).
GRPO_OUTPUTS = ("log_probs", "entropy")


def scaled_advantages(advantages: torch.Tensor, inputs: list[dict[str, Any]]) -> torch.Tensor:
    """GRPO's advantages times each completion's diversity factor (1 where the rollout gave none)."""
    scales = [float(example.get(ADVANTAGE_SCALE, 1.0)) for example in inputs]
    return advantages * torch.tensor(scales, dtype=advantages.dtype, device=advantages.device)


class ExitGRPOTrainer(GRPOTrainer):
    """GRPO with ExIt's additions: the diversity bonus on advantages, the buffer in checkpoints and in the logs."""

    rollout_func: ExitRollout  # always ExIt's rollout, whose generator holds the buffer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # On the CPU the policy's LM head scores the completion tokens alone (pipeline.training.lm_head).
        self.compact_lm_head = use_compact_lm_head(self, GRPO_OUTPUTS, temperature=self.temperature)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        # TRL merged the rollout's extra fields into ``inputs``: each completion's advantage factor.
        output["advantages"] = scaled_advantages(output["advantages"], inputs)
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Each logging step also carries the buffer's state, so the trackers plot it on the same step."""
        generator = self.rollout_func.generator  # None on the processes that do not generate
        if generator is not None and "loss" in logs:
            logs = {**logs, **buffer_metrics(generator.records.buffer.stats())}
        super().log(logs, start_time)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            generator = self.rollout_func.generator
            assert generator is not None, "the main process, the one that saves, holds the generator"
            folder.mkdir(parents=True, exist_ok=True)
            generator.records.buffer.save(folder / BUFFER_NAME)
        super()._save_checkpoint(model, trial)


def buffer_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The buffer's size, depth histogram and learnability quantiles as flat scalars for the trackers."""
    metrics = {"buffer/size": float(stats["size"])}
    metrics |= {f"buffer/depth_{depth}": float(count) for depth, count in stats["depth_histogram"].items()}
    metrics |= {f"buffer/score_{name}": float(value) for name, value in (stats["score_quantiles"] or {}).items()}
    return metrics


def exit_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """The rewards the rollout computed (None: the group's request failed, so it has no advantage)."""
    return list(kwargs[REWARD])


def grpo_config(config: PipelineConfig, output_dir: Path, *, precision: str, use_cpu: bool) -> GRPOConfig:
    """TRL's GRPO arguments: the method's group size, clipping, KL and steps, the rollout's sampling, and the
    ``training`` section (:func:`~pipeline.methods.rise.weighted_sft.trainer_arguments`)."""
    method, sampling = config.method, config.rollout.sampling
    common = trainer_arguments(
        output_dir,
        config.training,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=config.run.seed,
        use_cpu=use_cpu,
        report_to=config.run.report_to,
    )
    return GRPOConfig(
        **common,
        max_steps=method.steps_per_iteration,
        num_generations=method.group_size,
        epsilon=method.clip_eps,
        beta=method.kl_beta,
        max_completion_length=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        logging_steps=1,
    )


def starting_buffer(run: RunDir, iteration: int, checkpoint: str | None) -> LearnabilityBuffer:
    """The checkpoint's buffer when resuming, else iteration K-1's final buffer, else an empty one."""
    if checkpoint is not None:
        return LearnabilityBuffer.load(Path(checkpoint) / BUFFER_NAME)
    if iteration > 1:
        return LearnabilityBuffer.load(buffer_path(run, iteration - 1))
    method: ExitMethod = run.config.method
    return LearnabilityBuffer(method.buffer_capacity, method.kappa, seed=run.config.run.seed)


def summarize(global_step: int, groups: Path, buffer: LearnabilityBuffer, steps: int, seconds: float) -> dict:
    """Steps, throughput, the depths trained on and the failed groups (from the whole group log), and the
    buffer's state."""
    records = read_jsonl(groups)
    depths = [record["depth"] for record in records if record["error"] is None]
    failed = [record["error"] for record in records if record["error"] is not None]
    histogram = Counter(depths)
    return {
        "steps": global_step,
        "groups": len(depths),
        "failed_groups": len(failed),
        "first_error": failed[0] if failed else None,
        "mean_depth": statistics.fmean(depths) if depths else None,
        "max_depth": max(depths, default=None),
        "depth_histogram": {str(d): histogram[d] for d in sorted(histogram)},
        "steps_per_minute": 60 * steps / seconds if seconds > 0 else None,
        "buffer": buffer.stats(),
        "peak_rss_gb": peak_rss_gb(),
    }


def train_iteration(run: RunDir, iteration: int) -> Path:
    """Run one ExIt iteration's GRPO steps; write the adapter, buffer, group log and summary."""
    config, on_cpu = run.config, runs_on_cpu()
    precision = training_precision(config, on_cpu)
    bf16 = precision == "bf16"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model.name_or_path))
    checkpoint = last_checkpoint(checkpoints_dir(run, iteration))
    resumed_at = checkpoint_step(checkpoint)
    # The launcher's global rank: known before the trainer (which needs the rollout function) sets up the
    # process group; a PartialState made this early would not see the launch's processes on the CPU.
    main = int(os.environ.get("RANK", "0")) == 0
    buffer = starting_buffer(run, iteration, checkpoint) if main else None  # the main process generates
    if buffer is not None:
        buffer.save(buffer_path(run, iteration))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL; written against 1.16
    with open_rollout(run, iteration, buffer, resumed_at, tokenizer) as rollout:
        trainer = ExitGRPOTrainer(
            model=starting_model(run, iteration, bf16),
            reward_funcs=[exit_reward],
            args=grpo_config(config, checkpoints_dir(run, iteration), precision=precision, use_cpu=on_cpu),
            train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in rollout.prompts]),
            processing_class=tokenizer,
            peft_config=lora_config(config.training) if iteration == 1 else None,
            rollout_func=rollout,
            callbacks=[ProgressWriter(progress_path(run, iteration))],
        )
        attach_trackers(trainer, run, iteration)
        started = time.monotonic()
        final = train(trainer, final_dir(run, iteration))
        seconds = time.monotonic() - started
    if buffer is not None:
        steps = trainer.state.global_step - resumed_at
        write_json_atomic(
            summary_path(run, iteration),
            summarize(trainer.state.global_step, groups_path(run, iteration), buffer, steps, seconds),
        )
        shutil.rmtree(sync_dir(run, iteration), ignore_errors=True)
        write_merged_copy(run, iteration, final)
    return final
