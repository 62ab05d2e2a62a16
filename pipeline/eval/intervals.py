"""Paired bootstrap intervals over tasks: is a difference real or one task in 200?

Every headline figure is a mean over tasks of a per-task value (a task's
share of correct trajectories, of votes won, ...). Differences are *paired*:
both figures are measured on the same tasks (m1@tT against mT@t1 within one
eval; iteration K against the base model; one run against another), so the
bootstrap resamples tasks and keeps each task's two values together, which
removes the task-difficulty variance that an unpaired comparison would count
as noise. The interval is the percentile interval of the resampled means
(seeded, so a rerun prints the same ends).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean over tasks (``estimate``) and its bootstrap interval [``low``, ``high``]."""

    estimate: float
    low: float
    high: float

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0: the difference is not explained by which tasks were drawn."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        return cls(float(data["estimate"]), float(data["low"]), float(data["high"]))


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, seed: int, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """The mean of per-task ``values`` with its percentile bootstrap interval (tasks resampled with replacement)."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"a bootstrap needs a non-empty list of per-task values; got shape {data.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    means = np.empty(resamples)
    for chunk, rows in _resampled_tasks(data.size, seed, resamples):
        means[chunk] = data[rows].mean(axis=1)
    return percentile_interval(float(data.mean()), means, confidence)


def resampled_sums(columns: np.ndarray, seed: int, resamples: int = RESAMPLES) -> np.ndarray:
    """Each column of ``columns`` (tasks x k) summed over the tasks of each resample: shape (resamples, k).

    The same resamples as :func:`bootstrap_mean` with the same seed. For
    figures that are ratios of counts pooled over tasks (a share of steps,
    not a mean of per-task shares): sum the numerators and denominators of
    one resample, then divide (:func:`ratio_interval`).
    """
    data = np.asarray(columns, dtype=float)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"resampled sums need a tasks x columns array; got shape {data.shape}")
    sums = np.empty((resamples, data.shape[1]))
    for chunk, rows in _resampled_tasks(data.shape[0], seed, resamples):
        sums[chunk] = data[rows].sum(axis=1)
    return sums


def ratio_interval(
    estimate: float, numerators: np.ndarray, denominators: np.ndarray, confidence: float = CONFIDENCE
) -> Interval:
    """A pooled ratio and its percentile interval over resampled (numerator, denominator) sums.

    A resample whose denominator is 0 has no ratio and is left out of the percentiles.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return percentile_interval(estimate, numerators / denominators, confidence)


def _resampled_tasks(size: int, seed: int, resamples: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(which resamples, their task indices drawn with replacement), in chunks that keep memory at 1000 x tasks."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, 1000):
        stop = min(start + 1000, resamples)
        yield slice(start, stop), rng.integers(0, size, size=(stop - start, size))


def percentile_interval(estimate: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """``estimate`` with the central ``confidence`` percentile interval of the resampled ``draws`` (NaNs ignored)."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def paired_difference(
    first: Sequence[float],
    second: Sequence[float],
    seed: int,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Interval:
    """mean(first - second) over tasks with its paired bootstrap interval; ``first[i]`` and ``second[i]`` are one task."""
    if len(first) != len(second):
        raise ValueError(f"a paired difference needs the same tasks on both sides; got {len(first)} and {len(second)}")
    return bootstrap_mean(np.subtract(first, second), seed, resamples, confidence)


def format_difference(interval: Interval) -> str:
    """``+1.5 pp [-0.8, +3.9]``, with "not distinguishable" when the interval holds 0."""
    text = f"{100 * interval.estimate:+.1f} pp [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return text if interval.distinguishable else f"{text}, not distinguishable"
