"""Eval-stage summaries: rollout records in, the figures of docs/metrics.md out.

Everything here is a pure function of the records (the schema of
docs/run-directory.md), so the eval stage, the CLI and the tests share one
definition. The metric arithmetic itself lives in :mod:`pipeline.eval.metrics`;
this module only turns records into :class:`TurnOutcome` trajectories,
checks that they are complete and balanced, and names the results.

Evaluation never stops a trajectory early, so each record has exactly T
turns. The one exception is a trajectory that ended with an ``error`` (e.g.
a request that failed after retries): its missing turns count as incorrect
abstentions (``parsed`` None). Dropping them instead would quietly raise
every figure; :func:`count_incomplete` says how many there were so a report
can show it.

Each headline figure is the mean over tasks of a per-task value
(:func:`task_metrics`); those rows are kept beside the summary so that any
two evaluations of the same tasks can be compared with a paired bootstrap
interval (:mod:`pipeline.eval.intervals`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from statistics import fmean
from typing import Any

from rich.table import Table

from pipeline.eval.intervals import Interval, bootstrap_mean, paired_difference
from pipeline.eval.metrics import (
    TurnOutcome,
    m1_at_t,
    mean_m1_at_t,
    mean_mk_at_t1,
    mean_p1_at_t,
    mean_pass_at_k,
    mean_pk_at_t1,
    mk_at_t1,
    p1_at_t,
    pk_at_t1,
    self_correction,
)
from pipeline.eval.transitions import summarize_transitions, task_steps
from pipeline.rollouts.records import Candidate, TrajectoryRecord, TurnRecord
from rewards import GradeResult

TaskTrajectories = dict[str, list[list[TurnOutcome]]]

MISSING = TurnOutcome(parsed=None, correct=False)
"""A turn an errored trajectory never reached: an incorrect abstention."""


def headline_keys(turns: int) -> list[str]:
    """The headline figures of a T-turn eval, in the order every table shows them."""
    per_turn = [pass_at_1_key(turn) for turn in range(1, turns + 1)]
    return per_turn + [f"m1@t{turns}", f"p1@t{turns}", f"m{turns}@t1", f"p{turns}@t1", "delta_i_to_c", "delta_c_to_i"]


def pass_at_1_key(turn: int) -> str:
    return f"pass@1 turn {turn}"


def revision_gaps(turns: int) -> dict[str, tuple[str, str]]:
    """Sequential minus parallel at equal samples, without and with an oracle: name -> (minuend, subtrahend)."""
    return {
        f"m1@t{turns}-m{turns}@t1": (f"m1@t{turns}", f"m{turns}@t1"),
        f"p1@t{turns}-p{turns}@t1": (f"p1@t{turns}", f"p{turns}@t1"),
    }


def summarize_eval(
    records: Iterable[TrajectoryRecord],
    turns: int,
    samples: int,
    first_turn_samples: Mapping[str, Sequence[TurnOutcome]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The eval summary: per-turn pass@k, m1@tT, p1@tT, mT@t1, pT@t1, SCoRe's deltas and their intervals.

    ``records`` must hold exactly ``samples`` trajectories per task.
    ``first_turn_samples`` (task id -> at least ``turns`` independent
    turn-1 outcomes) feeds the parallel baselines ``mT@t1`` and ``pT@t1``;
    without it the first turns of the task's trajectories stand in when
    ``samples >= turns``, otherwise both are None (too few parallel answers).
    Means are over a task's trajectories first, then over tasks.
    ``intervals`` holds each turn's pass@1 and the two sequential-minus-
    parallel gaps with their paired bootstrap intervals (``seed`` seeds the
    resampling); ``transitions`` the rates of :mod:`pipeline.eval.transitions`
    (fixed, repeated, flipped, no answer), revision against the parallel
    samples. The result is JSON-serializable.
    """
    _check_turns(turns)
    records = list(records)
    tasks = group_trajectories(records, turns, samples)
    rows = _task_rows(tasks, _first_turn_pool(tasks, turns, first_turn_samples), turns)
    summary: dict[str, Any] = {
        "n_tasks": len(tasks),
        "turns": turns,
        "samples": samples,
        "per_turn": [_turn_summary(tasks, turn, samples) for turn in range(1, turns + 1)],
    }
    for key in headline_keys(turns)[turns:]:
        summary[key] = _mean_of(rows, key)
    first_turn, last_turn = _mean_of(rows, pass_at_1_key(1)), _mean_of(rows, pass_at_1_key(turns))
    assert first_turn is not None and last_turn is not None, "pass@1 is measured at every turn"
    summary["delta_t1_tT"] = last_turn - first_turn
    summary["intervals"] = {key: interval.to_dict() for key, interval in eval_intervals(rows, turns, seed).items()}
    summary["transitions"] = summarize_transitions([row["steps"] for row in rows], turns, seed)
    summary["incomplete"] = count_incomplete(records, turns)
    summary["bootstrap_seed"] = seed
    return summary


