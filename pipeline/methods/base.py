"""What a method's package hands the registry: its stage functions and what its exported model card says.

Each method's ``stages`` module holds one :class:`Method` named ``METHOD``
(docs/ARCHITECTURE.md, "The method registry").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pipeline.run.layout import RunDir


class StageFn(Protocol):
    def __call__(self, run: RunDir, iteration: int, show_progress: bool = True) -> Path: ...


@dataclass(frozen=True)
class Method:
    """A method as the run loop, the CLI and the exporter see it."""

    stages: Mapping[str, StageFn]
    """Every stage of the method's plan (its section's ITERATION_STAGES, and eval) -> the function that runs it."""
    serving_stages: frozenset[str]
    """The stages that serve a model (open a learner); the run loop keeps the servers up between consecutive
    ones and stops them before any other stage (:mod:`pipeline.engine.server_keeper`)."""
    title: str
    """The method in a model card's first line."""
    data_summary: tuple[str, str]
    """(stage, file) of the JSON summary of each iteration's training data, for the model card."""
    data_columns: tuple[str, ...]
    """The model card's data table columns after "iteration"."""
    data_row: Callable[[dict[str, Any]], list[str]]
    """One iteration's summary as the cells of those columns."""


def counts_cell(counts: dict[str, int], prefix: str = "") -> str:
    """``{"1": 3, "2": 1}`` -> ``1: 3, 2: 1`` (``-`` when empty): a histogram in one table cell."""
    return ", ".join(f"{prefix}{key}: {value}" for key, value in counts.items()) or "-"
