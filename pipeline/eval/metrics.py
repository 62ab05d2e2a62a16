"""Evaluation metrics, exactly as docs/metrics.md defines them.

Inputs are plain data the eval stage builds from rollout records: one
:class:`TurnOutcome` per graded answer, a trajectory is the list of outcomes
of turns 1, 2, ... of one sample, and first-turn samples are the outcomes of
parallel turn-1 answers to one task. Per-task functions return a bool; the
``mean_*`` helpers average them over tasks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TurnOutcome:
    """One graded answer: the grader's parsed value (None: no answer found), its verdict,
    and the canonical answer key that votes compare (the grader's, after the
    task's equivalence classes are merged; without one, the parsed text votes)."""

    parsed: str | None
    correct: bool
    answer_key: str | None = None

    @property
    def vote_key(self) -> str | None:
        """What a majority vote counts: the answer key, else the parsed text (None abstains)."""
        if self.parsed is None:
            return None
        return self.answer_key if self.answer_key is not None else self.parsed


Trajectory = Sequence[TurnOutcome]


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote: the winning answer key (None when all abstained)."""

    answer: str | None
    correct: bool


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021) for one task: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge
    binomials. Only defined for n >= k: with fewer samples than k the
    estimator does not exist, so this raises instead of guessing.
    """
    if min(n, c, k) < 0:
        raise ValueError(f"pass_at_k needs non-negative n, c, k; got n={n}, c={c}, k={k}")
    if k < 1:
        raise ValueError(f"pass_at_k needs k >= 1; got k={k}")
    if c > n:
        raise ValueError(f"pass_at_k: more correct samples than samples (c={c} > n={n})")
    if n < k:
        raise ValueError(f"pass@{k} is undefined with only n={n} samples per task (needs n >= k)")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over tasks, given (n samples, c correct) per task."""
    return _mean(pass_at_k(n, c, k) for n, c in counts)


def majority_vote(outcomes: Sequence[TurnOutcome]) -> Vote:
    """The most frequent answer (by :attr:`TurnOutcome.vote_key`), abstentions not counted.

    Ties go to the tied answer that appears first in ``outcomes``: the vote
    stays deterministic, and for a trajectory it favours the earlier turn, so
    a tie never credits a revision the model did not make consistently. The
    vote is correct when the first outcome carrying the winning answer was
    graded correct. All abstaining gives ``Vote(None, False)``.
    """
    answered = [o for o in outcomes if o.vote_key is not None]
    if not answered:
        return Vote(None, False)
    counts = Counter(o.vote_key for o in answered)
    top = max(counts.values())
    winner = next(o for o in answered if counts[o.vote_key] == top)
    return Vote(winner.vote_key, winner.correct)


def m1_at_t(trajectory: Trajectory, T: int) -> bool:
    """m1@tT: majority vote over turns 1..T of one trajectory, no oracle."""
    return majority_vote(_first(trajectory, T, "T")).correct


def p1_at_t(trajectory: Trajectory, T: int) -> bool:
    """p1@tT: with an oracle, correct if any of turns 1..T is correct.

    A trajectory may be shorter than T: oracle runs stop at the first
    correct turn, so the missing turns cannot change the result.
    """
    _check_positive("T", T)
    return any(o.correct for o in trajectory[:T])


def mk_at_t1(first_turn_samples: Sequence[TurnOutcome], k: int) -> bool:
    """mk@t1: majority vote over the first k parallel turn-1 samples of one task.

    The equal-compute baseline for m1@tk: k answers either way.
    """
    return majority_vote(_first(first_turn_samples, k, "k")).correct


def pk_at_t1(first_turn_samples: Sequence[TurnOutcome], k: int) -> bool:
    """pk@t1: with an oracle, correct if any of the first k parallel turn-1 samples is correct.

    The equal-compute baseline for p1@tk: sequential revision earns its keep
    when seeing the failed attempts beats k fresh tries.
    """
    return any(o.correct for o in _first(first_turn_samples, k, "k"))


def mean_m1_at_t(trajectories: Iterable[Trajectory], T: int) -> float:
    return _mean_over(trajectories, lambda t: m1_at_t(t, T))


def mean_p1_at_t(trajectories: Iterable[Trajectory], T: int) -> float:
    return _mean_over(trajectories, lambda t: p1_at_t(t, T))


def mean_mk_at_t1(samples_per_task: Iterable[Sequence[TurnOutcome]], k: int) -> float:
    return _mean_over(samples_per_task, lambda s: mk_at_t1(s, k))


def mean_pk_at_t1(samples_per_task: Iterable[Sequence[TurnOutcome]], k: int) -> float:
    return _mean_over(samples_per_task, lambda s: pk_at_t1(s, k))


@dataclass(frozen=True)
class SelfCorrection:
    """SCoRe's self-correction figures between turn 1 and turn T.

    Both deltas are shares of *all* tasks, so
    ``delta_t1_tT == delta_i_to_c - delta_c_to_i`` (up to rounding).
    """

    acc_t1: float
    acc_tT: float
    delta_t1_tT: float
    delta_i_to_c: float
    delta_c_to_i: float


def self_correction(trajectories: Iterable[Trajectory], T: int) -> SelfCorrection:
    """Acc@t1, Acc@tT and the i->c / c->i shares over trajectories of at least T turns.

    Pass one trajectory per task (or the same number per task, which gives
    the same task-level means).
    """
    pairs = [(t[0].correct, t[T - 1].correct) for t in (_first(t, T, "T") for t in trajectories)]
    if not pairs:
        raise ValueError("self_correction needs at least one trajectory")
    total = len(pairs)
    acc_t1 = sum(first for first, _ in pairs) / total
    acc_tT = sum(last for _, last in pairs) / total
    return SelfCorrection(
        acc_t1=acc_t1,
        acc_tT=acc_tT,
        delta_t1_tT=acc_tT - acc_t1,
        delta_i_to_c=sum(not first and last for first, last in pairs) / total,
        delta_c_to_i=sum(first and not last for first, last in pairs) / total,
    )


def _first(outcomes: Sequence[TurnOutcome], count: int, name: str) -> Sequence[TurnOutcome]:
    """The first ``count`` outcomes; fewer is an error, not a silently smaller vote."""
    _check_positive(name, count)
    if len(outcomes) < count:
        raise ValueError(f"{name}={count} needs at least {count} outcomes, got {len(outcomes)}")
    return outcomes[:count]


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")


def _mean_over(items: Iterable[Sequence[TurnOutcome]], score: Callable[[Sequence[TurnOutcome]], bool]) -> float:
    return _mean(float(score(item)) for item in items)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("a mean over no tasks is undefined")
    return sum(values) / len(values)