def task_metrics(
    records: Iterable[TrajectoryRecord],
    turns: int,
    samples: int,
    first_turn_samples: Mapping[str, Sequence[TurnOutcome]] | None = None,
) -> list[dict[str, Any]]:
    """One row per task: its value of every headline figure (the summary is their mean over tasks).

    ``steps`` holds the task's step counts (:func:`pipeline.eval.transitions.task_steps`),
    from which any two evals' transition rates compare task by task.
    The parallel baselines are None for every task when there are fewer
    than ``turns`` first-turn answers to draw on (as in :func:`summarize_eval`).
    """
    tasks = group_trajectories(records, turns, samples)
    return _task_rows(tasks, _first_turn_pool(tasks, turns, first_turn_samples), turns)


def _task_rows(tasks: TaskTrajectories, pool: list[Sequence[TurnOutcome]], turns: int) -> list[dict[str, Any]]:
    """:func:`task_metrics` for grouped trajectories and each task's first-turn answers (in task order)."""
    parallel = min(len(answers) for answers in pool) >= turns
    rows = []
    for (task_id, trajectories), answers in zip(tasks.items(), pool):
        change = self_correction(trajectories, turns)
        row: dict[str, Any] = {"task_id": task_id}
        row.update({pass_at_1_key(t): fmean(tr[t - 1].correct for tr in trajectories) for t in range(1, turns + 1)})
        row[f"m1@t{turns}"] = fmean(m1_at_t(tr, turns) for tr in trajectories)
        row[f"p1@t{turns}"] = fmean(p1_at_t(tr, turns) for tr in trajectories)
        row[f"m{turns}@t1"] = float(mk_at_t1(answers, turns)) if parallel else None
        row[f"p{turns}@t1"] = float(pk_at_t1(answers, turns)) if parallel else None
        row["delta_i_to_c"], row["delta_c_to_i"] = change.delta_i_to_c, change.delta_c_to_i
        for name, (minuend, subtrahend) in revision_gaps(turns).items():
            row[name] = row[minuend] - row[subtrahend] if parallel else None
        row["steps"] = task_steps(trajectories, answers, turns)
        rows.append(row)
    return rows


def eval_intervals(rows: Sequence[Mapping[str, Any]], turns: int, seed: int) -> dict[str, Interval]:
    """Each turn's pass@1 and the sequential-minus-parallel gaps (when measured), with bootstrap intervals."""
    keys = [pass_at_1_key(turn) for turn in range(1, turns + 1)] + list(revision_gaps(turns))
    return {key: bootstrap_mean([row[key] for row in rows], seed) for key in keys if rows[0][key] is not None}


