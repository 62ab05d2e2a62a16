"""Turning raw records (JSONL lines, dataset rows) into tasks.

The ``jsonl`` and ``hf`` sources differ only in where their rows come from;
field mapping, answer extraction, prompt wrapping, task ids, duplicate and
bad-row handling live here once so that both behave the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.tasks.base import Task
from rewards.extract import last_boxed

log = logging.getLogger(__name__)

# Short on purpose: the default model is a 135M model and every prompt token
# is paid for in every turn of every rollout.
DEFAULT_PROMPT_TEMPLATE = "{question}\nBe concise. Put the final answer in \\boxed{}."
QUESTION_SLOT = "{question}"


def wrap_prompt(question: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """Put ``question`` into ``template`` at ``{question}``.

    Plain substitution rather than ``str.format``: templates and questions are
    full of LaTeX braces (``\\boxed{}``) that ``format`` would try to parse.
    """
    check_template(template)
    return template.replace(QUESTION_SLOT, question)


def check_template(template: str) -> None:
    """Fail at configuration time, not mid-run, on a template without a slot."""
    if QUESTION_SLOT not in template:
        raise ValueError(f"prompt_template must contain {QUESTION_SLOT!r}; got {template!r}")


def boxed_answer(text: str) -> str | None:
    """The final answer of a worked MATH-style solution: its last box.

    Uses the graders' own :func:`rewards.extract.last_boxed`, so references
    and model answers are read by one rule, plus the brace-less ``\\boxed 5``
    that some MATH solutions use (Hendrycks' ``remove_boxed`` handles it too).
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    bare = re.findall(r"\\boxed ([^\s$]+)", text)
    return bare[-1] if bare else None


def gsm8k_answer(text: str) -> str | None:
    """GSM8K puts the final number after ``#### ``; thousands commas removed."""
    _, sep, tail = text.rpartition("####")
    answer = tail.strip().replace(",", "")
    return answer if sep and answer else None


ANSWER_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": boxed_answer,
    "gsm8k": gsm8k_answer,
}


