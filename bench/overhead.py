"""Where a finished run's time went: per stage and in all, the named phases against the wall time.

Reads the run's ``manifest.json`` (each stage's start and end) and the
``timings.jsonl`` each stage wrote (:mod:`pipeline.run.timings`): server
start, generation (with the grading done as answers arrive), training,
merging, model conversion, and the rest, which is the orchestration's own
cost (loading tasks, curating, writing files, tracking) plus anything not
yet timed. The run's wall time runs from its first stage's start to its
last stage's end; the time between stages (reports, trackers) is its own row.

    .venv/bin/python bench/overhead.py runs/quickstart
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.run.files import MANIFEST_NAME
from pipeline.run.timings import PHASES, StageTimes, stage_times


def between_stages(stages: list[StageTimes]) -> tuple[float, float]:
    """The run's wall time (first start to last finish) and the part of it no stage covered."""
    wall = max(s.end for s in stages) - min(s.start for s in stages)
    return wall, max(0.0, wall - sum(s.wall for s in stages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    run_root = parser.parse_args().run_dir
    stages = stage_times(run_root)
    if not stages:
        sys.exit(f"{run_root}: no finished stage in {run_root / MANIFEST_NAME}")
    table = Table(title=f"{run_root}: seconds per stage")
    for column in ("stage", "wall", *PHASES, "rest", "rest %", "server starts"):
        table.add_column(column, justify="left" if column == "stage" else "right")

    def row(name: str, wall: float, phases: dict[str, float], rest: float, starts: int | str) -> list[str]:
        cells = [f"{phases.get(p, 0.0):.0f}" for p in PHASES]
        return [name, f"{wall:.0f}", *cells, f"{rest:.0f}", f"{100 * rest / wall:.1f}" if wall else "-", str(starts)]

    for s in stages:
        table.add_row(*row(s.stage, s.wall, s.phases, s.rest, s.server_starts))
    wall, gaps = between_stages(stages)
    table.add_row(*row("between stages", gaps, {}, gaps, "-"))
    totals = {p: sum(s.phases.get(p, 0.0) for s in stages) for p in PHASES}
    rest = sum(s.rest for s in stages) + gaps
    table.add_row(*row("run", wall, totals, rest, sum(s.server_starts for s in stages)), style="bold")
    Console().print(table)
    print(f"rest: {rest:.0f} s of {wall:.0f} s = {100 * rest / wall:.1f} % of the run's wall time")


if __name__ == "__main__":
    main()
