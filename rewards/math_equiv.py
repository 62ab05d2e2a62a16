"""The ``math`` grader: symbolic equivalence with math-verify.

Where it runs, and why: math-verify's own time limits use ``signal.alarm``,
which works only in a process's main thread, and some comparisons never
finish in practice (``10^{10^{10}}`` is computed). So math-verify runs only in
:mod:`rewards.pool` worker processes, with its own limits switched off
(``parsing_timeout=None``, ``timeout_seconds=None``) and the pool's hard,
kill-the-worker timeout as the one limit. :meth:`MathGrader.grade` is
therefore safe from any thread: inside a worker it grades directly, anywhere
else it submits to the shared :func:`rewards.pool.default_pool` and waits.
Batches should go through a :class:`rewards.pool.GradingPool` (or
``grade_batch``) to grade in parallel.

The answer is found by the rules of :mod:`rewards.extract` (last box, code
fences last); only the box (or, without one, the last
:data:`MAX_ANSWER_CHARS` characters) reaches math-verify, so its parser never
sees a 5 MB response or 10k nested braces.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, ClassVar

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from rewards.base import GradeResult, register_grader
from rewards.extract import brace_depth, last_boxed, no_answer, not_a_string, search_texts, shorten, tail, verdict
from rewards.pool import default_pool, in_grading_worker

MAX_ANSWER_CHARS = 2_000
"""Longer boxed answers are refused; without a box, this much of the end of
the response is parsed."""

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
    require_boxed: bool = False

    def grade(self, response: str, reference: Any) -> GradeResult:
        if in_grading_worker():
            return self.grade_here(response, reference)
        return default_pool().submit(self, response, reference).result()

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
        for text in search_texts(response):
            boxed = last_boxed(text)
            if boxed is None and self.require_boxed:
                continue
            if boxed is not None and len(boxed) > MAX_ANSWER_CHARS:
                return GradeResult.failure("answer too long")
            candidate = tail(text, MAX_ANSWER_CHARS) if boxed is None else f"\\boxed{{{boxed}}}"
            if brace_depth(candidate) > MAX_BRACE_DEPTH:
                return GradeResult.failure("answer nested too deeply")
            target = parse(candidate, extraction_config=_TARGET_CONFIG, parsing_timeout=None)
            if target:
                shown = boxed if boxed is not None else _as_written(target)
                return verdict(verify(gold, target, timeout_seconds=None), shorten(shown))
        return no_answer()


@lru_cache(maxsize=4096)
def _parse_gold(reference: str) -> list[Any]:
    """The reference parsed once per worker (every sample of a task shares it).

    A bare reference ("\\frac{1}{2}", "[1, 2)") is read as inline math.
    """
    return parse(reference if _DELIMITED.search(reference) else f"${reference}$", parsing_timeout=None)


def _as_written(target: list[Any]) -> str:
    """The answer as the response wrote it: math-verify appends that string."""
    return target[-1] if isinstance(target[-1], str) else str(target[0])


@cache
def _quiet_math_verify() -> None:
    """math-verify warns on every worker start that its timeouts are off;
    here the pool's timeout replaces them, so the warning is noise."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)