def compare_task_metrics(
    first: Sequence[Mapping[str, Any]], second: Sequence[Mapping[str, Any]], key: str, seed: int
) -> Interval | None:
    """``key`` of ``first`` minus ``second``, paired by task id, with its bootstrap interval.

    Raises ValueError when the two were not measured on the same tasks (a
    paired comparison of different tasks means nothing); None when either
    side did not measure ``key``.
    """
    by_task = {row["task_id"]: row for row in second}
    if set(by_task) != {row["task_id"] for row in first}:
        missing = len({row["task_id"] for row in first} ^ set(by_task))
        raise ValueError(f"the two evaluations are not of the same tasks ({missing} task ids appear in only one)")
    if any(row.get(key) is None or by_task[row["task_id"]].get(key) is None for row in first):
        return None
    return paired_difference([row[key] for row in first], [by_task[row["task_id"]][key] for row in first], seed)


def summarize_curves(
    records: Iterable[TrajectoryRecord],
    turns: int,
    samples: int,
    first_turn_samples: Mapping[str, Sequence[TurnOutcome]] | None = None,
) -> dict[str, Any]:
    """Sequential versus parallel at equal samples, k = 1..T, without and with an oracle.

    ``sequential[k-1]`` is m1@tk, the majority vote over the first k turns of
    one trajectory; ``parallel[k-1]`` is mk@t1, the vote over k independent
    first-turn answers (None where fewer than k exist). ``sequential_oracle``
    and ``parallel_oracle`` are p1@tk and pk@t1: any of those k answers
    correct. Same inputs and averaging as :func:`summarize_eval`, whose
    m1@tT, mT@t1, p1@tT and pT@t1 are the last points.
    """
    _check_turns(turns)
    tasks = group_trajectories(records, turns, samples)
    pool = _first_turn_pool(tasks, turns, first_turn_samples)
    ks = list(range(1, turns + 1))
    return {
        "k": ks,
        "sequential": [fmean(mean_m1_at_t(t, k) for t in tasks.values()) for k in ks],
        "parallel": [_mean_at_t1(pool, k, mean_mk_at_t1) for k in ks],
        "sequential_oracle": [fmean(mean_p1_at_t(t, k) for t in tasks.values()) for k in ks],
        "parallel_oracle": [_mean_at_t1(pool, k, mean_pk_at_t1) for k in ks],
    }


def prepare_eval_records(
    records: list[TrajectoryRecord],
    parallel: list[TrajectoryRecord] | None,
    turns: int,
    samples: int,
    cluster: Callable[[Sequence[str]], Mapping[str, str]],
) -> dict[str, list[TurnOutcome]] | None:
    """Merge answer keys into the grader's classes (in place) and return the parallel baseline's first turns.

    One preparation for the eval stage and for a report that recomputes
    figures from an eval's records, so both count the same answers alike.
    ``parallel``: the records of ``parallel/rollouts.jsonl``, None when none
    were drawn. Returns None when the trajectories' own first turns serve
    (n >= T); at n < T without parallel records (greedy decoding, whose T
    answers would be identical) the first answer repeated.
    """
    merge_answer_classes(records + (parallel or []), cluster)
    if samples >= turns:
        return None
    if parallel is None:
        return repeated_first_turns(records, turns)
    return first_turn_samples(parallel, turns)


def first_turn_samples(records: Iterable[TrajectoryRecord], turns: int) -> dict[str, list[TurnOutcome]]:
    """Task id -> the T graded first-turn candidates of the parallel baseline's records.

    A request that failed after its retries leaves fewer candidates; the
    missing ones count as incorrect abstentions, as missing turns do,
    rather than dropping the task.
    """
    samples: dict[str, list[TurnOutcome]] = {}
    for record in records:
        candidates = record.turns[0].candidates if record.turns else []
        outcomes = [turn_outcome(c.grade) for c in candidates]
        samples[record.task_id] = outcomes + [MISSING] * (turns - len(outcomes))
    return samples


def repeated_first_turns(records: Iterable[TrajectoryRecord], turns: int) -> dict[str, list[TurnOutcome]]:
    """Greedy decoding would draw T identical first answers (vLLM refuses n > 1 at temperature 0): repeat the first."""
    return {r.task_id: [turn_outcome(r.turns[0].grade if r.turns else None)] * turns for r in records if r.sample == 0}


