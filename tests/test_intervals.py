"""Paired bootstrap intervals, checked against scipy's independent implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from pipeline.eval.intervals import (
    Interval,
    bootstrap_mean,
    format_difference,
    paired_difference,
    ratio_interval,
    resampled_sums,
)

# 200 tasks, fixed: the per-task shares of two evaluations (as task_metrics.jsonl holds them).
_RNG = np.random.default_rng(12345)
FIRST = _RNG.integers(0, 2, size=200).astype(float)
SECOND = np.where(_RNG.random(200) < 0.15, 1 - FIRST, FIRST)  # flips 15 % of the tasks either way


def scipy_paired(first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    result = bootstrap(
        (first, second),
        lambda a, b, axis=-1: np.mean(a - b, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=10_000,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(7),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def test_paired_difference_agrees_with_scipy_within_half_a_point() -> None:
    ours = paired_difference(FIRST, SECOND, seed=0)
    low, high = scipy_paired(FIRST, SECOND)
    assert ours.estimate == pytest.approx(float(np.mean(FIRST - SECOND)))
    # Means of 200 tasks move in steps of 0.5 pp, so two seeded resamplings can differ by one step.
    assert abs(ours.low - low) <= 0.005 + 1e-12 and abs(ours.high - high) <= 0.005 + 1e-12
    assert ours.low < ours.estimate < ours.high


def test_a_real_gain_excludes_zero() -> None:
    """40 of 200 tasks fixed, none broken: +20 pp is no accident of the draw."""
    before = np.zeros(200)
    after = before.copy()
    after[:40] = 1
    gain = paired_difference(after, before, seed=0)
    assert gain.distinguishable and gain.low > 0.1
    assert format_difference(gain).startswith("+20.0 pp [")
    assert "not distinguishable" not in format_difference(gain)


def test_one_task_in_two_hundred_is_not_distinguishable() -> None:
    """26.0 % vs 26.5 % on 200 tasks: one task either way."""
    first = np.zeros(200)
    first[:52] = 1
    second = first.copy()
    second[60] = 1
    gap = paired_difference(first, second, seed=0)
    assert gap.estimate == pytest.approx(-0.005)
    assert gap.low < 0 <= gap.high and not gap.distinguishable  # [-1.0, +0.0]: 0 is inside
    assert format_difference(gap).endswith("not distinguishable")


def test_seeded_and_paired() -> None:
    assert paired_difference(FIRST, SECOND, seed=3) == paired_difference(FIRST, SECOND, seed=3)
    # Pairing removes the task-difficulty variance: the unpaired interval of the same means is wider.
    paired = paired_difference(FIRST, SECOND, seed=0)
    unpaired_width = (bootstrap_mean(FIRST, 0).high - bootstrap_mean(FIRST, 0).low) * 2**0.5
    assert paired.high - paired.low < unpaired_width


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="same tasks"):
        paired_difference([1.0, 0.0], [1.0], seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([], seed=0)
    assert Interval.from_dict(Interval(0.1, 0.0, 0.2).to_dict()) == Interval(0.1, 0.0, 0.2)


def test_a_pooled_ratio_resamples_the_same_tasks_as_a_mean() -> None:
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    sums = resampled_sums(np.column_stack([values, np.ones(len(values))]), seed=3)
    assert ratio_interval(0.625, sums[:, 0], sums[:, 1]) == bootstrap_mean(values, seed=3)
    # a task with nothing to be a share of weighs nothing; resamples of only such tasks have no ratio
    sums = resampled_sums(np.array([[2.0, 4.0], [0.0, 0.0]]), seed=0)
    interval = ratio_interval(0.5, sums[:, 0], sums[:, 1])
    assert (interval.low, interval.high) == (0.5, 0.5)
