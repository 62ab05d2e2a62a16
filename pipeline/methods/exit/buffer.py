"""ExIt's autocurriculum buffer: the most learnable partial histories seen so far.

An *instance* is a base task plus a partial history of earlier attempts;
continuing it for one step is a single self-improvement task. After a GRPO
group has been generated from an instance, its learnability is measured as
the variance of the group's rewards (rewards lie in [0, 1], so the variance
is at most 1/4; :func:`learnability` scales it to [0, 1]). The new child
instance, the history extended by one of the group's attempts, inherits that
score: it is as learnable as the step that produced it.

The buffer keeps the top ``capacity`` instances by score: a newcomer enters
only when its score is at least the current minimum, and then replaces that
minimum (the oldest among equal minima). Items are never re-scored, so the
kept set is always the top N of everything offered. Instances are drawn with
probability proportional to ``exp(kappa * S)``.

All of ExIt's random choices (buffer or fresh task, which instance, which
prefix, divergence, which attempt becomes the child) come from the buffer's
own RNG, whose state is saved with the items: a run restored from a saved
buffer continues with the same draws it would have made.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline.system.atomic import write_json_atomic

BUFFER_NAME = "buffer.json"
FORMAT_VERSION = 1


class BufferError(ValueError):
    """A buffer file that cannot be read back."""


@dataclass(frozen=True)
class Step:
    """One attempt of a partial history and the grader's score of it."""

    response: str
    score: float


@dataclass(frozen=True)
class BufferItem:
    """A (base task, partial history) instance with its learnability score.

    ``seq`` is the insertion order: it breaks ties between equal scores
    (the oldest minimum is evicted first) and keeps reloads deterministic.
    """

    task_id: str
    history: tuple[Step, ...]
    score: float
    seq: int = 0

    @property
    def depth(self) -> int:
        return len(self.history)

    @property
    def key(self) -> str:
        """Identity of the instance: its task and the exact attempts of its history."""
        digest = hashlib.sha256(json.dumps([s.response for s in self.history]).encode()).hexdigest()[:16]
        return f"{self.task_id}@{self.depth}:{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "history": [asdict(s) for s in self.history], "score": self.score,
                "seq": self.seq}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BufferItem":
        history = tuple(Step(str(s["response"]), float(s["score"])) for s in data["history"])
        return cls(str(data["task_id"]), history, float(data["score"]), int(data["seq"]))


@dataclass(frozen=True)
class Instance:
    """What one GRPO group continues: a task, the history prefix shown, and whether to diverge.

    ``from_buffer`` is False for a fresh base task (an empty history).
    """

    task_id: str
    history: tuple[Step, ...] = ()
    diverge: bool = False
    from_buffer: bool = False

    @property
    def depth(self) -> int:
        return len(self.history)

    @property
    def previous_score(self) -> float | None:
        """The score of the attempt being improved (None for a fresh task)."""
        return self.history[-1].score if self.history else None


def learnability(rewards: Sequence[float]) -> float:
    """Variance of one group's rewards in [0, 1], scaled by 4 so that a 50/50 group scores 1."""
    if len(rewards) < 2:
        return 0.0
    return min(1.0, 4.0 * statistics.pvariance(rewards))


