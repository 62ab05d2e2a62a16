"""RISE training data from rollout records: selection, weights, boost, accumulation.

Pure functions over the rollout records of ``iter_K/rollout/rollouts.jsonl``
(schema in docs/run-directory.md). Each kept turn becomes one weighted SFT
example: the input is the history the model saw before the turn, the target
is the turn's best action, and the weight is ``exp(reward / tau)``
(reward-weighted regression, as in RISE; the reference code uses tau = 0.4).
Nothing here touches the disk, so the stage (``pipeline.methods.rise.curate_stage``) stays a
thin wrapper and the selection rules can be tested on hand-built records.

A turn that gave no answer is a wrong answer (the grader says ``parsed`` None
without an ``error``) and is rewarded ``unparsed_reward`` (RISE: -1, weight
exp(-1 / 0.4) = 0.08), not skipped.

Self-correction constructions (docs/rise.md, "Self-correction data"), each off unless
configured, each a fix for a state RISE's own data never holds:

- **keep targets** (with ``method.stop_at_success: false``): a turn after a
  correct answer and "incorrect" that answers correctly again teaches the
  model not to flip a right answer. Too many freeze it (SCoRe), so
  :func:`cap_keeps` holds them to ``keep_ratio`` x the fix examples.
- **wrong -> right pairs** (:func:`pair_examples`): from the parallel samples
  of one state, history = a wrong sample and its feedback, target = a right
  sample (Welleck et al., 2023): revisions the model cannot yet make itself.
- **informative states only** (:func:`is_informative`): drop targets whose
  state's samples all succeed; those teach answering, not revising.
- **rationalization** (:func:`rationale_examples`, with ``method.rationalize``):
  for a state none of whose samples succeeds, the right answer the model gave
  when the reference was hinted is the target, the hint removed (STaR,
  Zelikman et al., 2022): the states RISE's self-distillation has no target for.
- **refuted answers** (:func:`refuted_examples`, with ``method.refuted_weight``):
  a sample that gives again an answer its trajectory was already told is
  wrong becomes an *unlikelihood* example (Welleck et al., 2019): the loss
  pushes down the probability of that answer's characters in that state.
  Positive targets alone never say "not this one", and a small model copies
  numbers from its context.

Every example records its ``kind``: ``first`` (turn 1), ``fix`` (right after
a wrong answer), ``retry`` (wrong after a wrong answer) or ``keep`` (after a
right answer).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from rich.table import Table

from pipeline.config.choices import FeedbackMode
from pipeline.config.settings import TemplatesSection
from pipeline.methods.rise.choices import Selection
from pipeline.rollouts.protocol import Attempt, build_messages, feedback_text
from pipeline.rollouts.records import Candidate, TrajectoryRecord, TurnRecord
from rewards import GradeResult


class Source(StrEnum):
    """Where an example's target comes from (``source`` in ``train.jsonl``)."""

    ROLLOUT = "rollout"
    BOOST = "boost"
    PAIR = "pair"
    RATIONALE = "rationale"
    REFUTED = "refuted"


class Kind(StrEnum):
    """The state an example's target answers and its outcome (``kind`` in ``train.jsonl``)."""

    FIRST = "first"
    FIX = "fix"
    RETRY = "retry"
    KEEP = "keep"


HISTOGRAM_BINS = 10
UNPARSED_REWARD = -1.0
"""RISE's reward for a turn with no parseable answer (reference code)."""


@dataclass(frozen=True)
class Example:
    """One weighted SFT example; only ``completion`` carries loss.

    With ``refuted_span`` (character offsets into ``completion``) the example
    is an unlikelihood one: its loss is ``-log(1 - p)``, ``p`` the probability
    of those characters' tokens, instead of the completion's NLL.
    """

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
    kind: Kind | None = None  # None: unclassified, left out of the summary's counts
    answered: bool = True  # False: the target gave no parseable answer
    refuted_span: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        span, kind = data.get("refuted_span"), data.get("kind")
        return cls(
            **{
                **data,
                "source": Source(data["source"]),
                "kind": None if kind is None else Kind(kind),
                "refuted_span": None if span is None else tuple(span),
            }
        )


