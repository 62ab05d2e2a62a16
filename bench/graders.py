"""Throughput of the answer graders: serial in one process vs ``GradingPool.submit``.

Builds 2,000 model-like responses (a few lines of reasoning, then a boxed or
plain final answer; about a quarter wrong; LaTeX fractions among the math
answers) and grades them with ``numeric`` and ``math``, serially and as one
batch through ``GradingPool.submit``, which grades each where its grader
declares (numeric inline in this process, math in worker processes several
responses per job). It prints responses/second and the ratio to serial, plus
numeric submitted 4 responses at a time (one request's samples: what a
rollout submits) and math sent one response per job (what the pool did
before it chunked) to show what the chunks buy.

Serial means the grader's work done in this process one response at a time
(``MathGrader.grade_here`` for math, as a worker does it). Each rate is the
best of :data:`REPEATS` runs, so that a moment of load from other processes
does not decide a ratio; the load average is printed alongside. The CPU time
per response (this process and all below it, workers included) depends much
less on that load: it shows what the round trips to the workers cost.
Pool start-up is timed separately.

    .venv/bin/python bench/graders.py
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewards import Grader, GradeResult, GradingPool, Placement, get_grader  # noqa: E402
from rewards.math_equiv import MathGrader  # noqa: E402
from rewards.pool import placement  # noqa: E402

N_RESPONSES = 2_000
WARM_UP = 50
REPEATS = 10

Pair = tuple[str, str]


class MathOnePerJob(MathGrader):
    """The math grader sent to the workers one response per job, for comparison."""

    placement: ClassVar[Placement] = Placement.POOL


def latex(value: Fraction) -> str:
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}" if value.denominator > 1 else str(value)


def build_items(n: int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """``n`` responses with a numeric reference and a LaTeX (math) reference each."""
    rng = random.Random(seed)
    numeric: list[Pair] = []
    math: list[Pair] = []
    for i in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
        if i % 4 == 3:  # a fraction task: (a / c) of b, written as a LaTeX fraction
            value = Fraction(a * b, c)
            shown = latex(value)
            reasoning = (
                f"We need {a}/{c} of {b}.\nThat is \\frac{{{a} \\cdot {b}}}{{{c}}} = \\frac{{{a * b}}}{{{c}}}.\n"
            )
            numeric_ref, math_ref = f"{float(value):.6f}", shown
        else:
            value = Fraction(a * c + b)
            shown = f"{int(value):,}" if rng.random() < 0.2 else str(value)
            reasoning = f"First, {a} groups of {c} give {a} \\times {c} = {a * c}.\nThen we add the {b} extra ones: {a * c} + {b} = {a * c + b}.\n"
            numeric_ref, math_ref = str(int(value)), str(int(value))
        if rng.random() < 0.25:  # a wrong answer
            value += rng.choice([-1, 1, 2])
            shown = latex(value)
        ending = (
            f"Therefore the answer is \\boxed{{{shown}}}." if rng.random() < 0.8 else f"So the final answer is {shown}."
        )
        response = (
            "Let's solve this step by step.\n" + reasoning + "Let me double-check the arithmetic once more.\n" + ending
        )
        numeric.append((response, numeric_ref))
        math.append((response, math_ref))
    return numeric, math


def tree_cpu_s() -> float:
    """CPU seconds of this process and every live process below it (the forkserver's workers too)."""
    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def best_rate(grade_all: Callable[[], list[GradeResult]], n: int) -> tuple[float, float, list[GradeResult]]:
    """The best responses/second of :data:`REPEATS` runs, the mean CPU ms per response, and the last run's results."""
    best, cpu_before = 0.0, tree_cpu_s()
    for _ in range(REPEATS):
        start = time.perf_counter()
        results = grade_all()
        best = max(best, n / (time.perf_counter() - start))
    return best, (tree_cpu_s() - cpu_before) * 1000 / (n * REPEATS), results


def through_pool(
    pool: GradingPool, grader: Grader, items: Sequence[Pair], per_submit: int | None = None
) -> list[GradeResult]:
    """Every item's grade, submitted in one batch, or ``per_submit`` at a time each waited for before the
    next is sent, as a rollout awaits one request's grades (for the inline grader: a pool grader's batches
    would run one after another)."""
    size = per_submit or len(items) or 1
    return [
        result
        for start in range(0, len(items), size)
        for result in pool.submit(grader, items[start : start + size]).result()
    ]


def compare(
    label: str,
    serial: Callable[[Pair], GradeResult],
    pool: GradingPool,
    grader: Grader,
    items: Sequence[Pair],
    per_submit: int | None = None,
) -> None:
    """One line: serial and ``submit`` rates side by side, their ratio, and whether the grades agree."""
    for item in items[:WARM_UP]:
        serial(item)
    through_pool(pool, grader, items[:WARM_UP], per_submit)
    serial_rate, serial_cpu, serial_results = best_rate(lambda: [serial(item) for item in items], len(items))
    pooled_rate, pooled_cpu, pooled_results = best_rate(
        lambda: through_pool(pool, grader, items, per_submit), len(items)
    )
    agree = sum(s == p for s, p in zip(serial_results, pooled_results))
    correct = sum(result.correct for result in pooled_results)
    print(
        f"{label:17} {placement(grader).value:12} serial {serial_rate:6.0f}/s  submit {pooled_rate:6.0f}/s"
        f"  submit/serial {pooled_rate / serial_rate:5.2f}   CPU/response serial {serial_cpu:.3f} ms, submit {pooled_cpu:.3f} ms"
        f"   ({correct}/{len(items)} correct, submit == serial for {agree})"
    )


def main() -> None:
    numeric_items, math_items = build_items(N_RESPONSES)
    workers = os.cpu_count() or 1
    print(f"CPUs: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    with GradingPool(max_workers=workers) as pool:
        through_pool(pool, MathGrader(), [("\\boxed{1}", "1")] * workers)
        print(
            f"{N_RESPONSES} responses, pool of {workers} workers (start-up {time.perf_counter() - start:.2f} s), best of {REPEATS}"
        )
        numeric_grader = get_grader("numeric")
        compare("numeric", lambda item: numeric_grader.grade(*item), pool, numeric_grader, numeric_items)
        compare("numeric, 4/submit", lambda item: numeric_grader.grade(*item), pool, numeric_grader, numeric_items, 4)
        math_grader = MathGrader()
        compare("math", lambda item: math_grader.grade_here(*item), pool, math_grader, math_items)
        compare("math, 1 per job", lambda item: math_grader.grade_here(*item), pool, MathOnePerJob(), math_items)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
