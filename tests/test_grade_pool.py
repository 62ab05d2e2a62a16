"""Batch grading where each grader belongs: inline or in worker processes; same answers as serial, hard timeouts."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import CodeGrader, GradeResult, GradingPool, NumericGrader, Placement, get_grader
from rewards.math_equiv import MathGrader
from rewards.pool import placement
from tests.helpers.grading import graded

# A genuinely slow input, no mock: math-verify evaluates 10^(10^10) when it
# compares it with 1, which takes far longer than any timeout used here.
HANGS = "\\boxed{10^{10^{10}}}"

NUMERIC_PAIRS = [
    (f"Step 1: {i} + {i} = {2 * i}.\nSo the answer is \\boxed{{{2 * i if i % 3 else 2 * i + 1}}}.", str(2 * i))
    for i in range(30)
] + [("", "1"), ("\\boxed{" * 3_000 + "7" + "}" * 3_000, "7"), ("no answer", "3"), ("\\boxed{\u22124}", "-4")]

MATH_PAIRS = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{\\frac{2}{3}}", "0.5"),
    ("\\boxed{1/\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{[1,2)}", "[1,2)"),
    ("\\boxed{(1,2]}", "[1,2)"),
    ("\\boxed{\\{3,2,1\\}}", "\\{1,2,3\\}"),
    ("The final answer is $\\frac{3}{4}$.", "0.75"),
    ("\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("", "1"),
    ("\\boxed{A}", "3"),
]


class CrashingGrader:
    """Test double: a grader whose worker process dies mid-task (as on a segfault)."""

    name = "crash"

    def grade(self, response: str, reference: object) -> GradeResult:
        os._exit(3)


class RaisingGrader:
    """Test double: a grader that breaks the no-raise contract."""

    name = "raise"

    def grade(self, response: str, reference: object) -> GradeResult:
        raise ZeroDivisionError("boom")


@pytest.fixture(scope="module")
def pool() -> Iterator[GradingPool]:
    with GradingPool(max_workers=2, timeout_s=2) as shared:
        yield shared


def test_numeric_pool_matches_serial(pool: GradingPool) -> None:
    grader = get_grader("numeric")
    serial = [grader.grade(response, reference) for response, reference in NUMERIC_PAIRS]
    assert graded(pool, grader, NUMERIC_PAIRS) == serial
    assert sum(result.correct for result in serial) == 22  # 20 right of 30, the deep box, the minus


def test_math_pool_matches_serial(pool: GradingPool) -> None:
    grader = MathGrader()
    serial = [grader.grade_here(response, reference) for response, reference in MATH_PAIRS]
    assert graded(pool, grader, MATH_PAIRS) == serial
    assert [result.correct for result in serial] == [True, False, True, True, False, True, True, True, False, False]


def test_hung_item_times_out_without_blocking_the_others(pool: GradingPool) -> None:
    grader = get_grader("math")
    hung = pool.submit(grader, [(HANGS, "1")])
    quick = pool.submit(grader, [(f"\\boxed{{{i}}}", str(i)) for i in range(8)])
    quick_done_when_hung_resolved: list[bool] = []
    hung.add_done_callback(lambda _: quick_done_when_hung_resolved.append(quick.done()))
    assert hung.result() == [GradeResult.failure("timeout")]
    assert all(result.correct for result in quick.result())
    assert quick_done_when_hung_resolved == [True]  # the other worker kept grading meanwhile


def test_worker_is_replaced_after_a_timeout() -> None:
    with GradingPool(max_workers=1, timeout_s=1) as single:
        # One job of four (math sends several responses per job): each gets the verdict it would get alone.
        results = graded(
            single, get_grader("math"), [(HANGS, "1"), ("\\boxed{2}", "2"), (HANGS, "1"), ("\\boxed{3}", "4")]
        )
    assert [result.error for result in results] == ["timeout", None, "timeout", None]
    assert [result.correct for result in results] == [False, True, False, False]


def test_crashed_worker_fails_its_item_only(pool: GradingPool) -> None:
    crashed = pool.submit(CrashingGrader(), [("x", "1")])
    assert crashed.result() == [GradeResult.failure("grading worker died")]
    # math, not numeric (which grades inline): the workers must still grade.
    assert graded(pool, get_grader("math"), [("\\boxed{5}", "5")])[0].correct


def test_raising_grader_becomes_a_failure(pool: GradingPool) -> None:
    [result] = graded(pool, RaisingGrader(), [("x", "1")])
    assert result.error == "grader raised ZeroDivisionError: boom" and result.score == 0.0


def test_unpicklable_input_becomes_a_failure(pool: GradingPool) -> None:
    # math, not numeric (which grades inline, where a lock is just a response that is not a string).
    [result] = graded(pool, get_grader("math"), [(threading.Lock(), "1")])
    assert result.error is not None and result.error.startswith("cannot send to a grading worker")


def test_a_batch_can_be_awaited(pool: GradingPool) -> None:
    async def grade_two() -> list[GradeResult]:
        grader = get_grader("math")  # resolved by the pool's threads, not on return as numeric's are
        return await asyncio.wrap_future(pool.submit(grader, [(f"\\boxed{{{i}}}", "1") for i in (1, 2)]))

    assert [result.correct for result in asyncio.run(grade_two())] == [True, False]


def test_empty_and_cancelled_batches(caplog: pytest.LogCaptureFixture) -> None:
    with GradingPool(max_workers=1, timeout_s=1) as single:
        assert single.submit(get_grader("math"), []).result() == []
        cancelled = single.submit(get_grader("math"), [(HANGS, "1")])
        assert cancelled.cancel()  # the caller gave up while its response was being graded
        assert graded(single, get_grader("math"), [("\\boxed{2}", "2")])[0].correct
    # close() waited for the hung response's timeout, so the batch's last part resolved meanwhile
    assert cancelled.cancelled()
    assert not [record for record in caplog.records if "exception calling callback" in record.getMessage()]


def test_close_without_wait_fails_what_is_left() -> None:
    single = GradingPool(max_workers=1, timeout_s=60)
    running = single.submit(get_grader("math"), [(HANGS, "1")])
    queued = single.submit(get_grader("math"), [("\\boxed{1}", "1")])  # math: numeric would grade inline at once
    single.close(wait=False)
    assert running.result() == queued.result() == [GradeResult.failure("pool closed")]
    with pytest.raises(RuntimeError):
        single.submit(get_grader("numeric"), [("\\boxed{1}", "1")])
    single.close()  # a second close is harmless


def test_leaving_the_block_on_ctrl_c_abandons_running_grades() -> None:
    """A stage interrupted while grading: the pool stops without waiting out the hung response's timeout."""
    with pytest.raises(KeyboardInterrupt), GradingPool(max_workers=1, timeout_s=60) as single:
        running = single.submit(get_grader("math"), [(HANGS, "1")])
        raise KeyboardInterrupt
    assert running.result() == [GradeResult.failure("pool closed")]


def test_each_grader_declares_where_it_grades() -> None:
    assert [placement(g) for g in (NumericGrader(), MathGrader(), CodeGrader())] == [
        Placement.INLINE,
        Placement.POOL_CHUNKED,
        Placement.POOL,
    ]
    assert placement(RaisingGrader()) is Placement.POOL  # one that declares nothing runs alone in a worker


def test_inline_grades_are_resolved_on_return(pool: GradingPool) -> None:
    assert pool.submit(get_grader("numeric"), NUMERIC_PAIRS).done()
    assert pool.submit(get_grader("numeric"), []).result() == []


def test_math_off_the_main_thread_goes_through_the_shared_pool() -> None:
    """MathGrader.grade cannot set its SIGALRM limit off the main thread: it uses default_pool's workers."""
    grader = MathGrader()
    with ThreadPoolExecutor(max_workers=2) as threads:
        pooled = list(threads.map(lambda pair: grader.grade(*pair), MATH_PAIRS))
    assert pooled == [grader.grade_here(response, reference) for response, reference in MATH_PAIRS]
