"""The records a rollout writes: one trajectory per line of ``rollouts.jsonl``, its turns, their candidates.

Typed here once, so that the runner that writes them, the stages and
commands that read them and the tests that build them agree on every key
(docs/run-directory.md, "Records"). ``to_dict`` keeps the field order, which
is the key order of the JSON written; ``from_dict`` reads a row back, as
tolerant as the readers always were of keys an older run did not write
(a grade's ``error`` and ``answer_key``, a turn's ``feedback`` and
``rationale``): they take their defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.generation import Message
from pipeline.system.atomic import read_jsonl
from rewards import GradeResult


def _grade_from_dict(data: dict[str, Any]) -> GradeResult:
    """A recorded grade (``GradeResult.to_dict()``) read back; a key an older run did not write takes its default."""
    return GradeResult(
        score=data["score"],
        correct=data["correct"],
        parsed=data["parsed"],
        feedback=data.get("feedback", ""),
        error=data.get("error"),
        answer_key=data.get("answer_key"),
    )


@dataclass
class Candidate:
    """One of a turn's n completions, with its grade."""

    response: str
    grade: GradeResult
    completion_tokens: int
    finish_reason: str | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(data["response"], _grade_from_dict(data["grade"]), data["completion_tokens"], data["finish_reason"])


@dataclass
class TurnRecord:
    """One turn: the prompt it saw, every candidate, the best one, and the feedback shown after it."""

    turn: int
    source: str
    messages: list[Message]
    candidates: list[Candidate]
    best: int
    response: str
    grade: GradeResult
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    feedback: str | None = None
    rationale: Candidate | None = None  # RISE's method.rationalize: a right answer drawn with the reference as a hint

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TurnRecord:
        rationale = data.get("rationale")
        return cls(
            turn=data["turn"],
            source=data["source"],
            messages=data["messages"],
            candidates=[Candidate.from_dict(c) for c in data.get("candidates", ())],
            best=data["best"],
            response=data["response"],
            grade=_grade_from_dict(data["grade"]),
            prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            finish_reason=data["finish_reason"],
            feedback=data.get("feedback"),
            rationale=None if rationale is None else Candidate.from_dict(rationale),
        )


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrajectoryRecord:
        """A row of ``rollouts.jsonl`` as its record, parsed once: the readers then use its attributes."""
        return cls(
            key=data["key"],
            task_id=data["task_id"],
            sample=data["sample"],
            prompt=data["prompt"],
            reference=data["reference"],
            adapter=data.get("adapter"),
            turns=[TurnRecord.from_dict(t) for t in data["turns"]],
            solved_at_turn=data.get("solved_at_turn"),
            error=data.get("error"),
        )


def read_records(path: Path) -> list[TrajectoryRecord]:
    """A finished ``rollouts.jsonl``'s records, each row parsed once."""
    return [TrajectoryRecord.from_dict(row) for row in read_jsonl(path, whole=True)]