def merge_answer_classes(
    records: Iterable[TrajectoryRecord], cluster: Callable[[Sequence[str]], Mapping[str, str]]
) -> None:
    """Replace, in place, every grade's ``answer_key`` by its class key within the task.

    ``cluster`` is the grader's ``cluster_keys``: one call per task with the
    task's distinct keys in first-seen order, so answers that are equal but
    keyed differently (math: ``\\pi/2`` and ``\\frac{\\pi}{2}`` after
    math-verify's equivalence) vote together. Records of several files
    (trajectories and parallel samples) may be passed together: one task gets
    one set of classes.
    """
    keyed_by_task: dict[str, list[tuple[str, TurnRecord | Candidate]]] = defaultdict(list)
    for record in records:
        for turn in record.turns:
            answers: list[TurnRecord | Candidate] = [turn, *turn.candidates]
            keyed_by_task[record.task_id] += [
                (a.grade.answer_key, a) for a in answers if a.grade.answer_key is not None
            ]
    for keyed in keyed_by_task.values():
        classes = cluster(list(dict.fromkeys(key for key, _ in keyed)))
        for key, answer in keyed:
            answer.grade = replace(answer.grade, answer_key=classes[key])


def group_trajectories(records: Iterable[TrajectoryRecord], turns: int, samples: int) -> TaskTrajectories:
    """Task id -> its trajectories (T outcomes each), in sample order, in first-seen task order.

    Raises ValueError naming the task when a task does not have exactly
    ``samples`` distinct trajectories: an unbalanced eval would weight tasks
    unevenly and make pass@k meaningless.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1; got {samples}")
    by_task: dict[str, dict[int, list[TurnOutcome]]] = defaultdict(dict)
    for record in records:
        task_id, sample = record.task_id, record.sample
        if sample in by_task[task_id]:
            raise ValueError(f"task {task_id!r}: sample {sample} appears more than once")
        by_task[task_id][sample] = [turn_outcome(grade) for grade in _turn_grades(record, turns)]
    if not by_task:
        raise ValueError("no rollout records to evaluate")
    for task_id, trajectories in by_task.items():
        if len(trajectories) != samples:
            raise ValueError(f"task {task_id!r} has {len(trajectories)} trajectories, expected samples={samples}")
    return {task_id: [t[s] for s in sorted(t)] for task_id, t in by_task.items()}


def count_incomplete(records: Iterable[TrajectoryRecord], turns: int) -> int:
    """How many trajectories ended with an error before turn ``turns`` (their gaps count as wrong)."""
    return sum(None in _turn_grades(record, turns) for record in records)


def count_grading_errors(records: Iterable[TrajectoryRecord]) -> int:
    """How many answers (every sample of every turn) the grader could not judge: a raise, a timeout, a bad
    result; each has ``error`` set and counts as wrong."""
    return sum(bool(c.grade.error) for r in records for turn in r.turns for c in turn.candidates)


def per_task_rows(records: Iterable[TrajectoryRecord], turns: int) -> list[dict[str, Any]]:
    """One row per (task_id, sample, turn) for the per-task inspection file.

    Turns an errored trajectory never reached appear with ``parsed`` None,
    ``correct`` False and ``score`` None, so they stay visible and are not
    mistaken for a graded zero.
    """
    return [
        {
            "task_id": record.task_id,
            "sample": record.sample,
            "turn": turn,
            "parsed": grade.parsed if grade else None,
            "correct": bool(grade.correct) if grade else False,
            "score": grade.score if grade else None,
        }
        for record in records
        for turn, grade in enumerate(_turn_grades(record, turns), start=1)
    ]


def format_eval_table(summary: Mapping[str, Any]) -> Table:
    """pass@1 per turn and the headline metrics of a :func:`summarize_eval` result, for the CLI."""
    turns = summary["turns"]
    table = Table(title=f"Evaluation: {summary['n_tasks']} tasks, {summary['samples']} samples, {turns} turns")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for row in summary["per_turn"]:
        table.add_row(f"pass@1 turn {row['turn']}", _format_value(row["pass@1"]))
    for key in headline_keys(turns)[turns:] + ["delta_t1_tT"]:
        table.add_row(key, _format_value(summary[key]))
    table.add_row("incomplete trajectories", str(summary["incomplete"]))
    table.add_row("grading errors", str(summary.get("grading_errors", "n/a")))
    return table


def _turn_grades(record: TrajectoryRecord, turns: int) -> list[GradeResult | None]:
    """The ``grade`` of turns 1..``turns`` of a record, None for turns an error cut off.

    A short trajectory without an ``error`` is a collection run (stopped at
    success) or a corrupt file, not an eval, so it raises instead of being
    padded. Extra turns beyond ``turns`` are ignored: a T-turn summary of a
    longer rollout is still well defined.
    """
    recorded = record.turns
    numbers = [turn.turn for turn in recorded]
    if numbers != list(range(1, len(recorded) + 1)):
        raise ValueError(f"trajectory {record.key}: turns are numbered {numbers}, expected 1, 2, ...")
    if len(recorded) < turns and not record.error:
        raise ValueError(
            f"trajectory {record.key} has {len(recorded)} of {turns} turns and no error: "
            "evaluation trajectories must not stop early"
        )
    grades: list[GradeResult | None] = [turn.grade for turn in recorded[:turns]]
    return grades + [None] * (turns - len(grades))


def turn_outcome(grade: GradeResult | None) -> TurnOutcome:
    """A turn's grade as a TurnOutcome; None (a turn an error cut off) is an incorrect abstention."""
    if grade is None:
        return MISSING
    return TurnOutcome(grade.parsed, bool(grade.correct), grade.answer_key)