class BadRowError(ValueError):
    """A row that cannot become a task; the message names where and why."""


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 text file with their 1-based numbers; a binary file is a BadRowError naming it."""
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line
    except UnicodeDecodeError as exc:
        # Decoding runs ahead by chunks, so the bad byte is somewhere after the lines already read.
        raise BadRowError(f"{path}: not UTF-8 text, is it a JSONL file? ({exc.reason} after line {number})") from None


def stable_id(prefix: str, prompt: str, reference: Any) -> str:
    """A task id from the row's content: same content, same id, in any process.

    Content rather than position, so that inserting, reordering or slicing
    rows does not renumber the others, and the same problem in two files gets
    the same id (which makes train/eval leaks visible).
    """
    payload = json.dumps([prompt, reference], sort_keys=True, ensure_ascii=False, default=str)
    return f"{prefix}-{hashlib.sha256(payload.encode('utf-8')).hexdigest()[:16]}"


@dataclass(frozen=True)
class RowMapping:
    """How one source's rows map onto :class:`Task` fields.

    ``answer_extractor`` names an entry of :data:`ANSWER_EXTRACTORS` applied
    to the answer field (e.g. the final number of a worked GSM8K solution).
    Row fields other than prompt, answer and id that hold JSON scalars are
    kept in the task's metadata (MATH's ``level`` and ``type``, say).
    """

    prompt_field: str = "prompt"
    answer_field: str = "answer"
    id_field: str | None = None
    answer_extractor: str | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    id_prefix: str = "task"

    def __post_init__(self) -> None:
        check_template(self.prompt_template)
        if self.answer_extractor is not None and self.answer_extractor not in ANSWER_EXTRACTORS:
            known = ", ".join(sorted(ANSWER_EXTRACTORS))
            raise ValueError(f"unknown answer_extractor {self.answer_extractor!r}; known: {known}")

    def to_task(self, row: Any, metadata: Mapping[str, Any]) -> Task:
        """Build the task for one row, or raise :class:`BadRowError` saying what is wrong."""
        if not isinstance(row, Mapping):
            raise BadRowError(f"expected an object, got {type(row).__name__}")
        question = row.get(self.prompt_field)
        if not isinstance(question, str) or not question.strip():
            raise BadRowError(f"field {self.prompt_field!r} is missing or not a non-empty string")
        reference = self._reference(row)
        if self.id_field is None:
            task_id = stable_id(self.id_prefix, question, reference)
        elif row.get(self.id_field) in (None, ""):
            raise BadRowError(f"id field {self.id_field!r} is missing or empty")
        else:
            task_id = str(row[self.id_field])
        used = {self.prompt_field, self.answer_field, self.id_field}
        extra = {k: v for k, v in row.items() if k not in used and _is_json_scalar(v)}
        return Task(task_id, wrap_prompt(question, self.prompt_template), reference, {**extra, **metadata})

    def _reference(self, row: Mapping[str, Any]) -> Any:
        value = row.get(self.answer_field)
        if value is None or isinstance(value, bool):
            raise BadRowError(f"field {self.answer_field!r} is missing or not an answer")
        if isinstance(value, (int, float)):
            value = str(value)  # graders compare strings for numeric answers
        if self.answer_extractor is None:
            return _checked_answer(self.answer_field, value)
        if not isinstance(value, str):
            raise BadRowError(f"answer_extractor {self.answer_extractor!r} needs a string field {self.answer_field!r}")
        extracted = ANSWER_EXTRACTORS[self.answer_extractor](value)
        if extracted is None:
            raise BadRowError(
                f"answer_extractor {self.answer_extractor!r} found no answer in field {self.answer_field!r}"
            )
        return _checked_answer(self.answer_field, extracted)


# How a non-finite number reads as text (Python's str(), JSON's and pandas' spellings, in lower case).
_NON_FINITE = {"nan", "inf", "infinity"}


def _checked_answer(field: str, answer: Any) -> Any:
    """``answer`` when it can be graded: a text answer must hold something, and not the NaN or infinity that a
    JSON, pandas or CSV writer makes of a missing number. Against either the numeric grader grades every
    response wrong ("reference is not a number"), so the task would count as failed whatever the model says.
    Structured answers (a code task's tests) are the grader's to judge."""
    if not isinstance(answer, str):
        return answer
    if not answer.strip():
        raise BadRowError(f"field {field!r} is an empty answer")
    if answer.strip().lower().lstrip("+-") in _NON_FINITE:
        raise BadRowError(f"field {field!r} is {answer.strip()!r}, not a finite number")
    return answer


@dataclass
class TaskCollector:
    """Accumulates tasks from rows, applying the bad-row and duplicate policy.

    With ``skip_bad_rows`` False (the default) the first bad row raises
    :class:`BadRowError`, so a broken file fails before any compute is spent;
    with True it is logged as a warning and skipped. A row whose content
    repeats an earlier one (same id, same prompt and reference) is dropped
    with a warning: it is the same task. The same explicit id on different
    content is a bad row, since ids key every record of a run.
    """

    mapping: RowMapping
    skip_bad_rows: bool = False
    limit: int | None = None
    tasks: list[Task] = field(default_factory=list, init=False)
    _seen: dict[str, tuple[str, Task]] = field(default_factory=dict, init=False, repr=False)

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.tasks) >= self.limit

    def reject(self, where: str, reason: str) -> None:
        message = f"{where}: {reason}"
        if not self.skip_bad_rows:
            raise BadRowError(message + " (set skip_bad_rows: true to skip such rows)")
        log.warning("skipping bad row: %s", message)

    def add(self, where: str, row: Any, metadata: Mapping[str, Any]) -> None:
        """Convert ``row`` (found at ``where``, e.g. ``file.jsonl:12``) and keep it."""
        try:
            task = self.mapping.to_task(row, metadata)
        except BadRowError as exc:
            self.reject(where, str(exc))
            return
        if task.task_id not in self._seen:
            self._seen[task.task_id] = (where, task)
            self.tasks.append(task)
            return
        first, earlier = self._seen[task.task_id]
        if (earlier.prompt, earlier.reference) == (task.prompt, task.reference):
            log.warning("dropping duplicate of %s at %s (task %s)", first, where, task.task_id)
        else:
            self.reject(where, f"task id {task.task_id!r} already used by {first} for a different task")


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
