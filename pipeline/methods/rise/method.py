"""RISE, the method: its ``method`` section (collection, curation and weighting of the revision turns, its SFT's
settings), its plan, its checks of the config and its model card.

Its plan is rollout -> curate -> train -> eval per iteration
(:mod:`pipeline.methods.rise.stages`); its training is
:mod:`pipeline.methods.rise.training`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.choices import FeedbackMode
from pipeline.config.sections import TeacherSection, attempts_shown, stage
from pipeline.methods.base import Method, counts_cell
from pipeline.methods.rise.choices import LossNormalization, Selection

if TYPE_CHECKING:
    from pipeline.config.settings import PipelineConfig
    from pipeline.engine.stage_context import StageContext
    from pipeline.run.layout import RunDir


class RiseMethod(Method):
    """RISE: reward-weighted SFT on the turns of multi-turn revision rollouts."""

    TITLE: ClassVar[str] = "RISE (reward-weighted SFT on multi-turn revisions)"
    CARD_COLUMNS: ClassVar[tuple[str, ...]] = ("examples", "by turn", "by source")
    REPORTED: ClassVar[tuple[str, ...]] = ("mode", "selection", "tau", "train_from", "accumulate", "boost")

    name: Literal["rise"] = Field(
        "rise", description="RISE: reward-weighted SFT on the turns of multi-turn revision rollouts (docs/rise.md)."
    )
    mode: Literal["self_distill", "distill"] = Field(
        "self_distill",
        description="`self_distill`: the model's own best "
        "answers are the targets; `distill`: a served teacher "
        "(`method.teacher`) answers turns > 1.",
    )
    turns: int = Field(3, ge=1, description="Turns per collection trajectory.")
    samples_per_turn: int | list[int] = Field(
        default_factory=lambda: [1, 4],
        description="Best-of-N at each collection turn: one count for every turn, or one per turn with the last "
        "repeated. RISE's reference code (--num_of_samples 1 16): one on-policy answer at turn 1, best-of-N after.",
    )
    feedback: FeedbackMode = Field(
        FeedbackMode.BINARY,
        description='The user message after a collection turn: `binary` says "incorrect", `grader` gives '
        "the grader's own text, `none` asks for a review, `improve` for an improvement.",
    )
    stop_at_success: bool = Field(
        True,
        description="Stop a collection trajectory at its first correct turn; false "
        'goes on, told "incorrect" as in evaluation (the states keep targets need).',
    )
    teacher: TeacherSection | None = Field(
        None, description="A served model that answers turns > 1 (`method.mode: distill`); null: none."
    )
    selection: Selection = Field(
        Selection.ALL,
        description="Which turns become examples: `all`; `better`, a reward above the previous turn's (the "
        "first turn's above 0); `best`, no earlier turn's reward higher; `success`, the correct turns.",
    )
    tau: float = Field(0.4, gt=0, description="Temperature of the weights exp(r / tau).")
    epochs: float = Field(2, gt=0, description="Epochs over each iteration's training set.")
    max_seq_length: int = Field(1024, gt=0, description="The longest training example in tokens.")
    loss_normalization: LossNormalization = Field(
        LossNormalization.WEIGHTS,
        description="Weighted SFT loss: sum w_i L_i over sum w_i (`weights`, so the learning rate needs no retuning "
        "whatever tau is) or over the example count (`mean`, RISE's reference code).",
    )
    train_sampling_strategy: Literal["random", "group_by_length"] = Field(
        "group_by_length",
        description="Order of the SFT examples: `group_by_length` batches examples of similar "
        "length (transformers' LengthGroupedSampler, in random order), so that little of a batch is padding.",
    )
    accumulate: bool = Field(True, description="Train on the data of all iterations so far.")
    train_from: Literal["base", "previous"] = Field(
        "base", description="Retrain from the base or continue the previous adapter."
    )
    boost: bool = Field(False, description="Warm-up SFT on successful first-turn samples.")
    unparsed_reward: float = Field(-1.0, description="Reward of a turn that gave no answer (RISE: -1, weight 0.08).")
    pairs_per_state: int = Field(
        0, ge=0, description="Wrong -> right pairs built from each state's parallel samples (0: none)."
    )
    keep_ratio: float | None = Field(
        None,
        ge=0,
        description="Cap keep examples (right after right, told 'incorrect') at this many per fix example; "
        "needs method.stop_at_success false (null: no cap).",
    )
    informative_only: bool = Field(False, description="Keep only targets whose state's samples are mixed.")
    refuted_weight: float | None = Field(
        None,
        gt=0,
        description="Weight of an unlikelihood example: a sample that gives again an answer its trajectory was told "
        "is wrong, whose answer's probability the loss pushes down (docs/rise.md). null: off.",
    )
    rationalize: int = Field(
        0,
        ge=0,
        description="Samples drawn with the reference answer as a hint (rollout.templates.hint) for a state "
        "where no sample succeeds; a right one is a target for the state without the hint (STaR). 0: off.",
    )

    @field_validator("samples_per_turn")
    @classmethod
    def _positive_counts(cls, value: int | list[int]) -> int | list[int]:
        counts = value if isinstance(value, list) else [value]
        if not counts:
            raise ValueError("needs at least one count")
        if any(count < 1 for count in counts):
            raise ValueError(f"every count must be >= 1; got {value}")
        return value

    @model_validator(mode="after")
    def _one_count_per_turn_at_most(self) -> RiseMethod:
        if isinstance(self.samples_per_turn, list) and len(self.samples_per_turn) > self.turns:
            raise ValueError(
                f"samples_per_turn has {len(self.samples_per_turn)} counts for turns={self.turns}: "
                "give at most one per turn (the last repeats)"
            )
        return self

    @property
    def sample_schedule(self) -> tuple[int, ...]:
        """The count of each turn 1..turns."""
        counts = self.samples_per_turn if isinstance(self.samples_per_turn, list) else [self.samples_per_turn]
        return tuple(counts[min(turn, len(counts) - 1)] for turn in range(self.turns))

    def rollout_attempts_shown(self, config: PipelineConfig) -> int:
        """A collection turn shows the earlier attempts of its trajectory, cut only by rollout.history_window."""
        return attempts_shown(self.turns, config.rollout.history_window)

    def continue_reason(self) -> str | None:
        return "method.train_from is 'previous'" if self.train_from == "previous" else None

    def problems(self, config: PipelineConfig) -> list[str]:
        problems = []
        if self.mode == "distill" and self.teacher is None:
            problems.append("method.mode 'distill' needs method.teacher (url and model of the teacher endpoint)")
        if self.keep_ratio is not None and self.stop_at_success:
            problems.append(
                "method.keep_ratio caps keep examples, which exist only when collection goes on after "
                "a success: set method.stop_at_success false"
            )
        # Identical greedy samples are useless, and vLLM refuses n > 1 at temperature 0.
        if max(self.sample_schedule) > 1 and config.rollout.sampling.temperature == 0:
            problems.append("method.samples_per_turn > 1 needs rollout.sampling.temperature > 0")
        if self.rationalize:
            problems += self._rationalize_problems(config)
        return problems

    def _rationalize_problems(self, config: PipelineConfig) -> list[str]:
        if config.grader.name == "code":
            return [
                "method.rationalize hints the reference answer, and a code task's reference is its tests: "
                "set method.rationalize 0"
            ]
        if "{reference}" not in config.rollout.templates.hint:
            return ["rollout.templates.hint must hold {reference} (the answer it hints) when method.rationalize is set"]
        if self.rationalize > 1 and config.rollout.sampling.temperature == 0:
            return ["method.rationalize > 1 needs rollout.sampling.temperature > 0 (greedy samples are all one)"]
        return []

    def stage_inputs(self, iteration: int, stage: str) -> list[tuple[int, str]]:
        """Rollout serves iteration K-1's model; curate reads its rollouts and, accumulating, the previous set."""
        if stage == "rollout":
            return [(iteration - 1, "train")] if iteration > 1 else []
        if stage == "curate":
            return [(iteration, "rollout"), *([(iteration - 1, "curate")] if self.accumulate and iteration > 1 else [])]
        if stage == "train":
            return [(iteration, "curate"), *super().stage_inputs(iteration, stage)]
        return super().stage_inputs(iteration, stage)

    @stage(serves_model=True)
    def rollout(self, context: StageContext) -> Path:
        """Collect the iteration's revision trajectories with iteration K-1's model."""
        from pipeline.methods.rise.stages import run_rollout_stage

        return run_rollout_stage(context)

    @stage()
    def curate(self, context: StageContext) -> Path:
        """Build the iteration's weighted SFT set from its rollouts."""
        from pipeline.methods.rise.curate_stage import run_curate_stage

        return run_curate_stage(context.run, context.iteration)

    @stage()
    def train(self, context: StageContext) -> Path:
        """Train the iteration's adapter (or model) on its curated set."""
        from pipeline.methods.rise.stages import run_train_stage

        return run_train_stage(context)

    def train_iteration(self, run: RunDir, iteration: int) -> None:
        from pipeline.methods.rise.training import train_iteration

        train_iteration(run, iteration)

    def card_summary(self) -> tuple[str, str]:
        from pipeline.methods.rise.curate_stage import SUMMARY_NAME

        return "curate", SUMMARY_NAME

    def card_row(self, summary: dict[str, Any]) -> list[str]:
        return [str(summary["examples"]), counts_cell(summary["by_turn"], "turn "), counts_cell(summary["by_source"])]
