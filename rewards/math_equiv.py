"""The ``math`` grader: symbolic equivalence with math-verify.

Where it runs, and why: some comparisons never finish in practice
(``10^{10^{10}}`` is computed), and math-verify's own time limits use
``signal.alarm``, which works only in a process's main thread. So
:meth:`MathGrader.grade` grades in the calling process when it is called on
the main thread (a plain script grading one response: no pool to start, no
``__main__`` guard needed), under a ``SIGALRM`` limit of
:data:`rewards.pool.DEFAULT_TIMEOUT_S`; from any other thread it submits to
the shared :func:`rewards.pool.default_pool`, whose hard kill-the-worker
timeout is the limit, and waits. Inside a pool worker it grades directly.
Batches should go through :meth:`rewards.pool.GradingPool.submit`, which
grades them in parallel, several responses per worker job
(``Placement.POOL_CHUNKED``: a grade can hang, but usually takes a millisecond).

The answer is found by the rules of :mod:`rewards.extract` (last box, code
fences last, a box over :data:`rewards.extract.MAX_ANSWER_CHARS` not read);
only the box (or, without one, that many characters of the end of the
response) reaches math-verify, so its parser never sees a 5 MB response or
10k nested braces. When the reference has several parts (a tuple or a set;
math-verify reads the pair ``(1, 2)`` as an open interval, so any set
counts), a multi-part answer boxed one part at a time (``\\boxed{1},
\\boxed{2}``) reaches it as one box (``\\boxed{1, 2}``), which is how
math-verify itself joins such boxes; for any other reference the last box
alone is the answer.

The answer key is the parsed expression in sympy's LaTeX (``\\frac12``,
``\\dfrac{1}{2}`` and ``0.5`` all give ``\\frac{1}{2}``); votes then merge
the keys of one task that math-verify calls equivalent
(:meth:`MathGrader.cluster_keys`), so each equivalence class votes as one.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, ClassVar

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rewards.base import GradeResult, Placement, never_raises, register_grader
from rewards.extract import (
    MAX_ANSWER_CHARS,
    brace_depth,
    last_boxed,
    last_boxed_parts,
    no_answer,
    not_a_string,
    search_texts,
    shorten,
    tail,
    too_long,
    verdict,
)
from rewards.pool import DEFAULT_TIMEOUT_S, default_pool, in_grading_worker

MAX_BRACE_DEPTH = 50
"""Deeper nesting is refused: math-verify's LaTeX parser recurses."""

# A box anywhere in the text outranks "the final answer is ..." phrasing.
_TARGET_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
_DELIMITED = re.compile(r"\$|\\boxed|\\\(|\\\[")


