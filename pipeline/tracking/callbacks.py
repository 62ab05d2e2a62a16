"""The train worker's side of tracking: TRL's own integration callbacks, on the run's global step.

The trainer is handed ``run.report_to`` and builds transformers'
integration callbacks from it (TensorBoard, W&B), which log every logging
step's loss, learning rate and grad norm. A trainer counts its
steps from 0 in every iteration, so each of those callbacks is swapped for
the same class with its ``on_log`` shifted by the steps of the earlier
iterations (:func:`pipeline.tracking.trackers.steps_through`): the run has one step
axis, continued across iterations and resumes. Each log also gets the
tokens/s since the previous one (:class:`TokensPerSecond`).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks

from pipeline.run.layout import RunDir
from pipeline.tracking.trackers import steps_through


class RunStep(TrainerCallback):
    """Mixin for an integration callback: its logs land at ``step_offset`` + the trainer's step."""

    step_offset = 0

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        shifted = copy.copy(state)
        shifted.global_step = state.global_step + self.step_offset
        return super().on_log(args, shifted, control, **kwargs)


class TokensPerSecond(TrainerCallback):
    """Adds ``tokens_per_s`` to each log: input tokens trained since the previous log over the time since.

    Trainer counts the tokens (``include_num_input_tokens_seen``) but logs
    only their total; placed before the integration callbacks, this puts the
    rate into the same log entry they write.
    """

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        self._last = (time.monotonic(), state.num_input_tokens_seen)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        if logs is not None and self._last is not None and tokens > self._last[1] and now > self._last[0]:
            logs["tokens_per_s"] = (tokens - self._last[1]) / (now - self._last[0])
        self._last = (now, tokens)


def on_run_step(callback_class: type[TrainerCallback], offset: int) -> TrainerCallback:
    """An instance of ``callback_class`` whose logged step is shifted by ``offset``."""
    shifted = type(f"RunStep{callback_class.__name__}", (RunStep, callback_class), {"step_offset": offset})
    return shifted()


def attach_trackers(trainer: Trainer, run: RunDir, iteration: int) -> None:
    """Point the trainer's integration callbacks at the run's tracker run and global step.

    The trackers' environment (log directory, W&B run id and mode) comes
    from the train stage (:func:`pipeline.tracking.trackers.tracking_env`), so every
    process writes into the same run.
    """
    report_to = run.config.run.report_to
    if not report_to:
        return
    offset = steps_through(run, iteration - 1)
    integrations = get_reporting_integration_callbacks(report_to)
    for callback_class in integrations:
        trainer.remove_callback(callback_class)
    trainer.add_callback(TokensPerSecond())
    for callback_class in integrations:
        trainer.add_callback(on_run_step(callback_class, offset))
