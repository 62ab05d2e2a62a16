"""Eval rollout records built by hand: one turn per answer, graded right iff it is the reference."""

from __future__ import annotations

from pipeline.rollouts.records import Candidate, TrajectoryRecord, TurnRecord
from rewards import GradeResult, get_grader

REFERENCE = "7"
Answers = list[str | None]


def make_record(task_id: str, sample: int, answers: Answers, error: str | None = None) -> TrajectoryRecord:
    """A rollout record as pipeline.rollouts.trajectory writes it, one turn per parsed answer (correct iff == REFERENCE)."""
    record = TrajectoryRecord(f"{task_id}#{sample}", task_id, sample, "What is 3 + 4?", REFERENCE, None, error=error)
    for turn, parsed in enumerate(answers, start=1):
        correct = parsed == REFERENCE
        grade = GradeResult(score=float(correct), correct=correct, parsed=parsed, feedback="", error=None)
        response = f"The answer is {parsed}."
        record.turns.append(
            TurnRecord(
                turn=turn,
                source="learner",
                messages=[{"role": "user", "content": "What is 3 + 4?"}],
                candidates=[Candidate(response, grade, completion_tokens=5, finish_reason="stop")],
                best=0,
                response=response,
                grade=grade,
                prompt_tokens=10,
                completion_tokens=5,
                finish_reason="stop",
                feedback=None if turn == len(answers) else "Your answer is incorrect.",
            )
        )
    record.solved_at_turn = next((t.turn for t in record.turns if t.grade.correct), None)
    return record


def graded_record(
    task_id: str, sample: int, responses: list[str], grader_name: str, reference: str
) -> TrajectoryRecord:
    """A record whose turns carry what a real grader returned for each response."""
    record = make_record(task_id, sample, ["x"] * len(responses))
    grader = get_grader(grader_name)
    for turn, response in zip(record.turns, responses):
        grade = grader.grade(response, reference)
        turn.response, turn.grade = response, grade
        turn.candidates = [Candidate(response, grade, completion_tokens=5, finish_reason="stop")]
    return record


def parallel_record(task_id: str, answers: Answers, error: str | None = None) -> TrajectoryRecord:
    """A parallel-baseline record: one turn whose candidates are ``answers`` (fewer than T when its request failed)."""
    record = make_record(task_id, 0, answers, error=error)
    first = record.turns[0]
    first.candidates = [turn.candidates[0] for turn in record.turns]
    record.turns = [first]
    return record
