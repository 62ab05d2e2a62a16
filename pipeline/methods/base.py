"""The base of every method's class: its ``method`` section, the functions of its stages, its training entry point,
what its exported model card says, and its checks of the whole config.

A method is one class in its package (``pipeline/methods/<name>/method.py``),
registered by one line in :mod:`pipeline.config.methods`; the config's
discriminated union makes a run's ``method`` section an instance of it, so
the run loop, the CLI and the exporter call ``config.method`` and never ask
which method a run uses (docs/ARCHITECTURE.md, "The method registry").

The config imports every method's class to parse a run's config, so a
method's module imports only the config's modules at its top; its stages
and its training import the rest (serving, training) when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.config.sections import MethodSection, stage

if TYPE_CHECKING:
    from pipeline.config.settings import PipelineConfig
    from pipeline.engine.stage_context import StageContext
    from pipeline.run.layout import RunDir


class Method(MethodSection):
    """A method: a subclass names its section's fields, marks its stages with ``@stage`` and fills the rest."""

    TITLE: ClassVar[str]
    """The method in a model card's first line."""
    CARD_COLUMNS: ClassVar[tuple[str, ...]]
    """The model card's data table columns after "iteration"."""

    def card_summary(self) -> tuple[str, str]:
        """(stage, file) of the JSON summary of each iteration's training data, for the model card."""
        raise NotImplementedError

    def card_row(self, summary: dict[str, Any]) -> list[str]:
        """One iteration's training data summary as the cells of :attr:`CARD_COLUMNS`."""
        raise NotImplementedError

    def train_iteration(self, run: RunDir, iteration: int) -> None:
        """Train iteration ``iteration`` in this process: the train stage's worker (:mod:`pipeline.training.worker`)
        runs it under ``accelerate launch``."""
        raise NotImplementedError

    def rollout_attempts_shown(self, config: PipelineConfig) -> int:
        """The earlier attempts a rollout request's prompt may carry uncut beside the task, each up to
        ``rollout.sampling.max_tokens`` tokens: with the completion's own budget they must fit
        ``model.max_model_len`` (the config's check of token budgets). 0 where the method's rollouts
        generate single turns, or cut their prompts to fit the model themselves."""
        return 0

    def problems(self, config: PipelineConfig) -> list[str]:
        """What in the rest of the config this method cannot run with, each naming the key to change."""
        return []

    def run_stage(self, name: str, context: StageContext) -> Path:
        """Run stage ``name`` of the plan; returns its main output's path."""
        if name not in self.ITERATION_STAGES:
            raise ValueError(
                f"method {self.name!r} has no stage {name!r}; its stages: {', '.join(self.ITERATION_STAGES)}"
            )
        stage_function = getattr(self, name)
        path: Path = stage_function(context)
        return path

    @stage(serves_model=True)
    def eval(self, context: StageContext) -> Path:
        """Every method's last stage: the shared eval of iteration K's model (:mod:`pipeline.eval.stage`)."""
        from pipeline.eval.stage import run_eval_stage

        return run_eval_stage(context)


def counts_cell(counts: dict[str, int], prefix: str = "") -> str:
    """``{"1": 3, "2": 1}`` -> ``1: 3, 2: 1`` (``-`` when empty): a histogram in one table cell."""
    return ", ".join(f"{prefix}{key}: {value}" for key, value in counts.items()) or "-"
