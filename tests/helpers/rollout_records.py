"""Rollout records built by hand in the schema the rollout writes (:class:`TrajectoryRecord`), for curation."""

from __future__ import annotations

from pipeline.rollouts.records import Candidate, TrajectoryRecord, TurnRecord
from rewards import GradeResult


def grade(score: float, error: str | None = None) -> GradeResult:
    return GradeResult(score=score, correct=score == 1.0, parsed=str(score), feedback="fb", error=error)


def candidate(response: str, score: float, error: str | None = None) -> Candidate:
    return Candidate(response, grade(score, error), completion_tokens=5, finish_reason="stop")


def make_record(
    task_id: str,
    rewards: list[float],
    sample: int = 0,
    extra: dict[int, list[Candidate]] | None = None,
    error: str | None = None,
    rationales: dict[int, Candidate] | None = None,
) -> TrajectoryRecord:
    """A rollout record in the schema ``TrajectoryRunner.run`` writes (:class:`TrajectoryRecord`).

    Turn t's best response is ``"{task_id} answer t"`` with reward
    ``rewards[t-1]``; ``extra[t]`` lists further (non-best) candidates of turn t, ``rationales[t]``
    is turn t's hinted right answer.
    """
    record = TrajectoryRecord(f"{task_id}#{sample}", task_id, sample, f"solve {task_id}", "1", None, error=error)
    messages = [{"role": "user", "content": f"solve {task_id}"}]
    for number, reward in enumerate(rewards, start=1):
        best = candidate(f"{task_id} answer {number}", reward)
        candidates = [best, *(extra or {}).get(number, [])]
        feedback = None if number == len(rewards) else f"feedback {number}"
        record.turns.append(
            TurnRecord(
                turn=number,
                source="learner",
                messages=list(messages),
                candidates=candidates,
                best=0,
                response=best.response,
                grade=best.grade,
                prompt_tokens=10,
                completion_tokens=5 * len(candidates),
                finish_reason="stop",
                feedback=feedback,
                rationale=(rationales or {}).get(number),
            )
        )
        messages += [
            {"role": "assistant", "content": best.response},
            {"role": "user", "content": f"feedback {number}"},
        ]
    record.solved_at_turn = next((i for i, r in enumerate(rewards, start=1) if r == 1.0), None)
    return record


def records(count: int = 43) -> list[TrajectoryRecord]:
    """``count`` rollout records, each solved at turn 2 (so each gives two examples with selection 'all')."""
    return [make_record(f"t{i}", [0.0, 1.0]) for i in range(count)]
