"""``selfimprove compare``: several evaluations of the same tasks in one table, with paired intervals.

An ablation is one command: name the eval directories (``runs/a/iter_2/eval``)
or run directories (their last finished eval, or iteration ``-i K``) and get
every headline figure of each and its transition rates over all turns
(revision, parallel and their gap: docs/metrics.md), and each one's
difference from the first, with its paired bootstrap 95 % interval over tasks. The evaluations must
share their tasks (by task id) and their number of turns; they may differ in
everything else (model, recipe, samples per task).

Outputs, each written atomically into ``--out``: ``compare.md`` (the table),
``compare.json`` (the same numbers) and ``compare.png`` (pass@1 by turn, and
the differences from the first with their intervals).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.table import Table

from pipeline.eval.evaluation import compare_task_metrics, headline_keys, revision_gaps
from pipeline.eval.intervals import Interval, format_difference
from pipeline.eval.report import (
    RATE_NAMES,
    STAGE,
    IterationEval,
    ReportError,
    collect_evals,
    percent,
    png_bytes,
    points,
    read_eval_dir,
)
from pipeline.eval.transitions import RATES, SIDES, StepCounts, rate_change
from pipeline.run.files import CONFIG_NAME, EVAL_NAME, MANIFEST_NAME
from pipeline.run.manifest import Manifest, parse_stage_key
from pipeline.system.atomic import write_bytes_atomic, write_text_atomic

MARKDOWN_NAME = "compare.md"
JSON_NAME = "compare.json"
PLOT_NAME = "compare.png"


class CompareError(ValueError):
    """Evaluations that cannot be compared (not found, other tasks, other turns, no per-task figures)."""


@dataclass(frozen=True)
class NamedEval:
    """One evaluation to compare, where it was read from, and the short label its column gets."""

    label: str
    path: Path
    result: IterationEval


@dataclass(frozen=True)
class MetricRow:
    """One headline figure: its value in each evaluation and each one's paired difference from the first."""

    metric: str
    values: list[float | None]
    differences: list[Interval | None]  # one per evaluation after the first
    is_change: bool  # a difference of shares itself (shown in pp), not a share


@dataclass(frozen=True)
class Comparison:
    labels: list[str]
    paths: list[str]
    turns: int
    n_tasks: int
    rows: list[MetricRow]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "paths": self.paths,
            "turns": self.turns,
            "n_tasks": self.n_tasks,
            "metrics": {
                row.metric: {
                    "values": row.values,
                    "differences_from_first": [d.to_dict() if d else None for d in row.differences],
                }
                for row in self.rows
            },
        }


def resolve_eval(path: Path, iteration: int | None = None) -> NamedEval:
    """An eval directory, or a run directory's eval of ``iteration`` (default: its last finished one)."""
    evals = resolve_evals(path)
    if (path / EVAL_NAME).is_file():
        return evals[0]
    chosen = [named for named in evals if iteration is None or named.result.iteration == iteration]
    if not chosen:
        wanted = "any finished eval" if iteration is None else f"a finished eval of iteration {iteration}"
        raise CompareError(f"{path} has no {wanted}")
    return chosen[-1]


def resolve_evals(path: Path) -> list[NamedEval]:
    """Every finished eval ``path`` holds: an eval directory's one, or each of a run directory's, in order.

    A run's eval stage directory (``runs/x/iter_2/eval``) is read only when
    its run's manifest calls it done and its files match their digests.
    """
    if (path / EVAL_NAME).is_file():
        _check_stage_dir(path)
        return [NamedEval(_eval_dir_label(path), path, read_eval_dir(path, 0))]
    if not (path / CONFIG_NAME).is_file():
        raise CompareError(f"{path}: neither an eval directory (no {EVAL_NAME}) nor a run directory (no {CONFIG_NAME})")
    try:
        evals = collect_evals(path)
    except ReportError as exc:
        raise CompareError(str(exc)) from exc
    return [NamedEval(f"{path.resolve().name}/iter_{ev.iteration}", path, ev) for ev in evals]


def _check_stage_dir(path: Path) -> None:
    """Refuse a run's eval stage directory that its manifest does not vouch for; other directories pass as they are."""
    if (found := _run_stage(path)) is None:
        return
    root, iteration = found
    if not Manifest.load(root).verified_done(iteration, STAGE):
        raise CompareError(
            f"{path}: the run's manifest does not call iter_{iteration}/{STAGE} done; "
            f"finish it with `selfimprove resume {root}`"
        )


