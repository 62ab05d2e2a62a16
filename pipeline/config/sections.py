"""The base classes of config sections, kept apart so that each method's package can define its own section.

:class:`MethodSection` is the interface a run's ``method`` section offers to
the layers below ``pipeline/methods/``: the stages of its plan, the training
worker to launch, whether training continues the previous iteration's model,
and its checks of the whole config. Those layers call these, and never ask
which method a run uses (docs/ARCHITECTURE.md, "The method registry").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pipeline.config.settings import PipelineConfig


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MethodSection(StrictModel):
    """A method's ``method`` section; each method subclasses it in ``pipeline/methods/<name>/config.py``."""

    name: str
    ITERATION_STAGES: ClassVar[tuple[str, ...]]
    """The stages of each iteration 1..N, in order (iteration 0 is the base model's eval)."""
    WORKER: ClassVar[str]
    """The module whose ``train_iteration(run, iteration)`` the train stage's worker runs."""
    REPORTED: ClassVar[tuple[str, ...]] = ()
    """The settings worth a place in the report's header."""
    IGNORED: ClassVar[dict[str, str]] = {}
    """Dotted keys of the other sections this method never reads, each with what it uses instead. A config
    that sets one is refused (:meth:`ignored_keys_set`), and the run's resolved config leaves them out."""

    def continue_reason(self) -> str | None:
        """Why iteration K > 1 trains on from iteration K-1's model; None when it starts from the base."""
        return None

    def problems(self, config: PipelineConfig) -> list[str]:
        """What in the rest of the config this method cannot run with, each naming the key to change."""
        return []

    def ignored_keys_set(self, config: PipelineConfig) -> list[str]:
        """The keys of :attr:`IGNORED` the config sets itself (pydantic's ``model_fields_set``: a default is
        not set), each naming what the method uses instead; a silently ignored setting misleads."""
        return [f"{key} is not used by method {self.name!r} ({instead}): remove it"
                for key, instead in self.IGNORED.items() if _is_set(config, key.split("."))]

    def stage_inputs(self, iteration: int, stage: str) -> list[tuple[int, str]]:
        """The stages whose outputs stage ``(iteration, stage)`` reads, so whose redo makes it stale.

        Eval serves iteration K's trained model; train reads the previous
        iteration's model when it continues it. A method adds its own stages'.
        """
        if stage == "train":
            return [(iteration - 1, "train")] if iteration > 1 and self.continue_reason() else []
        if stage == "eval":
            return [(iteration, "train")] if iteration >= 1 else []
        return []


def _is_set(section: BaseModel, path: list[str]) -> bool:
    """Whether the config itself sets the dotted key ``path`` (each section on the way included)."""
    if path[0] not in section.model_fields_set:
        return False
    return len(path) == 1 or _is_set(getattr(section, path[0]), path[1:])