@register_grader("math")
@dataclass(frozen=True)
class MathGrader:
    """Grades the last boxed answer (else math-verify's pick from the end of
    the response) for mathematical equivalence with a LaTeX reference.

    ``require_boxed``: only a ``\\boxed{}`` answer counts.
    """

    name: ClassVar[str] = "math"
    binary: ClassVar[bool] = True
    placement: ClassVar[Placement] = Placement.POOL_CHUNKED
    require_boxed: bool = False

    @never_raises
    def grade(self, response: str, reference: Any) -> GradeResult:
        if in_grading_worker():
            return self.grade_here(response, reference)
        if _on_main_thread():
            try:
                with _time_limit(DEFAULT_TIMEOUT_S):
                    return self.grade_here(response, reference)
            except _TimeLimit:
                return GradeResult.failure("timeout")
        return default_pool().submit(self, [(response, reference)]).result()[0]

    def cluster_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """Each key -> the first key (in the given order) that math-verify finds equivalent to it.

        On the main thread each comparison is time-limited like a grade;
        elsewhere (where no limit can be set) only equal keys share a class.
        """
        classes: dict[str, str] = {}
        representatives: list[tuple[str, list[Any]]] = []
        for key in keys:
            if key in classes:
                continue
            parsed = _parse_key(key) if _on_main_thread() else []
            match = next((rep for rep, expr in representatives if parsed and expr and _equivalent(expr, parsed)), None)
            classes[key] = match or key
            if match is None:
                representatives.append((key, parsed))
        return classes

    def grade_here(self, response: str, reference: Any) -> GradeResult:
        """Grade in this process, without a time limit: for pool workers."""
        _quiet_math_verify()
        try:
            return self._grade(response, reference)
        except Exception as exc:  # math-verify and sympy can raise anything, RecursionError included
            return GradeResult.failure(f"math-verify failed: {type(exc).__name__}")

    def _grade(self, response: str, reference: Any) -> GradeResult:
        if not isinstance(response, str):
            return not_a_string(response)
        gold = _parse_gold(str(reference)) if isinstance(reference, (str, int, float)) else []
        if not gold:
            return GradeResult.failure(f"reference could not be parsed: {shorten(repr(reference), 80)}")
        several_parts = _has_parts(gold)
        for text in search_texts(response):
            boxed = _joined_parts(text) if several_parts else last_boxed(text)
            if boxed is None and self.require_boxed:
                continue
            if boxed is not None and len(boxed) > MAX_ANSWER_CHARS:
                return too_long()
            candidate = tail(text, MAX_ANSWER_CHARS) if boxed is None else f"\\boxed{{{boxed}}}"
            if brace_depth(candidate) > MAX_BRACE_DEPTH:
                return GradeResult.failure("answer nested too deeply")
            target = parse(candidate, extraction_config=_TARGET_CONFIG, parsing_timeout=None)
            if target:
                shown = boxed if boxed is not None else _as_written(target)
                return verdict(verify(gold, target, timeout_seconds=None), shorten(shown), _answer_key(target))
        return no_answer()


@lru_cache(maxsize=4096)
def _parse_gold(reference: str) -> list[Any]:
    """The reference parsed once per worker (every sample of a task shares it).

    A bare reference ("\\frac{1}{2}", "[1, 2)") is read as inline math.
    """
    return parse(reference if _DELIMITED.search(reference) else f"${reference}$", parsing_timeout=None)


def _has_parts(gold: list[Any]) -> bool:
    """Whether the parsed reference is a tuple or a set (an interval included)."""
    return isinstance(gold[0], (sympy.Tuple, sympy.Set))


def _joined_parts(text: str) -> str | None:
    """The last box, with the boxes joined to it as parts of one answer, as one box's content ("1, 2")."""
    return ", ".join(parts) if (parts := last_boxed_parts(text)) else None


def _answer_key(target: list[Any]) -> str:
    """sympy's LaTeX of the parsed answer: one spelling for equal expressions (the text math-verify kept, else)."""
    try:
        return target[0] if isinstance(target[0], str) else sympy.latex(target[0])
    except Exception:  # sympy's printer can fail on exotic objects; the written text still votes
        return _as_written(target)


def _parse_key(key: str) -> list[Any]:
    """A key parsed back for comparison (time-limited; [] when it cannot be)."""
    try:
        with _time_limit(DEFAULT_TIMEOUT_S):
            return _parse_gold(key)
    except (_TimeLimit, Exception):
        return []


def _equivalent(first: list[Any], second: list[Any]) -> bool:
    try:
        with _time_limit(DEFAULT_TIMEOUT_S):
            return verify(first, second, timeout_seconds=None)
    except (_TimeLimit, Exception):
        return False


class _TimeLimit(BaseException):
    """Raised by SIGALRM; a BaseException so that math-verify's ``except Exception`` cannot swallow it."""


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_TimeLimit` in the main thread after ``seconds`` (the previous handler is restored)."""

    def expire(signum: int, frame: object) -> None:
        raise _TimeLimit

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _as_written(target: list[Any]) -> str:
    """The answer as the response wrote it: math-verify appends that string."""
    return target[-1] if isinstance(target[-1], str) else str(target[0])


@cache
def _quiet_math_verify() -> None:
    """math-verify warns on every worker start that its timeouts are off;
    here the pool's timeout replaces them, so the warning is noise."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