def _run_stage(path: Path) -> tuple[Path, int] | None:
    """``(run root, K)`` when ``path`` is a run's ``iter_K/eval`` (a manifest two levels up), else None."""
    resolved = path.resolve()
    try:
        iteration, stage = parse_stage_key(f"{resolved.parent.name}/{resolved.name}")
    except ValueError:
        return None
    root = resolved.parent.parent
    return (root, iteration) if stage == STAGE and (root / MANIFEST_NAME).is_file() else None


def _eval_dir_label(path: Path) -> str:
    """``quickstart/iter_2`` for a run's eval stage directory, ``quickstart/eval-heldout`` for an ``--out``
    directory inside a run (so two runs' evals of the same name stay apart), else the directory's name."""
    resolved = path.resolve()
    parts = resolved.parts
    if len(parts) >= 3 and parts[-1] == "eval" and parts[-2].startswith("iter_"):
        return f"{parts[-3]}/{parts[-2]}"
    if (resolved.parent / CONFIG_NAME).is_file():
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def compare_evals(evals: Sequence[NamedEval]) -> Comparison:
    """Every headline figure of each eval, and its paired difference from the first (seeded by the first)."""
    if len(evals) < 2:
        raise CompareError("compare needs at least two evaluations")
    first = evals[0].result
    task_rows = []
    for ev in evals:
        task_rows.append(_task_rows(ev))
        if ev.result.turns != first.turns:
            raise CompareError(
                f"{ev.label} has {ev.result.turns} turns, {evals[0].label} {first.turns}: not comparable"
            )
    keys = headline_keys(first.turns) + list(revision_gaps(first.turns))
    rows = []
    for key in keys:
        values = [_mean(figures, key) for figures in task_rows]
        try:
            differences = [compare_task_metrics(figures, task_rows[0], key, first.seed) for figures in task_rows[1:]]
        except ValueError as exc:
            raise CompareError(f"{exc}: compare evaluations of the same tasks") from exc
        rows.append(
            MetricRow(key, values, differences, is_change=key.startswith("delta") or key in revision_gaps(first.turns))
        )
    rows += [_transition_row(evals, rate, side) for rate in RATES for side in (*SIDES, None)]
    return Comparison([ev.label for ev in evals], [str(ev.path) for ev in evals], first.turns, len(task_rows[0]), rows)


def _task_rows(ev: NamedEval) -> list[dict[str, Any]]:
    """``ev``'s per-task figures; one line naming ``ev`` when it has none."""
    if ev.result.task_rows is None:
        raise CompareError(f"{ev.label} has no per-task figures (task_metrics.jsonl): re-run its eval to compare it")
    return ev.result.task_rows


def _transition_row(evals: Sequence[NamedEval], rate: str, side: str | None) -> MetricRow:
    """One transition rate over all turns (revision, parallel, or their gap for ``side`` None) in each eval,
    with each one's paired difference from the first."""
    name = (
        f"{RATE_NAMES[rate]}: " + {"sequential": "revision", "parallel": "parallel", None: "revision - parallel"}[side]
    )
    values = [_all_turns_rate(ev.result, rate, side) for ev in evals]
    first = evals[0].result
    differences = [_rate_change(ev.result, first, rate, side) for ev in evals[1:]]
    return MetricRow(name, values, differences, is_change=side is None)


def _all_turns_rate(result: IterationEval, rate: str, side: str | None) -> float | None:
    """The eval's rate over all turns (or the revision-minus-parallel gap); None when not measured."""
    if result.transitions is None:
        return None
    group = result.transitions["all_turns"]
    found = group["difference"][rate] if side is None else group[side][rate]
    return None if found is None else found["estimate"]


def _rate_change(result: IterationEval, first: IterationEval, rate: str, side: str | None) -> Interval | None:
    """``result``'s rate minus ``first``'s, paired by task id; None when either lacks its per-task step counts."""
    mine, theirs = _steps_by_task(result), _steps_by_task(first)
    if mine is None or theirs is None:
        return None
    task_ids = list(theirs)
    return rate_change([mine[t] for t in task_ids], [theirs[t] for t in task_ids], rate, first.seed, side)


def _steps_by_task(result: IterationEval) -> dict[str, dict[str, StepCounts]] | None:
    """Each task's per-step counts by task id; None when the eval has no tasks or a task lacks them."""
    rows = result.task_rows or []
    if not rows or any(row.get("steps") is None for row in rows):
        return None
    return {row["task_id"]: row["steps"] for row in rows}


