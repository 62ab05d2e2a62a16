"""The multi-turn revision protocol: what the model sees at each turn.

Turn 1 sees the task prompt. Turn t > 1 sees the prompt, then each earlier
attempt as an assistant message followed by the feedback on it as a user
message. A history window keeps only the last W attempts, so evaluation can
run more turns than training ever saw without the context growing unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.choices import FeedbackMode
from pipeline.config.settings import TemplatesSection
from pipeline.engine.generation import Message
from rewards import GradeResult


@dataclass(frozen=True)
class Attempt:
    response: str
    feedback: str


def build_messages(
    prompt: str, attempts: list[Attempt], templates: TemplatesSection, history_window: int | None = None
) -> list[Message]:
    messages: list[Message] = []
    if templates.system:
        messages.append({"role": "system", "content": templates.system})
    messages.append({"role": "user", "content": prompt})
    kept = attempts[-history_window:] if history_window else attempts
    for attempt in kept:
        messages.append({"role": "assistant", "content": attempt.response})
        messages.append({"role": "user", "content": attempt.feedback})
    return messages


def feedback_text(mode: FeedbackMode, grade: GradeResult, templates: TemplatesSection) -> str:
    """The user message after an attempt.

    Only called after attempts that will be followed by another turn. With
    ``binary`` feedback that is "incorrect" whatever the truth: during
    collection the trajectory stops at the first success, and evaluation must
    never tell the model it was right (no oracle). ``improve`` is ExIt's
    self-improvement step: the model is asked to improve its current response.
    """
    if mode == FeedbackMode.BINARY:
        return templates.binary_feedback
    if mode == FeedbackMode.GRADER:
        return templates.grader_feedback.format(feedback=grade.feedback)
    if mode == FeedbackMode.IMPROVE:
        return templates.improve
    return templates.no_feedback
