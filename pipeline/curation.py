"""RISE training data from rollout records: selection, weights, boost, accumulation.

Pure functions over the rollout records of ``iter_K/rollout/rollouts.jsonl``
(schema in README "Run directory"). Each kept turn becomes one weighted SFT
example: the input is the history the model saw before the turn, the target
is the turn's best action, and the weight is ``exp(reward / tau)``
(reward-weighted regression, as in RISE; the reference code uses tau = 0.4).
Nothing here touches the disk, so the stage (``pipeline.curate_stage``) stays a
thin wrapper and the selection rules can be tested on hand-built records.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal

from rich.table import Table

Selection = Literal["all", "better", "best", "success"]
Source = Literal["rollout", "boost"]
SELECTIONS: tuple[str, ...] = ("all", "better", "best", "success")
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Example:
    """One weighted SFT example; only ``completion`` carries loss."""

    example_id: str
    source: Source
    iteration: int
    task_id: str
    key: str
    turn: int
    messages: list[dict[str, str]]
    completion: str
    reward: float
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Example":
        return cls(**data)


def rl_weight(reward: float, tau: float) -> float:
    """The reward-weighted-regression weight ``exp(reward / tau)``."""
    return math.exp(reward / tau)


def skip_reason(turn: dict[str, Any]) -> str | None:
    """Why a turn can never be an example, or None.

    An empty response teaches nothing, and a grade with an ``error`` means the
    grader could not judge the response (by the GradeResult contract a wrong
    answer is not an error), so its reward is not evidence either way.
    """
    if not turn["response"].strip():
        return "empty_response"
    if turn["grade"].get("error"):
        return "grading_error"
    return None


def selected_turns(rewards: list[float], correct: list[bool], selection: Selection) -> list[bool]:
    """Which turns of one trajectory the criterion keeps, given each turn's reward.

    - ``all``: every turn.
    - ``better``: the reward is strictly above the previous turn's reward; the
      first turn is compared with 0 (so a zero-reward first turn is dropped).
    - ``best``: no earlier turn has a strictly higher reward (ties are kept, so
      the first turn is always kept).
    - ``success``: the turn was graded correct (reward 1).

    Rewards of turns that are skipped (see :func:`skip_reason`) still count as
    the "previous" / "earlier" rewards: they are what the model saw happen.
    """
    if selection == "all":
        return [True] * len(rewards)
    if selection == "better":
        return [r > prev for r, prev in zip(rewards, [0.0, *rewards[:-1]])]
    if selection == "best":
        return [r >= max(rewards[: i + 1]) for i, r in enumerate(rewards)]
    if selection == "success":
        return list(correct)
    raise ValueError(f"unknown selection {selection!r}; expected one of {', '.join(SELECTIONS)}")


def rollout_example_id(iteration: int, key: str, turn: int) -> str:
    """``{iteration}:{trajectory key}:t{turn}``.

    Built from coordinates, not text: trajectory keys (``task_id#sample``) are
    unique per iteration and deterministic, so a rerun of curate (or of an
    interrupted rollout) yields the same ids, and the same turn collected in
    two iterations stays two examples when data is accumulated.
    """
    return f"{iteration}:{key}:t{turn}"


def boost_example_id(iteration: int, task_id: str, response: str) -> str:
    """``{iteration}:{task_id}:boost:{sha256(response)[:16]}``.

    Boost examples are deduplicated by (task, response text), so the text is
    their identity; hashing it keeps the id short and stable across reruns.
    """
    digest = hashlib.sha256(response.encode("utf-8")).hexdigest()[:16]
    return f"{iteration}:{task_id}:boost:{digest}"


def curate(records: Iterable[dict[str, Any]], tau: float, selection: Selection, iteration: int) -> list[Example]:
    """One example per kept turn, in record order then turn order.

    A turn is kept when the selection criterion (:func:`selected_turns`)
    keeps it and it has no :func:`skip_reason`. Trajectories that ended early
    (``error`` set) keep the turns they completed.
    """
    examples = []
    for record in records:
        turns = record["turns"]
        keep = selected_turns([t["grade"]["score"] for t in turns], [t["grade"]["correct"] for t in turns], selection)
        for turn, kept in zip(turns, keep):
            if kept and skip_reason(turn) is None:
                examples.append(_turn_example(record, turn, tau, iteration))
    return examples


def _turn_example(record: dict[str, Any], turn: dict[str, Any], tau: float, iteration: int) -> Example:
    reward = float(turn["grade"]["score"])
    return Example(
        example_id=rollout_example_id(iteration, record["key"], turn["turn"]),
        source="rollout",
        iteration=iteration,
        task_id=record["task_id"],
        key=record["key"],
        turn=turn["turn"],
        messages=turn["messages"],
        completion=turn["response"],
        reward=reward,
        weight=rl_weight(reward, tau),
    )


def count_skips(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many turns (selected or not) each :func:`skip_reason` removed."""
    reasons = Counter(skip_reason(t) for r in records for t in r["turns"])
    return {reason: reasons[reason] for reason in ("empty_response", "grading_error")}


def boost_examples(records: Iterable[dict[str, Any]], tau: float, iteration: int) -> list[Example]:
    """RISE warm-up data: every correct first-turn candidate, not only the best.

    Identical responses to the same task (across its candidates and samples)
    are kept once, so a task the model answers the same way N times does not
    get N times the weight.
    """
    examples: dict[str, Example] = {}
    for record in records:
        if not record["turns"]:
            continue
        first = record["turns"][0]
        for candidate in first["candidates"]:
            grade, response = candidate["grade"], candidate["response"]
            if not grade["correct"] or grade.get("error") or not response.strip():
                continue
            example_id = boost_example_id(iteration, record["task_id"], response)
            examples.setdefault(example_id, _boost_example(example_id, record, first, candidate, tau, iteration))
    return list(examples.values())


def _boost_example(
    example_id: str, record: dict[str, Any], turn: dict[str, Any], candidate: dict[str, Any], tau: float, iteration: int
) -> Example:
    reward = float(candidate["grade"]["score"])
    return Example(
        example_id=example_id,
        source="boost",
        iteration=iteration,
        task_id=record["task_id"],
        key=record["key"],
        turn=1,
        messages=turn["messages"],
        completion=candidate["response"],
        reward=reward,
        weight=rl_weight(reward, tau),
    )


def accumulate(current: list[Example], earlier_lists: Iterable[list[Example]]) -> list[Example]:
    """The union by ``example_id``: earlier iterations first (in the given order), then ``current``.

    Each iteration's file already holds the data accumulated before it, so
    the lists overlap; the first occurrence of an id wins.
    """
    union: dict[str, Example] = {}
    for examples in [*earlier_lists, current]:
        for example in examples:
            union.setdefault(example.example_id, example)
    return list(union.values())


def weight_histogram(examples: list[Example], tau: float, bins: int = HISTOGRAM_BINS) -> dict[str, list[float]]:
    """Counts over fixed, equal-width bins spanning ``[exp(0), exp(1 / tau)]``.

    Fixed edges (the weights of rewards 0 and 1) make histograms of different
    iterations comparable; a weight outside the range lands in the edge bin.
    """
    low, high = rl_weight(0.0, tau), rl_weight(1.0, tau)
    width = (high - low) / bins
    counts = [0] * bins
    for example in examples:
        counts[min(bins - 1, max(0, int((example.weight - low) / width)))] += 1
    return {"edges": [low + i * width for i in range(bins + 1)], "counts": counts}


def summarize(
    examples: list[Example], iteration: int, tau: float, selection: Selection, skipped: dict[str, int]
) -> dict[str, Any]:
    """Counts of the final training set; examples from earlier iterations count as ``accumulated``."""
    sources = Counter(e.source if e.iteration == iteration else "accumulated" for e in examples)
    turns = Counter(e.turn for e in examples)
    return {
        "iteration": iteration,
        "selection": selection,
        "tau": tau,
        "examples": len(examples),
        "by_source": {s: sources[s] for s in ("rollout", "boost", "accumulated")},
        "by_turn": {str(t): turns[t] for t in sorted(turns)},
        "skipped": skipped,
        "mean_reward": sum(e.reward for e in examples) / len(examples) if examples else None,
        "weight_histogram": weight_histogram(examples, tau),
    }


def format_summary(summary: dict[str, Any]) -> Table:
    """A printable table of :func:`summarize`'s output."""
    table = Table(title=f"curate iter {summary['iteration']} (selection {summary['selection']}, tau {summary['tau']})")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("examples", str(summary["examples"]))
    for group in ("by_source", "by_turn", "skipped"):
        for name, count in summary[group].items():
            table.add_row(f"{group.replace('_', ' ')}: {name}", str(count))
    mean = summary["mean_reward"]
    table.add_row("mean reward", "-" if mean is None else f"{mean:.3f}")
    histogram = summary["weight_histogram"]
    for low, high, count in zip(histogram["edges"], histogram["edges"][1:], histogram["counts"]):
        table.add_row(f"weight [{low:.2f}, {high:.2f})", str(count))
    return table