def _turn_summary(tasks: TaskTrajectories, turn: int, samples: int) -> dict[str, Any]:
    """pass@k at one turn for every k <= n, c = a task's trajectories correct at that turn."""
    counts = [(samples, sum(t[turn - 1].correct for t in trajectories)) for trajectories in tasks.values()]
    pass_at = {str(k): mean_pass_at_k(counts, k) for k in range(1, samples + 1)}
    return {"turn": turn, "pass@1": pass_at["1"], "pass@k": pass_at}


def _first_turn_pool(
    tasks: TaskTrajectories,
    turns: int,
    first_turn_samples: Mapping[str, Sequence[TurnOutcome]] | None,
) -> list[Sequence[TurnOutcome]]:
    """Each task's independent first-turn answers, in task order: the dedicated samples, else the trajectories' first turns."""
    if first_turn_samples is None:
        return [[t[0] for t in trajectories] for trajectories in tasks.values()]
    if set(first_turn_samples) != set(tasks):
        raise ValueError(
            f"first_turn_samples covers other tasks than the records: "
            f"missing {sorted(set(tasks) - set(first_turn_samples))}, "
            f"extra {sorted(set(first_turn_samples) - set(tasks))}"
        )
    for task_id in tasks:
        if len(first_turn_samples[task_id]) < turns:
            raise ValueError(
                f"task {task_id!r} has {len(first_turn_samples[task_id])} first-turn samples, m{turns}@t1 needs {turns}"
            )
    return [first_turn_samples[task_id] for task_id in tasks]


def _mean_at_t1(
    pool: list[Sequence[TurnOutcome]], k: int, metric: Callable[[list[Sequence[TurnOutcome]], int], float]
) -> float | None:
    """mk@t1 or pk@t1 over tasks, or None when some task has fewer than k first-turn answers."""
    if min(len(samples) for samples in pool) < k:
        return None
    return metric(pool, k)


def _mean_of(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The mean over tasks of a per-task figure (None when it was not measured)."""
    values = [row[key] for row in rows]
    return None if values[0] is None else fmean(values)


def _check_turns(turns: int) -> None:
    """T >= 2: with T = 1 the keys m1@t1 and mT@t1 collide and there is nothing to self-correct."""
    if turns < 2:
        raise ValueError(f"an eval summary needs turns >= 2; got {turns}")


def _format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