def rl_weight(reward: float, tau: float) -> float:
    """The reward-weighted-regression weight ``exp(reward / tau)``."""
    return math.exp(reward / tau)


def skip_reason(turn: TurnRecord) -> str | None:
    """Why a turn can never be an example, or None.

    An empty response teaches nothing, and a grade with an ``error`` means the
    grader could not judge the response (by the GradeResult contract a wrong
    answer is not an error), so its reward is not evidence either way.
    """
    if not turn.response.strip():
        return "empty_response"
    if turn.grade.error:
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
    if selection == Selection.ALL:
        return [True] * len(rewards)
    if selection == Selection.BETTER:
        return [r > prev for r, prev in zip(rewards, [0.0, *rewards[:-1]])]
    if selection == Selection.BEST:
        return [r >= max(rewards[: i + 1]) for i, r in enumerate(rewards)]
    if selection == Selection.SUCCESS:
        return list(correct)
    raise ValueError(f"unknown selection {selection!r}; expected one of {', '.join(Selection)}")


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


def turn_reward(grade: GradeResult, unparsed_reward: float = UNPARSED_REWARD) -> float:
    """A graded answer's reward: its score, or ``unparsed_reward`` when it gave no answer."""
    return unparsed_reward if not answered(grade) else float(grade.score)


def answered(grade: GradeResult) -> bool:
    """False for a response the grader judged to hold no answer (``parsed`` None, no error)."""
    return grade.parsed is not None or bool(grade.error)


def turn_kind(record: TrajectoryRecord, index: int, target_correct: bool | None = None) -> Kind:
    """The state of the turn at ``index`` (the first, or after a wrong or a right answer) and the outcome
    of its target: the turn's own answer unless ``target_correct`` says otherwise."""
    if index == 0:
        return Kind.FIRST
    if record.turns[index - 1].grade.correct:
        return Kind.KEEP
    correct = record.turns[index].grade.correct if target_correct is None else target_correct
    return Kind.FIX if correct else Kind.RETRY


def is_informative(turn: TurnRecord) -> bool:
    """Some but not all of the state's samples succeed (a single sample: unknown, so kept)."""
    outcomes = [c.grade.correct for c in turn.candidates]
    return len(outcomes) < 2 or 0 < sum(outcomes) < len(outcomes)


def curate(
    records: Iterable[TrajectoryRecord],
    tau: float,
    selection: Selection,
    iteration: int,
    unparsed_reward: float = UNPARSED_REWARD,
    informative_only: bool = False,
) -> list[Example]:
    """One example per kept turn, in record order then turn order.

    A turn is kept when the selection criterion (:func:`selected_turns`, on
    :func:`turn_reward`) keeps it, it has no :func:`skip_reason` and, with
    ``informative_only``, its state :func:`is_informative`. Trajectories that
    ended early (``error`` set) keep the turns they completed.
    """
    examples = []
    for record in records:
        turns = record.turns
        rewards = [turn_reward(t.grade, unparsed_reward) for t in turns]
        keep = selected_turns(rewards, [t.grade.correct for t in turns], selection)
        for index, (turn, kept, reward) in enumerate(zip(turns, keep, rewards)):
            if kept and skip_reason(turn) is None and (is_informative(turn) or not informative_only):
                examples.append(_turn_example(record, index, reward, tau, iteration))
    return examples


def _turn_example(record: TrajectoryRecord, index: int, reward: float, tau: float, iteration: int) -> Example:
    turn = record.turns[index]
    return Example(
        example_id=rollout_example_id(iteration, record.key, turn.turn),
        source=Source.ROLLOUT,
        iteration=iteration,
        task_id=record.task_id,
        key=record.key,
        turn=turn.turn,
        messages=turn.messages,
        completion=turn.response,
        reward=reward,
        weight=rl_weight(reward, tau),
        kind=turn_kind(record, index),
        answered=answered(turn.grade),
    )