def comparison_table(comparison: Comparison) -> Table:
    """The comparison for the terminal: a column per eval, differences from the first beside each value."""
    table = Table(
        title=f"Comparison on {comparison.n_tasks} tasks, {comparison.turns} turns (differences vs the first)"
    )
    table.add_column("metric")
    for label in comparison.labels:
        table.add_column(label, justify="right")
    for row in comparison.rows:
        table.add_row(row.metric, *_cells(row))
    return table


def render_markdown(comparison: Comparison) -> str:
    header = "| metric | " + " | ".join(comparison.labels) + " |"
    lines = [
        f"# Comparison: {comparison.n_tasks} tasks, {comparison.turns} turns",
        "",
        *(f"- {label}: `{path}`" for label, path in zip(comparison.labels, comparison.paths)),
        "",
        "Each cell after the first: the value, then its difference from the first evaluation with the paired "
        "bootstrap 95 % interval over tasks.",
        "",
        header,
        "| --- |" + " ---: |" * len(comparison.labels),
    ]
    lines += [f"| {row.metric} | " + " | ".join(_cells(row)) + " |" for row in comparison.rows]
    return "\n".join(lines + ["", f"![pass@1 by turn and differences from the first]({PLOT_NAME})", ""])


def write_comparison(comparison: Comparison, out_dir: Path) -> list[Path]:
    """compare.md, compare.json and compare.png in ``out_dir`` (created), each replaced atomically.

    An ``out_dir`` that cannot hold them (a file, or a folder not writable) is a CompareError naming it.
    """
    paths = [out_dir / name for name in (MARKDOWN_NAME, JSON_NAME, PLOT_NAME)]
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"--out {out_dir} is a file, not a directory; name a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(paths[0], render_markdown(comparison))
        write_text_atomic(paths[1], json.dumps(comparison.to_dict(), indent=2))
        write_bytes_atomic(paths[2], png_bytes(_plot(comparison)))
    except OSError as exc:
        raise CompareError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    return paths


def _cells(row: MetricRow) -> list[str]:
    shown = points if row.is_change else percent
    cells = [shown(row.values[0])]
    for value, difference in zip(row.values[1:], row.differences):
        cells.append(shown(value) + ("" if difference is None else f" ({format_difference(difference)})"))
    return cells


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    if any(row.get(key) is None for row in rows):
        return None
    return sum(row[key] for row in rows) / len(rows)


def _plot(comparison: Comparison) -> Figure:
    """Left: pass@1 by turn per eval. Right: each figure's difference from the first, with its interval."""
    figure = Figure(figsize=(12, max(5.0, 1 + 0.3 * len(comparison.rows))), layout="constrained")
    by_turn, gaps = figure.subplots(1, 2)
    turn_rows = comparison.rows[: comparison.turns]
    for index, label in enumerate(comparison.labels):
        by_turn.plot(
            range(1, comparison.turns + 1),
            [100 * (r.values[index] or 0) for r in turn_rows],
            "-o",
            color=f"C{index % 10}",
            label=label,
        )
    by_turn.set(title="pass@1 by turn", xlabel="turn", ylabel="pass@1 (%)", xticks=range(1, comparison.turns + 1))
    by_turn.grid(alpha=0.3)
    by_turn.legend(fontsize="small")
    names = [row.metric for row in comparison.rows]
    for offset, label in enumerate(comparison.labels[1:]):
        ys, xs = [], []
        errors: list[list[float]] = [[], []]
        for y, row in enumerate(comparison.rows):
            if (d := row.differences[offset]) is not None:
                ys.append(y + 0.15 * offset)
                xs.append(100 * d.estimate)
                errors[0].append(100 * (d.estimate - d.low))
                errors[1].append(100 * (d.high - d.estimate))
        gaps.errorbar(
            xs,
            ys,
            xerr=errors,
            fmt="o",
            capsize=3,
            color=f"C{(offset + 1) % 10}",
            label=f"{label} - {comparison.labels[0]}",
        )
    gaps.axvline(0, color="black", linewidth=0.8)
    gaps.set(title="Difference from the first, 95 % interval", xlabel="percentage points", yticks=range(len(names)))
    gaps.set_yticklabels(names)
    gaps.invert_yaxis()
    gaps.grid(alpha=0.3)
    gaps.legend(fontsize="small", loc="lower right")
    return figure
