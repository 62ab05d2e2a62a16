"""What happens between one answer and the next: fixed, repeated, flipped, no answer (docs/metrics.md).

``eval.json`` says whether revising beats resampling; these say why not.
One step is a pair of consecutive answers to the same task: turn t and
turn t+1 of a trajectory (the model saw its answer and the feedback), or
first-turn sample j-1 and sample j (independent draws: the baseline a
revision has to beat). Answers compare by their vote key (the grader's
answer key, so ``42`` and ``42.0`` are one answer), never by raw text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np

from pipeline.eval.intervals import Interval, percentile_interval, ratio_interval, resampled_sums
from pipeline.eval.metrics import TurnOutcome


class Step(str, Enum):
    """The kind of one step from an answer to the next.

    After a right answer a step is ``keep`` or ``flip`` (wrong, or no
    answer); after a wrong one (no answer counts as wrong) it is ``fix``,
    ``repeat`` (an answer key the same sequence already gave wrongly),
    ``other_wrong`` or ``no_answer``, which partition the steps after a
    wrong answer.
    """

    KEEP = "keep"
    FLIP = "flip"
    FIX = "fix"
    REPEAT = "repeat"
    OTHER_WRONG = "other_wrong"
    NO_ANSWER = "no_answer"


AFTER_RIGHT = (Step.KEEP, Step.FLIP)
AFTER_WRONG = (Step.FIX, Step.REPEAT, Step.OTHER_WRONG, Step.NO_ANSWER)


def steps(answers: Sequence[TurnOutcome]) -> list[Step]:
    """The step from each answer to the next, in order: ``len(answers) - 1`` of them."""
    wrong_keys: set[str] = set()
    found = []
    for previous, current in zip(answers, answers[1:]):
        if not previous.correct and previous.vote_key is not None:
            wrong_keys.add(previous.vote_key)
        found.append(step(previous, current, wrong_keys))
    return found


def step(previous: TurnOutcome, current: TurnOutcome, earlier_wrong_keys: set[str]) -> Step:
    """One step, given the keys of every wrong answer up to and including ``previous``."""
    if previous.correct:
        return Step.KEEP if current.correct else Step.FLIP
    if current.correct:
        return Step.FIX
    if current.vote_key is None:
        return Step.NO_ANSWER
    return Step.REPEAT if current.vote_key in earlier_wrong_keys else Step.OTHER_WRONG


RATES: dict[str, tuple[tuple[Step, ...], tuple[Step, ...]]] = {
    "fix": ((Step.FIX,), AFTER_WRONG),
    "repeat": ((Step.REPEAT,), AFTER_WRONG),
    "flip": ((Step.FLIP,), AFTER_RIGHT),
    "no_answer": ((Step.NO_ANSWER,), AFTER_WRONG),
}
"""Each rate: (the steps it counts, the steps it is a share of). ``flip`` is a
share of the steps after a right answer, the others of those after a wrong one."""

SIDES = ("sequential", "parallel")
"""Revision (turn t to t+1 of a trajectory) and its baseline (first-turn sample j-1 to sample j)."""

StepCounts = list[dict[str, int]]
"""Per position i (answer i+1 to answer i+2): how many steps of each kind, by :class:`Step` value."""


def count_steps(sequences: Iterable[Sequence[TurnOutcome]], positions: int) -> StepCounts:
    """The steps of each kind at each of the first ``positions`` positions, summed over ``sequences``.

    A sequence shorter than ``positions + 1`` answers adds nothing to the positions it does not reach.
    """
    counts = [dict.fromkeys((kind.value for kind in Step), 0) for _ in range(positions)]
    for answers in sequences:
        for position, kind in enumerate(steps(answers[: positions + 1])):
            counts[position][kind.value] += 1
    return counts


def task_steps(
    trajectories: Sequence[Sequence[TurnOutcome]], first_turns: Sequence[TurnOutcome], turns: int
) -> dict[str, StepCounts]:
    """One task's step counts: over its trajectories' turns, and over its first ``turns`` parallel samples.

    The parallel samples are one sequence (sample j against samples < j), cut
    at T so that the baseline sees as many answers as a trajectory does.
    """
    return {"sequential": count_steps(trajectories, turns - 1), "parallel": count_steps([first_turns], turns - 1)}


def summarize_transitions(per_task: Sequence[Mapping[str, StepCounts]], turns: int, seed: int) -> dict[str, Any]:
    """Every rate of :data:`RATES` per position and over all positions, each side, and sequential minus parallel.

    ``per_task``: :func:`task_steps` of each task. A rate is a ratio of step
    counts pooled over tasks (``count`` of ``of`` steps); its interval and the
    paired interval of the difference come from the same resamples of tasks
    (:func:`pipeline.eval.intervals.resampled_sums`, seeded by ``seed``). A
    rate with no step to be a share of is None, and so is its difference.
    ``steps`` keeps the pooled count of every kind per position, for the plot.
    """
    if not per_task:
        raise ValueError("transitions need at least one task")
    positions = turns - 1
    counts = _count_array(per_task)
    groups = [[p] for p in range(positions)] + [list(range(positions))]
    keys = [(side, g, rate) for side in range(len(SIDES)) for g in range(len(groups)) for rate in RATES]
    columns = np.stack([_rate_columns(counts[:, side, groups[g]], rate) for side, g, rate in keys], axis=1)
    pooled = columns.sum(axis=0)  # keys x (numerator, denominator)
    resampled = resampled_sums(columns.reshape(len(per_task), -1), seed).reshape(-1, *columns.shape[1:])
    at = {key: (pooled[i], resampled[:, i]) for i, key in enumerate(keys)}

    def group_summary(g: int) -> dict[str, Any]:
        found = {side: {rate: _rate(*at[s, g, rate]) for rate in RATES} for s, side in enumerate(SIDES)}
        found["difference"] = {rate: _difference(at[0, g, rate], at[1, g, rate]) for rate in RATES}
        return found

    return {
        "per_turn": [{"from": g + 1, "to": g + 2, **group_summary(g)} for g in range(positions)],
        "all_turns": group_summary(positions),
        "steps": {
            side: [{kind.value: int(n) for kind, n in zip(Step, counts[:, s, p].sum(axis=0))} for p in range(positions)]
            for s, side in enumerate(SIDES)
        },
    }


def _count_array(per_task: Sequence[Mapping[str, StepCounts]]) -> np.ndarray:
    """The step counts as an array: tasks x sides (:data:`SIDES`) x positions x kinds (:class:`Step`)."""
    return np.array(
        [[[[at[kind.value] for kind in Step] for at in task[side]] for side in SIDES] for task in per_task], dtype=float
    )


def _rate_columns(counts: np.ndarray, rate: str) -> np.ndarray:
    """Per task, the rate's numerator and denominator over the positions of ``counts`` (tasks x positions x kinds)."""
    counted, among = RATES[rate]
    kinds = list(Step)
    numerator = sum(counts[:, :, kinds.index(kind)].sum(axis=1) for kind in counted)
    denominator = sum(counts[:, :, kinds.index(kind)].sum(axis=1) for kind in among)
    return np.stack([numerator, denominator], axis=1)