def pair_examples(
    records: Iterable[TrajectoryRecord],
    tau: float,
    iteration: int,
    per_state: int,
    feedback: FeedbackMode,
    templates: TemplatesSection,
    history_window: int | None,
) -> list[Example]:
    """Wrong -> right pairs from the parallel samples of each state (at most ``per_state`` per state).

    For a turn whose samples are mixed, the i-th wrong sample (with the
    feedback it would have received) is appended to the turn's history, and
    the (i mod #right)-th distinct right sample is the target: the next turn
    the model should have produced. The history is rebuilt from the
    trajectory's own earlier attempts, so ``history_window`` cuts it as it
    cuts a rollout.
    """
    examples = []
    for record in records:
        attempts: list[Attempt] = []
        for turn in record.turns:
            usable = [c for c in turn.candidates if c.response.strip() and not c.grade.error]
            wrong = [c for c in usable if not c.grade.correct]
            right = list({c.response: c for c in usable if c.grade.correct}.values())
            for i, bad in enumerate(wrong[:per_state] if right else []):
                good = right[i % len(right)]
                shown = Attempt(bad.response, feedback_text(feedback, bad.grade, templates))
                messages = build_messages(record.prompt, [*attempts, shown], templates, history_window)
                examples.append(_pair_example(record, turn.turn, i, messages, good, tau, iteration))
            if turn.feedback is not None:
                attempts.append(Attempt(turn.response, turn.feedback))
    return examples


def _pair_example(
    record: TrajectoryRecord,
    turn: int,
    index: int,
    messages: list[dict[str, str]],
    good: Candidate,
    tau: float,
    iteration: int,
) -> Example:
    reward = float(good.grade.score)
    return Example(
        example_id=f"{iteration}:{record.key}:t{turn}:pair{index}",
        source=Source.PAIR,
        iteration=iteration,
        task_id=record.task_id,
        key=record.key,
        turn=turn + 1,
        messages=messages,
        completion=good.response,
        reward=reward,
        weight=rl_weight(reward, tau),
        kind=Kind.FIX,
    )


def rationale_examples(records: Iterable[TrajectoryRecord], tau: float, iteration: int) -> list[Example]:
    """One example per turn with a ``rationale``: the turn's own history (no hint) -> the hinted right answer."""
    examples = []
    for record in records:
        for index, turn in enumerate(record.turns):
            rationale = turn.rationale
            if rationale is None:
                continue
            reward = float(rationale.grade.score)
            examples.append(
                _state_example(
                    record,
                    turn,
                    iteration,
                    Source.RATIONALE,
                    rationale.response,
                    reward,
                    rl_weight(reward, tau),
                    kind=turn_kind(record, index, target_correct=True),
                )
            )
    return examples


def _state_example(
    record: TrajectoryRecord,
    turn: TurnRecord,
    iteration: int,
    source: Source,
    completion: str,
    reward: float,
    weight: float,
    id_suffix: str = "",
    **fields: Any,
) -> Example:
    """An example for the state ``turn`` saw (its messages) whose target is not the turn's own response."""
    return Example(
        example_id=f"{rollout_example_id(iteration, record.key, turn.turn)}:{source}{id_suffix}",
        source=source,
        iteration=iteration,
        task_id=record.task_id,
        key=record.key,
        turn=turn.turn,
        messages=turn.messages,
        completion=completion,
        reward=reward,
        weight=weight,
        **fields,
    )


def refuted_examples(records: Iterable[TrajectoryRecord], weight: float, iteration: int) -> list[Example]:
    """One unlikelihood example per distinct sample that repeats an answer its trajectory was told is wrong.

    The state is a turn after a wrong answer; the refuted answers are the
    answer keys of the trajectory's earlier wrong turns (what the model saw
    refuted, as :mod:`pipeline.eval.transitions` counts a repeat). Only the
    answer as written carries the loss (its last occurrence in the sample):
    the words around it are what every answer says, and pushing them down
    would teach the model to stop answering, not to stop repeating.
    """
    examples = []
    for record in records:
        refuted: set[str] = set()
        for index, turn in enumerate(record.turns):
            if index and not record.turns[index - 1].grade.correct:
                examples += _refuted_in_state(record, turn, refuted, weight, iteration)
            if not turn.grade.correct and turn.grade.answer_key is not None:
                refuted.add(turn.grade.answer_key)
    return examples


