"""The revision protocol: what the model sees at each turn, for each feedback mode."""

from __future__ import annotations

from pipeline.config.settings import TemplatesSection
from pipeline.rollouts.protocol import Attempt, build_messages, feedback_text
from rewards import GradeResult

WRONG = GradeResult(score=0.0, correct=False, parsed="5", feedback="Expected a different number; you gave 5.")
RIGHT = GradeResult(score=1.0, correct=True, parsed="7", feedback="Correct.")


def test_first_turn_is_the_prompt_alone() -> None:
    assert build_messages("What is 3+4?", [], TemplatesSection()) == [{"role": "user", "content": "What is 3+4?"}]


def test_later_turns_interleave_attempts_and_feedback_after_an_optional_system_prompt() -> None:
    templates = TemplatesSection(system="Be brief.")
    attempts = [Attempt("5", "Try again."), Attempt("6", "Try again.")]
    assert build_messages("Q", attempts, templates) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "Try again."},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "Try again."},
    ]


def test_history_window_keeps_the_prompt_and_the_last_attempts() -> None:
    attempts = [Attempt(str(i), f"fb{i}") for i in range(5)]
    messages = build_messages("Q", attempts, TemplatesSection(), history_window=2)
    assert [m["content"] for m in messages] == ["Q", "3", "fb3", "4", "fb4"]


def test_binary_feedback_never_reveals_correctness() -> None:
    templates = TemplatesSection()
    assert feedback_text("binary", WRONG, templates) == feedback_text("binary", RIGHT, templates)
    assert feedback_text("binary", RIGHT, templates) == "Your answer is incorrect. Please try again."


def test_grader_feedback_carries_the_graders_text() -> None:
    text = feedback_text("grader", WRONG, TemplatesSection())
    assert "you gave 5" in text


def test_no_feedback_asks_for_a_self_review() -> None:
    templates = TemplatesSection(no_feedback="Review and improve.")
    assert feedback_text("none", WRONG, templates) == feedback_text("none", RIGHT, templates) == "Review and improve."
