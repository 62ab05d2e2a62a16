"""ExIt's autocurriculum buffer: the most learnable partial histories seen so far.

An *instance* is a base task plus a partial history of earlier attempts;
continuing it for one step is a single self-improvement task. After a GRPO
group has been generated from an instance, its learnability S is the
paper's: the population variance of the group's rewards, which lie in
[0, 1] (so S is in [0, 1/4]: a group split half and half scores 1/4, a group
that all agree scores 0). The new child instance, the history extended by
one of the group's attempts, inherits that score: it is as learnable as the
step that produced it. Instances are drawn with probability proportional to
``exp(kappa * S)``, so kappa is in the paper's units.

Re-scoring: a buffer item that is drawn again takes the S of the group just
generated from it (from a prefix of its history, see
:meth:`LearnabilityBuffer.next_instance`). Scores are otherwise measured
under an older policy; without this an instance the model has since learned
to solve keeps its old, high S and is drawn for ever. Re-scored by its new
group, a solved instance drops to S = 0: it is drawn least and is the first
evicted. The drawn item is the one re-scored (not the prefix's own entry)
because the draw chose it, and its new group is the freshest measurement of
how learnable its line of attempts is for the current policy.

The buffer keeps at most ``capacity`` instances: a newcomer enters only when
its score is at least the current minimum, and then replaces that minimum
(the oldest among equal minima). Without re-scoring the kept set is exactly
the top N of everything offered; a re-scored item keeps its place in the
insertion order (``seq``) and is then ranked by its new score.

All of ExIt's random choices (buffer or fresh task, which instance, which
prefix, divergence, which attempt becomes the child) come from the buffer's
own RNG, whose state is saved with the items: a run restored from a saved
buffer continues with the same draws it would have made. Re-scoring draws
nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.system.atomic import write_json_atomic

FORMAT_VERSION = 2  # 2: S is the variance itself (format 1 held 4 x the variance)


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
        return {
            "task_id": self.task_id,
            "history": [asdict(s) for s in self.history],
            "score": self.score,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BufferItem:
        history = tuple(Step(str(s["response"]), float(s["score"])) for s in data["history"])
        return cls(str(data["task_id"]), history, float(data["score"]), int(data["seq"]))


@dataclass(frozen=True)
class Instance:
    """What one GRPO group continues: a task, the history prefix shown, and whether to diverge.

    ``from_buffer`` is False for a fresh base task (an empty history);
    ``drawn_key`` names the buffer item whose history was cut to ``history``.
    """

    task_id: str
    history: tuple[Step, ...] = ()
    diverge: bool = False
    from_buffer: bool = False
    drawn_key: str | None = None  # the buffer item drawn (re-scored by this instance's group)

    @property
    def depth(self) -> int:
        return len(self.history)

    @property
    def previous_score(self) -> float | None:
        """The score of the attempt being improved (None for a fresh task)."""
        return self.history[-1].score if self.history else None


def learnability(rewards: Sequence[float]) -> float:
    """The paper's S: the population variance of one group's rewards in [0, 1] (at most 1/4)."""
    if len(rewards) < 2:
        return 0.0
    return statistics.pvariance(rewards)


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
        only a draw re-scores an item (:meth:`rescore`).
        """
        item = BufferItem(task_id, tuple(history), float(score), self.next_seq)
        if item.key in self.items:
            return False
        if len(self.items) >= self.capacity and (weakest := self.min_item()) is not None:
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
        return Instance(
            item.task_id, prefix, diverge=self.rng.random() < divergence_prob, from_buffer=True, drawn_key=item.key
        )

    def rescore(self, key: str | None, score: float) -> float | None:
        """Give the held item ``key`` a new score; returns its old one (None when it is not held:
        a fresh task, or an item evicted since it was drawn)."""
        item = self.items.get(key) if key is not None else None
        if key is None or item is None:
            return None
        self.items[key] = replace(item, score=float(score))
        return item.score

    def add_group(self, instance: Instance, attempts: Sequence[Step], rewards: Sequence[float]) -> GroupUpdate:
        """Record one GRPO group: the item it was drawn from is re-scored with the group's
        learnability, then its child, the history plus one of its attempts (drawn uniformly), is
        offered with that score."""
        score = learnability(rewards)
        previous = self.rescore(instance.drawn_key, score)
        history = (*instance.history, attempts[self.rng.randrange(len(attempts))])
        entered = self.offer(instance.task_id, history, score)
        return GroupUpdate(BufferItem(instance.task_id, history, score), entered, previous)

    def stats(self) -> dict[str, Any]:
        """Size, depth histogram and score quantiles: what ``selfimprove status`` shows."""
        depths = Counter(item.depth for item in self.items.values())
        return {
            "size": len(self.items),
            "capacity": self.capacity,
            "depth_histogram": {str(d): depths[d] for d in sorted(depths)},
            "mean_depth": statistics.fmean(depths.elements()) if self.items else None,
            "score_quantiles": self.score_quantiles(),
        }

    def score_quantiles(self) -> dict[str, float] | None:
        """min, quartiles and max of the held scores (nearest rank), None when empty."""
        return _quantiles(sorted(item.score for item in self.items.values()))

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
    def from_dict(cls, data: dict[str, Any]) -> LearnabilityBuffer:
        if data.get("format") == 1:
            raise BufferError(
                "buffer format 1 holds S as 4 x the variance, format 2 the variance itself: "
                "finish that run with the version that started it, or start a new run"
            )
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
    def load(cls, path: Path) -> LearnabilityBuffer:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BufferError(f"cannot read the ExIt buffer {path}: {exc}") from None


@dataclass(frozen=True)
class GroupUpdate:
    """What one group did to the buffer: its child, whether the child entered, and the drawn
    item's score before the group re-scored it (None when no held item was re-scored)."""

    child: BufferItem
    entered: bool
    rescored_from: float | None


def _quantiles(scores: Sequence[float]) -> dict[str, float] | None:
    """min, quartiles and max of sorted scores (nearest rank), None when empty."""
    if not scores:
        return None
    last = len(scores) - 1
    return {f"q{int(q * 100)}": scores[round(q * last)] for q in (0.0, 0.25, 0.5, 0.75, 1.0)}
