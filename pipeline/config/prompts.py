"""Default prompt templates of the multi-turn revision protocol.

RISE-style turns retry after feedback; ExIt-style steps ask for an improvement
of the current response, or (exploration) for a significantly different one.
Every template can be replaced from the ``rollout.templates`` config section.
``{feedback}`` in ``grader_feedback`` receives the grader's own text;
``hint`` (RISE's ``method.rationalize``) rewrites the last user message of a
state no sample solved, ``{message}`` being that message and ``{reference}``
the task's reference answer.
"""

from typing import TypedDict


class Templates(TypedDict):
    """The templates by name; only ``system`` may be absent (None)."""

    system: str | None
    binary_feedback: str
    grader_feedback: str
    no_feedback: str
    hint: str
    improve: str
    diverge: str


DEFAULT_TEMPLATES: Templates = {
    "system": None,
    "binary_feedback": "Your answer is incorrect. Please try again.",
    "grader_feedback": "Your answer is incorrect.\n{feedback}\nPlease try again.",
    "no_feedback": "Review your previous answer. If you find a mistake, correct it; then give your final answer.",
    "hint": "{message}\n\n(Hint: the correct answer is {reference}.)",
    "improve": "Improve your current response to this request.",
    "diverge": (
        "Improve your current response to this request by taking a SIGNIFICANTLY different approach from the one above."
    ),
}
