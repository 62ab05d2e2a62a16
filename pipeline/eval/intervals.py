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

from dataclasses import asdict, dataclass
from typing import Any, Sequence

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
    def from_dict(cls, data: dict[str, Any]) -> "Interval":
        return cls(float(data["estimate"]), float(data["low"]), float(data["high"]))


def bootstrap_mean(
    values: Sequence[float], seed: int, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """The mean of per-task ``values`` with its percentile bootstrap interval (tasks resampled with replacement)."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"a bootstrap needs a non-empty list of per-task values; got shape {data.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # chunks keep memory at 1000 x tasks
        stop = min(start + 1000, resamples)
        means[start:stop] = data[rng.integers(0, data.size, size=(stop - start, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(data.mean()), float(low), float(high))


def paired_difference(
    first: Sequence[float], second: Sequence[float], seed: int, resamples: int = RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """mean(first - second) over tasks with its paired bootstrap interval; ``first[i]`` and ``second[i]`` are one task."""
    if len(first) != len(second):
        raise ValueError(f"a paired difference needs the same tasks on both sides; got {len(first)} and {len(second)}")
    return bootstrap_mean(np.subtract(first, second), seed, resamples, confidence)


def format_difference(interval: Interval) -> str:
    """``+1.5 pp [-0.8, +3.9]``, with "not distinguishable" when the interval holds 0."""
    text = f"{100 * interval.estimate:+.1f} pp [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return text if interval.distinguishable else f"{text}, not distinguishable"