@dataclass
class LearnabilityBuffer:
    """The top-``capacity`` instances by learnability, sampled by ``exp(kappa * S)``."""

    capacity: int
    kappa: float = 1.0
    seed: int = 0
    items: dict[str, BufferItem] = field(default_factory=dict)
    next_seq: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {self.capacity}")
        self.rng = random.Random(self.seed)

    def __len__(self) -> int:
        return len(self.items)

    def min_item(self) -> BufferItem | None:
        return min(self.items.values(), key=lambda item: (item.score, item.seq), default=None)

    def offer(self, task_id: str, history: Sequence[Step], score: float) -> bool:
        """Insert an instance if it makes the top N; True when it entered.

        An instance already held (same task and history) is left as it is:
        items are never re-scored.
        """
        item = BufferItem(task_id, tuple(history), float(score), self.next_seq)
        if item.key in self.items:
            return False
        if len(self.items) >= self.capacity:
            weakest = self.min_item()
            if item.score < weakest.score:
                return False
            del self.items[weakest.key]
        self.items[item.key] = item
        self.next_seq += 1
        return True

    def sample(self) -> BufferItem:
        """One item, drawn with probability proportional to ``exp(kappa * S)``."""
        if not self.items:
            raise IndexError("sample from an empty buffer")
        ordered = sorted(self.items.values(), key=lambda item: item.seq)
        top = max(self.kappa * item.score for item in ordered)  # shift for stability; the ratios are unchanged
        weights = [math.exp(self.kappa * item.score - top) for item in ordered]
        return self.rng.choices(ordered, weights=weights)[0]

    def next_instance(self, task_id: str, select_prob: float, min_items: int, divergence_prob: float) -> Instance:
        """What the next group continues: a buffer instance with probability ``select_prob`` once
        at least ``min_items`` are held (a random non-empty prefix of its history), else the fresh
        task ``task_id``. Improvement steps diverge with probability ``divergence_prob``."""
        use_buffer = len(self.items) >= max(1, min_items) and self.rng.random() < select_prob
        if not use_buffer:
            return Instance(task_id)
        item = self.sample()
        prefix = item.history[: self.rng.randint(1, item.depth)]
        return Instance(item.task_id, prefix, diverge=self.rng.random() < divergence_prob, from_buffer=True)

    def add_group(
        self, instance: Instance, attempts: Sequence[Step], rewards: Sequence[float]
    ) -> tuple[BufferItem, bool]:
        """Record one GRPO group: its child, the history plus one of its attempts (drawn uniformly),
        is offered with the group's learnability; returns the child and whether it entered."""
        score = learnability(rewards)
        history = (*instance.history, attempts[self.rng.randrange(len(attempts))])
        entered = self.offer(instance.task_id, history, score)
        return BufferItem(instance.task_id, history, score), entered

    def stats(self) -> dict[str, Any]:
        """Size, depth histogram and score quantiles: what ``selfimprove status`` shows."""
        scores = sorted(item.score for item in self.items.values())
        depths = Counter(item.depth for item in self.items.values())
        return {
            "size": len(scores),
            "capacity": self.capacity,
            "depth_histogram": {str(d): depths[d] for d in sorted(depths)},
            "mean_depth": statistics.fmean(depths.elements()) if scores else None,
            "score_quantiles": _quantiles(scores),
        }

    def to_dict(self) -> dict[str, Any]:
        version, state, gauss = self.rng.getstate()
        return {
            "format": FORMAT_VERSION,
            "capacity": self.capacity,
            "kappa": self.kappa,
            "seed": self.seed,
            "next_seq": self.next_seq,
            "rng_state": [version, list(state), gauss],
            "items": [item.to_dict() for item in sorted(self.items.values(), key=lambda item: item.seq)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LearnabilityBuffer":
        if data.get("format") != FORMAT_VERSION:
            raise BufferError(f"unknown buffer format {data.get('format')!r} (expected {FORMAT_VERSION})")
        buffer = cls(int(data["capacity"]), float(data["kappa"]), int(data["seed"]))
        buffer.next_seq = int(data["next_seq"])
        version, state, gauss = data["rng_state"]
        buffer.rng.setstate((version, tuple(state), gauss))
        for raw in data["items"]:
            item = BufferItem.from_dict(raw)
            buffer.items[item.key] = item
        return buffer

    def save(self, path: Path) -> None:
        """Write the buffer atomically: a crash leaves the previous version whole."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "LearnabilityBuffer":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BufferError(f"cannot read the ExIt buffer {path}: {exc}") from None


def _quantiles(scores: Sequence[float]) -> dict[str, float] | None:
    """min, quartiles and max of sorted scores (nearest rank), None when empty."""
    if not scores:
        return None
    last = len(scores) - 1
    return {f"q{int(q * 100)}": scores[round(q * last)] for q in (0.0, 0.25, 0.5, 0.75, 1.0)}
