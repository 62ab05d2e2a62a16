"""Waiting for a batch's grades, for tests that grade through a pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewards import Grader, GradeResult, GradingPool


def graded(pool: GradingPool, grader: Grader, pairs: Sequence[tuple[Any, Any]]) -> list[GradeResult]:
    """``pool.submit``'s grades in input order, once all are in."""
    return pool.submit(grader, pairs).result()