def _refuted_in_state(
    record: TrajectoryRecord, turn: TurnRecord, refuted: set[str], weight: float, iteration: int
) -> list[Example]:
    repeats = {
        c.response: c
        for c in turn.candidates
        if not c.grade.correct and c.grade.answer_key in refuted and not c.grade.error
    }
    examples = []
    for index, candidate in enumerate(repeats.values()):
        parsed = candidate.grade.parsed
        if not parsed or (start := candidate.response.rfind(parsed)) < 0:
            continue  # the answer is not written as parsed (a reformatted box): nothing to mark
        examples.append(
            _state_example(
                record,
                turn,
                iteration,
                Source.REFUTED,
                candidate.response,
                float(candidate.grade.score),
                weight,
                id_suffix=str(index),
                refuted_span=(start, start + len(parsed)),
            )
        )
    return examples


def cap_keeps(examples: list[Example], ratio: float) -> list[Example]:
    """At most ``ratio`` x (fix examples) keep examples; which ones stay is fixed by a hash of their ids.

    SCoRe (Kumar et al., 2024): correct -> correct examples cut flips of
    right answers, but a set dominated by them teaches the model never to
    change its answer.
    """
    keeps = [e for e in examples if e.kind == Kind.KEEP]
    allowed = int(ratio * sum(e.kind == Kind.FIX for e in examples))
    kept = set(sorted((e.example_id for e in keeps), key=lambda i: hashlib.sha256(i.encode()).digest())[:allowed])
    return [e for e in examples if e.kind != Kind.KEEP or e.example_id in kept]


def count_skips(records: Iterable[TrajectoryRecord]) -> dict[str, int]:
    """How many turns (selected or not) each :func:`skip_reason` removed."""
    reasons = Counter(skip_reason(t) for r in records for t in r.turns)
    return {reason: reasons[reason] for reason in ("empty_response", "grading_error")}


def boost_examples(records: Iterable[TrajectoryRecord], tau: float, iteration: int) -> list[Example]:
    """RISE warm-up data: every correct first-turn candidate, not only the best.

    Identical responses to the same task (across its candidates and samples)
    are kept once, so a task the model answers the same way N times does not
    get N times the weight.
    """
    examples: dict[str, Example] = {}
    for record in records:
        if not record.turns:
            continue
        first = record.turns[0]
        for candidate in first.candidates:
            grade, response = candidate.grade, candidate.response
            if not grade.correct or grade.error or not response.strip():
                continue
            example_id = boost_example_id(iteration, record.task_id, response)
            examples.setdefault(example_id, _boost_example(example_id, record, first, candidate, tau, iteration))
    return list(examples.values())


def _boost_example(
    example_id: str, record: TrajectoryRecord, turn: TurnRecord, candidate: Candidate, tau: float, iteration: int
) -> Example:
    reward = float(candidate.grade.score)
    return Example(
        example_id=example_id,
        source=Source.BOOST,
        iteration=iteration,
        task_id=record.task_id,
        key=record.key,
        turn=1,
        messages=turn.messages,
        completion=candidate.response,
        reward=reward,
        weight=rl_weight(reward, tau),
        kind=Kind.FIRST,
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


def weight_histogram(
    examples: list[Example], tau: float, bins: int = HISTOGRAM_BINS
) -> dict[str, list[float] | list[int]]:
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
    kinds = Counter(e.kind for e in examples if e.kind is not None)
    return {
        "iteration": iteration,
        "selection": selection,
        "tau": tau,
        "examples": len(examples),
        "by_source": {s: sources[s] for s in (*Source, "accumulated")},
        "by_turn": {str(t): turns[t] for t in sorted(turns)},
        "by_kind": {k: kinds[k] for k in Kind},
        "unparsed": sum(not e.answered for e in examples),
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
    for group in ("by_source", "by_turn", "by_kind", "skipped"):
        for name, count in summary[group].items():
            table.add_row(f"{group.replace('_', ' ')}: {name}", str(count))
    table.add_row("targets without an answer", str(summary["unparsed"]))
    mean = summary["mean_reward"]
    table.add_row("mean reward", "-" if mean is None else f"{mean:.3f}")
    histogram = summary["weight_histogram"]
    for low, high, count in zip(histogram["edges"], histogram["edges"][1:], histogram["counts"]):
        table.add_row(f"weight [{low:.2f}, {high:.2f})", str(count))
    return table
