"""Throughput of the answer graders: serial in one process vs a GradingPool.

Builds 2,000 model-like responses (a few lines of reasoning, then a boxed or
plain final answer; about a quarter wrong; LaTeX fractions among the math
answers), grades them with ``numeric`` and ``math`` serially and through a
pool of one worker per CPU, and prints responses/second and the ratio.

Serial means the grader's work done in this process one response at a time
(``MathGrader.grade_here`` for math, as a worker does it); the line "math
grade() one by one" adds the round trip to a worker that ``MathGrader.grade``
pays when called outside a pool. Pool start-up is timed separately.

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rewards import GradeResult, GradingPool, get_grader  # noqa: E402
from rewards.math_equiv import MathGrader  # noqa: E402

N_RESPONSES = 2_000
WARM_UP = 50

Pair = tuple[str, str]


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
            reasoning = f"We need {a}/{c} of {b}.\nThat is \\frac{{{a} \\cdot {b}}}{{{c}}} = \\frac{{{a * b}}}{{{c}}}.\n"
            numeric_ref, math_ref = f"{float(value):.6f}", shown
        else:
            value = Fraction(a * c + b)
            shown = f"{int(value):,}" if rng.random() < 0.2 else str(value)
            reasoning = f"First, {a} groups of {c} give {a} \\times {c} = {a * c}.\nThen we add the {b} extra ones: {a * c} + {b} = {a * c + b}.\n"
            numeric_ref, math_ref = str(int(value)), str(int(value))
        if rng.random() < 0.25:  # a wrong answer
            value += rng.choice([-1, 1, 2])
            shown = latex(value)
        ending = f"Therefore the answer is \\boxed{{{shown}}}." if rng.random() < 0.8 else f"So the final answer is {shown}."
        response = "Let's solve this step by step.\n" + reasoning + "Let me double-check the arithmetic once more.\n" + ending
        numeric.append((response, numeric_ref))
        math.append((response, math_ref))
    return numeric, math


def rate(grade_all: Callable[[], list[GradeResult]], n: int) -> tuple[float, list[GradeResult]]:
    start = time.perf_counter()
    results = grade_all()
    return n / (time.perf_counter() - start), results


def compare(label: str, serial: Callable[[Pair], GradeResult], pool: GradingPool, grader: object, items: Sequence[Pair]) -> None:
    for item in items[:WARM_UP]:
        serial(item)
    pool.grade_many(grader, items[:WARM_UP])
    serial_rate, serial_results = rate(lambda: [serial(item) for item in items], len(items))
    pooled_rate, pooled_results = rate(lambda: pool.grade_many(grader, items), len(items))
    agree = sum(s == p for s, p in zip(serial_results, pooled_results))
    correct = sum(result.correct for result in pooled_results)
    print(f"{label:8} serial {serial_rate:9.0f}/s   pooled {pooled_rate:9.0f}/s   pooled/serial {pooled_rate / serial_rate:5.2f}"
          f"   ({correct}/{len(items)} correct, pooled == serial for {agree})")


def main() -> None:
    numeric_items, math_items = build_items(N_RESPONSES)
    workers = os.cpu_count() or 1
    start = time.perf_counter()
    with GradingPool(max_workers=workers) as pool:
        pool.grade_many(get_grader("numeric"), [("\\boxed{1}", "1")] * workers)
        print(f"{N_RESPONSES} responses, pool of {workers} workers (start-up {time.perf_counter() - start:.2f} s)")
        numeric_grader = get_grader("numeric")
        compare("numeric", lambda item: numeric_grader.grade(*item), pool, numeric_grader, numeric_items)
        math_grader = MathGrader()
        compare("math", lambda item: math_grader.grade_here(*item), pool, math_grader, math_items)
    one_by_one, _ = rate(lambda: [math_grader.grade(*item) for item in math_items[:500]], 500)
    print(f"math grade() one by one through the shared pool: {one_by_one:.0f}/s")


if __name__ == "__main__":
    main()