Pooled = tuple[np.ndarray, np.ndarray]
"""A rate's pooled (numerator, denominator) and its resampled sums (resamples x 2)."""


def _rate(pooled: np.ndarray, resampled: np.ndarray) -> dict[str, float] | None:
    """A pooled rate with its interval and its counts; None with nothing to be a share of."""
    numerator, denominator = pooled
    if denominator == 0:
        return None
    interval = ratio_interval(numerator / denominator, resampled[:, 0], resampled[:, 1])
    return {**interval.to_dict(), "count": int(numerator), "of": int(denominator)}


def _difference(sequential: Pooled, parallel: Pooled) -> dict[str, float] | None:
    """Sequential minus parallel of one rate, with its paired interval (both sides from the same resamples)."""
    (seq, seq_draws), (par, par_draws) = sequential, parallel
    if seq[1] == 0 or par[1] == 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = seq_draws[:, 0] / seq_draws[:, 1] - par_draws[:, 0] / par_draws[:, 1]
    return percentile_interval(seq[0] / seq[1] - par[0] / par[1], draws).to_dict()


def rate_change(
    first: Sequence[Mapping[str, StepCounts]],
    second: Sequence[Mapping[str, StepCounts]],
    rate: str,
    seed: int,
    side: str | None = None,
) -> Interval | None:
    """One rate over all positions in ``first`` minus in ``second`` (``first[i]`` and ``second[i]`` one task).

    ``side`` picks revision or parallel; None compares the gaps (revision
    minus parallel) instead. The interval is paired over tasks; None when a
    rate has nothing to be a share of on either side.
    """
    if len(first) != len(second) or not first:
        raise ValueError(f"a paired rate change needs the same tasks on both sides; got {len(first)} and {len(second)}")
    columns = np.stack(
        [_rate_columns(_count_array(steps_of)[:, s], rate) for steps_of in (first, second) for s in range(len(SIDES))],
        axis=1,
    )  # tasks x (first seq, first par, second seq, second par) x 2
    pooled = columns.sum(axis=0)
    if (pooled[:, 1] == 0).any():
        return None
    draws = resampled_sums(columns.reshape(len(first), -1), seed).reshape(-1, *columns.shape[1:])
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate, resampled = _compared(pooled[None], side)[0], _compared(draws, side)
    return percentile_interval(float(estimate), resampled)


def _compared(sums: np.ndarray, side: str | None) -> np.ndarray:
    """First minus second of the chosen figure, from (draws x 4 x 2) sums: seq/par rates of first, then of second."""
    rates = sums[:, :, 0] / sums[:, :, 1]
    if side is None:
        return (rates[:, 0] - rates[:, 1]) - (rates[:, 2] - rates[:, 3])
    offset = SIDES.index(side)
    return rates[:, offset] - rates[:, 2 + offset]
