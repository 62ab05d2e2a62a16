"""The records a rollout writes: one trajectory per line of ``rollouts.jsonl``, its turns, their candidates.

Typed here once, so that the runner that writes them and the tests that
build them agree on every key (docs/run-directory.md, "Records"). ``to_dict``
keeps the field order, which is the key order of the JSON written. Readers
(curation, evaluation, export) take the dicts as read from the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.engine.generation import Message


@dataclass
class Candidate:
    """One of a turn's n completions, with its grade (``GradeResult.to_dict()``)."""

    response: str
    grade: dict[str, Any]
    completion_tokens: int
    finish_reason: str | None


@dataclass
class TurnRecord:
    """One turn: the prompt it saw, every candidate, the best one, and the feedback shown after it."""

    turn: int
    source: str
    messages: list[Message]
    candidates: list[Candidate]
    best: int
    response: str
    grade: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    feedback: str | None = None
    rationale: Candidate | None = None  # RISE's method.rationalize: a right answer drawn with the reference as a hint


@dataclass
class TrajectoryRecord:
    """One task's multi-turn trajectory (``key`` is ``task_id#sample``); ``error`` says why it stopped early."""

    key: str
    task_id: str
    sample: int
    prompt: str
    reference: Any
    adapter: str | None
    turns: list[TurnRecord] = field(default_factory=list)
    solved_at_turn: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written; a turn without a rationale has no ``rationale`` key (only ``method.rationalize``
        writes one)."""
        data = asdict(self)
        for turn in data["turns"]:
            if turn["rationale"] is None:
                del turn["rationale"]
        return data
