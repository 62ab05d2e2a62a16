"""Multi-turn revision rollouts: one trajectory per (task, sample index).

At each turn the learner (or, for turns > 1 under distillation, the teacher)
draws that turn's count of answers (``samples_per_turn[turn - 1]``; RISE's
reference schedule is one at turn 1, best-of-N after); each is graded, the best one (highest
score, earliest on ties) becomes the turn's action, and it plus its feedback
form the history of the next turn. Collection stops a trajectory at its first
correct turn (unless told to go on); evaluation never does and never reveals
correctness. With ``rationalize`` (RISE's ``method.rationalize``, STaR's
rationalization) a turn none of whose answers is right draws that many more
with the reference answer as a hint; the first right one is recorded as the
turn's ``rationale``, a training target only: it never enters the history.

Finished trajectories are appended to ``rollouts.partial.jsonl`` one line at
a time; when every trajectory is there the stage writes ``rollouts.jsonl``
atomically in task order. A resumed stage reads the partial file and runs only
the missing trajectories, so nothing is lost and nothing is duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.choices import FeedbackMode
from pipeline.config.settings import TemplatesSection
from pipeline.engine.generation import Completion, GenerationBackend, GenerationError, Message, SamplingParams
from pipeline.rollouts.protocol import Attempt, build_messages, feedback_text
from pipeline.rollouts.records import Candidate, TrajectoryRecord, TurnRecord
from pipeline.run.files import PARTIAL_NAME, ROLLOUTS_NAME
from pipeline.system.atomic import append_jsonl_durably, read_jsonl, write_jsonl_atomic
from pipeline.tasks import Task
from rewards import GradeResult

logger = logging.getLogger(__name__)


# Grades one task's (response, reference) pairs as one batch: a future of their grades in order (rewards.GradingPool.submit).
GradeFn = Callable[[list[tuple[str, Any]]], "Future[list[GradeResult]]"]


@dataclass(frozen=True)
class RolloutSpec:
    """Everything that decides what one trajectory looks like."""

    turns: int
    samples_per_turn: tuple[int, ...]  # one count per turn 1..turns
    trajectories_per_task: int
    feedback: FeedbackMode
    stop_at_success: bool
    history_window: int | None
    sampling: SamplingParams
    templates: TemplatesSection
    seed: int
    adapter: str | None = None
    rationalize: int = 0  # hinted samples for a turn no answer solved (0: none)


def trajectory_key(task_id: str, sample: int) -> str:
    return f"{task_id}#{sample}"


def hinted(messages: list[Message], reference: Any, templates: TemplatesSection) -> list[Message]:
    """``messages`` with the last user message rewritten by the ``hint`` template, which gives the reference."""
    *history, last = messages
    return [*history, {**last, "content": templates.hint.format(message=last["content"], reference=reference)}]


def request_seed(base_seed: int, task_id: str, sample: int, turn: int) -> int:
    """A per-request seed that does not depend on scheduling order (stable across resumes)."""
    digest = hashlib.sha256(f"{base_seed}|{task_id}|{sample}|{turn}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


async def chat_and_grade(
    backend: GenerationBackend,
    messages: list[Message],
    grade: GradeFn,
    reference: Any,
    *,
    n: int,
    params: SamplingParams,
    seed: int,
    adapter: str | None,
) -> tuple[list[Completion], list[GradeResult]]:
    """One turn: ``n`` completions of ``messages``, each graded against ``reference`` (grades in completion order).

    RISE's trajectory turns and ExIt's GRPO groups both generate this way;
    a failed request raises :class:`~pipeline.engine.generation.GenerationError`.
    """
    completions = await backend.chat(messages, n=n, params=params, seed=seed, adapter=adapter)
    grades = await asyncio.wrap_future(grade([(c.text, reference) for c in completions]))
    return completions, grades


class TrajectoryRunner:
    """Runs single trajectories against a learner (and optionally a teacher) backend."""

    def __init__(
        self,
        spec: RolloutSpec,
        learner: GenerationBackend,
        grade: GradeFn,
        teacher: GenerationBackend | None = None,
    ) -> None:
        self.spec = spec
        self.learner = learner
        self.teacher = teacher
        self.grade = grade

    async def run(self, task: Task, sample: int) -> TrajectoryRecord:
        """One trajectory of ``task``: a line of ``rollouts.jsonl``."""
        spec = self.spec
        attempts: list[Attempt] = []
        record = TrajectoryRecord(
            trajectory_key(task.task_id, sample), task.task_id, sample, task.prompt, task.reference, spec.adapter
        )
        for turn in range(1, spec.turns + 1):
            messages = build_messages(task.prompt, attempts, spec.templates, spec.history_window)
            teacher = self.teacher if turn > 1 else None  # a teacher answers the turns after the first
            use_teacher = teacher is not None
            backend = self.learner if teacher is None else teacher
            try:
                completions, grades = await chat_and_grade(
                    backend,
                    messages,
                    self.grade,
                    task.reference,
                    n=spec.samples_per_turn[turn - 1],
                    params=spec.sampling,
                    seed=request_seed(spec.seed, task.task_id, sample, turn),
                    adapter=None if use_teacher else spec.adapter,
                )
            except GenerationError as exc:
                record.error = f"turn {turn}: {exc}"
                break
            best = max(range(len(grades)), key=lambda i: (grades[i].score, -i))
            chosen, grade = completions[best], grades[best]
            record.turns.append(
                TurnRecord(
                    turn=turn,
                    source="teacher" if use_teacher else "learner",
                    messages=messages,
                    candidates=[
                        Candidate(c.text, g, c.completion_tokens, c.finish_reason) for c, g in zip(completions, grades)
                    ],
                    best=best,
                    response=chosen.text,
                    grade=grade,
                    prompt_tokens=chosen.prompt_tokens,
                    completion_tokens=sum(c.completion_tokens for c in completions),
                    finish_reason=chosen.finish_reason,
                )
            )
            if spec.rationalize and not any(g.correct for g in grades):
                record.turns[-1].rationale = await self._rationale(task, messages, sample, turn)
            if grade.correct and record.solved_at_turn is None:
                record.solved_at_turn = turn
                if spec.stop_at_success:
                    break
            if turn < spec.turns:
                text = feedback_text(spec.feedback, grade, spec.templates)
                record.turns[-1].feedback = text
                attempts.append(Attempt(chosen.text, text))
        return record

    async def _rationale(self, task: Task, messages: list[Message], sample: int, turn: int) -> Candidate | None:
        """The first right answer of ``spec.rationalize`` hinted samples from the learner, or None.

        A failed request costs only this target: the trajectory goes on.
        """
        spec = self.spec
        try:
            completions, grades = await chat_and_grade(
                self.learner,
                hinted(messages, task.reference, spec.templates),
                self.grade,
                task.reference,
                n=spec.rationalize,
                params=spec.sampling,
                seed=request_seed(spec.seed, f"{task.task_id}|hint", sample, turn),
                adapter=spec.adapter,
            )
        except GenerationError as exc:
            logger.warning("no rationale for %s turn %d: %s", trajectory_key(task.task_id, sample), turn, exc)
            return None
        right = [(c, g) for c, g in zip(completions, grades) if g.correct]
        if not right:
            return None
        completion, grade = right[0]
        return Candidate(completion.text, grade, completion.completion_tokens, completion.finish_reason)


class RolloutWriter:
    """Durable, duplicate-free storage of finished trajectories for one stage."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.final_path = self.out_dir / ROLLOUTS_NAME
        self.partial_path = self.out_dir / PARTIAL_NAME
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.final_path.exists():
            # Finalized before the stage was recorded as done (e.g. killed in between): keep every record.
            for record in read_jsonl(self.final_path, whole=True):
                self.records.setdefault(record["key"], record)
        if self.partial_path.exists():
            for record in read_jsonl(self.partial_path):
                self.records.setdefault(record["key"], record)
            # Rewrite without a torn tail so appends start on a clean line.
            write_jsonl_atomic(self.partial_path, self.records.values())
        self._handle = open(self.partial_path, "a", encoding="utf-8")

    def has(self, key: str) -> bool:
        return key in self.records

    def append(self, record: TrajectoryRecord) -> None:
        if record.key in self.records:
            return
        row = self.records[record.key] = record.to_dict()
        append_jsonl_durably(self._handle, [row])

    def finalize(self, order: list[str]) -> Path:
        """Write ``rollouts.jsonl`` in the given key order and drop the partial file."""
        missing = [key for key in order if key not in self.records]
        if missing:
            raise RuntimeError(f"cannot finalize rollouts: {len(missing)} trajectories missing, e.g. {missing[0]}")
        self.close()
        write_jsonl_atomic(self.final_path, (self.records[key] for key in order))
        self.partial_path.unlink(missing_ok=True)
        return self.final_path

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
