"""The contract every grader honours.

A grader turns one model response and one task reference into a
:class:`GradeResult`. Graders never raise on model output: whatever the model
wrote (empty, enormous, adversarial) becomes a result with ``score`` 0 and an
``error`` that says why, so that one bad sample never kills a rollout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Protocol, TypeVar, runtime_checkable


@dataclass(frozen=True)
class GradeResult:
    """The outcome of grading one response.

    ``feedback`` is the text shown to the model before its next attempt when
    the rollout uses grader feedback; ``error`` is None when grading itself
    worked (a wrong answer is not an error), else a short reason.
    ``answer_key`` is the canonical form of the parsed answer that majority
    votes compare, so that equal answers written differently vote together
    (each grader documents its key); None when there is no answer to vote for.
    """

    score: float
    correct: bool
    parsed: str | None
    feedback: str
    error: str | None = None
    answer_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def failure(cls, reason: str, feedback: str = "Your answer could not be graded. Please try again.") -> GradeResult:
        """A zero-score result for output that could not be graded."""
        return cls(score=0.0, correct=False, parsed=None, feedback=feedback, error=reason)

    @classmethod
    def raised(cls, exc: Exception) -> GradeResult:
        """The zero-score result for a grade that raised ``exc`` (a bug, or a library failing on odd input)."""
        return cls.failure(f"grader raised {type(exc).__name__}: {exc}"[:300])


GraderT = TypeVar("GraderT")
GradeMethod = Callable[[GraderT, Any, Any], GradeResult]


def never_raises(grade: GradeMethod[GraderT]) -> GradeMethod[GraderT]:
    """Decorates a grader's ``grade`` so that an exception becomes a failure result.

    Every grader promises callers of ``get_grader`` that it never raises,
    whatever the response holds; this keeps the promise even where a parser
    or a library fails in a way nobody foresaw, so that one bad sample costs
    one zero score, not the rollout.
    """

    @functools.wraps(grade)
    def guarded(self: GraderT, response: Any, reference: Any) -> GradeResult:
        try:
            return grade(self, response, reference)
        except Exception as exc:
            return GradeResult.raised(exc)

    return guarded


class Placement(Enum):
    """Where a grader's grades run, which each grader declares as ``placement``.

    Grading in the calling process costs nothing but is safe only for work
    that is bounded by construction; a worker process with a hard timeout is
    safe for anything but costs a round trip per job, which a cheap grade
    must share with others to be worth it (:class:`rewards.pool.GradingPool`).
    """

    INLINE = "inline"
    """Cannot hang (numeric: bounded parsing and arithmetic): graded in the calling process."""
    POOL_CHUNKED = "pool_chunked"
    """Can hang but is usually cheap (math-verify): pool workers, several responses per job."""
    POOL = "pool"
    """Can hang and is costly (code runs programs): pool workers, one response per job."""


@runtime_checkable
class Grader(Protocol):
    """What ``rewards.get_grader`` returns.

    Implementations must be picklable (they are shipped to worker processes
    for batch grading) and must not raise from ``grade``.
    """

    # Read-only members: a grader may hold them as class variables, fields or properties.
    @property
    def name(self) -> str: ...

    @property
    def binary(self) -> bool:
        """Scores are only 0 or 1 (ExIt then rewards an improvement step with the score itself)."""
        ...

    @property
    def placement(self) -> Placement:
        """Where grades run; a grader that declares none gets Placement.POOL, the safe side."""
        ...

    def grade(self, response: str, reference: Any) -> GradeResult: ...

    def cluster_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """Map each of one task's answer keys to the key of its equivalence class.

        Votes count answers by class, so two keys of equal answers must map
        to the same class key. Graders whose keys are canonical already map
        each key to itself (:class:`ExactKeys`).
        """
        ...


class ExactKeys:
    """For graders whose answer keys are canonical: equal answers have equal keys."""

    def cluster_keys(self, keys: Sequence[str]) -> dict[str, str]:
        return {key: key for key in keys}


GraderFactory = Callable[..., Grader]
_REGISTRY: dict[str, GraderFactory] = {}


def register_grader(name: str) -> Callable[[GraderFactory], GraderFactory]:
    """Class decorator that makes a grader available to :func:`rewards.get_grader` as ``name``."""

    def decorate(factory: GraderFactory) -> GraderFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def registered_grader(name: str) -> GraderFactory | None:
    """The factory of the built-in grader registered as ``name``, or None."""
    return _REGISTRY.get(name)


def grader_names() -> list[str]:
    """The built-in graders' names."""
    return sorted(_REGISTRY)
