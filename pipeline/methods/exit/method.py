"""ExIt, the method: its ``method`` section (the buffer, the curriculum and GRPO's settings), its plan, its
checks of the config and its model card.

Its plan is train -> eval per iteration (:mod:`pipeline.methods.exit.stages`);
its training is :mod:`pipeline.methods.exit.training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.config.choices import Finetune
from pipeline.config.launch import LaunchSettings
from pipeline.config.sections import stage
from pipeline.methods.base import Method, counts_cell

if TYPE_CHECKING:
    from pipeline.config.settings import PipelineConfig
    from pipeline.engine.stage_context import StageContext
    from pipeline.run.layout import RunDir


class ExitMethod(Method):
    """ExIt: GRPO on single improvement steps drawn from a buffer of learnable partial histories."""

    TITLE: ClassVar[str] = "ExIt (GRPO on self-iteration steps from a learnability buffer)"
    CARD_COLUMNS: ClassVar[tuple[str, ...]] = ("groups", "mean depth", "depth histogram", "buffer size")
    REPORTED: ClassVar[tuple[str, ...]] = (
        "group_size",
        "steps_per_iteration",
        "buffer_capacity",
        "min_buffer",
        "select_prob",
        "divergence_prob",
    )

    name: Literal["exit"] = Field(
        "exit",
        description="ExIt: GRPO on single improvement steps drawn from a buffer of "
        "learnable partial histories (docs/exit.md).",
    )
    buffer_capacity: int = Field(512, ge=1, description="N: the buffer keeps the top N instances by learnability.")
    min_buffer: int = Field(128, ge=0, description="B_min: items needed before the buffer is sampled.")
    select_prob: float = Field(0.5, ge=0, le=1, description="p: chance a group continues a buffer instance.")
    kappa: float = Field(
        4.0,
        description="Sampling weight exp(kappa * S), S the variance of a group's rewards in [0, 1] (at most "
        "1/4): with 4, a group split half and half is drawn e times as often as one that all agree.",
    )
    divergence_prob: float = Field(0.2, ge=0, le=1, description="p_div: chance an improvement step must diverge.")
    group_size: int = Field(8, ge=2, description="G: completions per prompt (GRPO group).")
    clip_eps: float = Field(0.2, gt=0, description="PPO clipping epsilon.")
    kl_beta: float = Field(0.0, ge=0, description="KL coefficient to the reference (0: no reference model).")
    steps_per_iteration: int = Field(50, ge=1, description="GRPO optimizer steps per iteration.")
    sync_every: int = Field(
        1,
        ge=1,
        description="Load the current adapter into vLLM every this many steps; only 1 is accepted "
        "(a staler adapter samples off-policy, and GRPO here gets no sampling log-probabilities to correct it).",
    )
    max_failed_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Stop the stage when more than this share of its GRPO groups failed, judged "
        "from ceil(1 / share) groups on (one early failure never stops a run; 0: stop at the first).",
    )
    delta_max: float = Field(1.0, gt=0, description="Improvement reward max(0, delta / delta_max) (graded scores).")
    diversity_bonus: bool = Field(False, description="Scale advantages by embedding distance to the group centroid.")

    @model_validator(mode="after")
    def _buffer_can_fill(self) -> ExitMethod:
        # The buffer keeps at most buffer_capacity items, so a larger min_buffer would silently never sample it.
        if self.min_buffer > self.buffer_capacity:
            raise ValueError(
                f"method.min_buffer ({self.min_buffer}) must be at most method.buffer_capacity "
                f"({self.buffer_capacity}): a fuller buffer than it can hold is never reached"
            )
        return self

    def continue_reason(self) -> str | None:
        return "ExIt continues the last adapter"  # RL carries on from the last policy

    def problems(self, config: PipelineConfig) -> list[str]:
        """ExIt generates through vLLM during training and syncs the adapter into it by name."""
        rollout, training = config.rollout, config.training
        problems = []
        if rollout.backend != "vllm":
            problems.append("rollout.backend must be 'vllm' (the adapter is synced into the server while training)")
        if training.finetune != Finetune.LORA:
            problems.append("training.finetune must be 'lora' (the adapter is what gets synced)")
        if rollout.sampling.temperature == 0:
            problems.append("rollout.sampling.temperature must be > 0 (a GRPO group needs different completions)")
        if self.sync_every > 1:
            problems.append(
                "method.sync_every must be 1: completions from an adapter older than the policy are "
                "off-policy, and GRPO here gets no sampling log-probabilities to correct for that"
            )
        served, trained = set(rollout.server.gpu_ids or ()), set(training.gpu_ids or ())
        if served & trained:
            problems.append(
                f"rollout.server.gpu_ids and training.gpu_ids share GPU(s) {sorted(served & trained)}: "
                "ExIt's servers run while it trains"
            )
        launch = LaunchSettings.of(training)
        if launch.shards_parameters:
            problems.append(
                "training.accelerate_config shards the weights (FSDP, ZeRO-3), but ExIt syncs the adapter "
                "from the main process's copy: use DDP or ZeRO-2"
            )
        # One optimizer step's completions, over every process: GRPO cuts them into whole groups.
        batch = training.per_device_batch_size * training.gradient_accumulation_steps * launch.num_processes
        if batch % self.group_size:
            problems.append(
                f"training.per_device_batch_size x gradient_accumulation_steps x processes ({batch}) "
                f"must be a multiple of method.group_size ({self.group_size})"
            )
        return ["method 'exit': " + "; ".join(problems)] if problems else []

    # GRPO generates while it trains, so an iteration has no separate rollout or curate stage; the train stage
    # serves the policy (on devices of its own: a config check) and shares its servers with the eval.
    @stage(serves_model=True)
    def train(self, context: StageContext) -> Path:
        """Train the iteration's adapter by GRPO beside the rollout service."""
        from pipeline.methods.exit.stages import run_train_stage

        return run_train_stage(context)

    def train_iteration(self, run: RunDir, iteration: int) -> None:
        from pipeline.methods.exit.training import train_iteration

        train_iteration(run, iteration)

    def card_summary(self) -> tuple[str, str]:
        from pipeline.run.layout import TRAIN_STAGE, TRAIN_SUMMARY_NAME

        return TRAIN_STAGE, TRAIN_SUMMARY_NAME

    def card_row(self, summary: dict[str, Any]) -> list[str]:
        depth = summary["mean_depth"]
        return [
            str(summary["groups"]),
            "-" if depth is None else f"{depth:.2f}",
            counts_cell(summary["depth_histogram"]),
            str(summary["buffer"]["size"]),
        ]
