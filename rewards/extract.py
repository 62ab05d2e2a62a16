"""Finding the final answer in a model response, shared by the answer graders.

Both the ``numeric`` and the ``math`` grader read answers by the same rules,
so "what did the model answer" means one thing in every report:

* Only the last :data:`TAIL_CHARS` characters are read. Answers come at the
  end, and the cap keeps a 5 MB response from costing seconds of regex and
  parsing (and from being shipped whole into a parser).
* The answer is the last ``\\boxed{...}`` (or ``\\fbox{...}``). Braces are
  matched with an explicit stack in one linear pass, so 10k levels of nesting
  neither recurse nor go quadratic; ``\\{`` and ``\\}`` are LaTeX literals,
  not groups.
* An answer in several parts may be boxed one part at a time, the boxes
  joined by a comma, a semicolon, "and" or "or" (with math delimiters and a
  "y =" between them): ``\\boxed{1}, \\boxed{2}``. :func:`last_boxed_parts`
  reads such a run; the ``math`` grader uses it when the reference has several
  parts (as math-verify itself joins boxes). Any other text between two boxes
  (``\\boxed{7} no wait \\boxed{8}``) leaves the last box the answer.
* A box longer than :data:`MAX_ANSWER_CHARS` is a wrong answer that is not
  parsed at all (``error`` "answer too long"): no real answer is that long,
  and the bound keeps every grader's parsing cheap whatever the box holds.
* Text outside complete ````` code fences is searched before the whole text:
  a box that a code snippet prints is not the model's answer, unless the model
  gave nothing else.

The feedback texts live here too, so both graders word verdicts alike.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from rewards.base import GradeResult

TAIL_CHARS = 16_384
"""How much of the end of a response is read (about 4k tokens of text)."""

MAX_ANSWER_CHARS = 2_000
"""Longer boxed answers are graded wrong without being parsed (:func:`too_long`)."""

SHOWN_CHARS = 200
"""How much of a parsed answer is echoed back in feedback and ``parsed``."""

CORRECT_FEEDBACK = "Your answer is correct."
NO_ANSWER_FEEDBACK = "No final answer was found in your response. Put your final answer in \\boxed{}."
NOT_A_STRING_FEEDBACK = "Your response could not be read as text. Please try again."

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_CODE_FENCE = re.compile(r"```.*?```", re.DOTALL)
_NON_SPACE = re.compile(r"\S")
_MATH_DELIMITERS = re.compile(r"\$|\\[()\[\]]")
_PART_SEPARATOR = re.compile(r"\s*(?:[,;]|(?:,\s*)?\b(?:and|or)\b)\s*(?:\\?[A-Za-z]\w*\s*=\s*)?")

MAX_SEPARATOR_CHARS = 40
"""Boxes further apart than this are never parts of one answer (and the check stays cheap)."""


def tail(text: str, cap: int = TAIL_CHARS) -> str:
    """The last ``cap`` characters of ``text``."""
    return text[-cap:] if len(text) > cap else text


def search_texts(response: str) -> tuple[str, ...]:
    """The texts to search for an answer, in order of preference.

    First the tail with complete code fences removed, then the whole tail
    (only when the two differ).
    """
    text = tail(response)
    prose = _CODE_FENCE.sub("\n", text)
    return (prose,) if prose == text else (prose, text)


class _Box(NamedTuple):
    """Where a closed box is: its command (``\\boxed``) and its braces."""

    command: int
    opening: int
    closing: int


def last_boxed(text: str) -> str | None:
    """The content of the last closed, non-empty ``\\boxed{...}``, or None.

    An unclosed box (the response was cut off inside it) and an empty one (the
    model echoing "put your answer in \\boxed{}") are skipped in favour of the
    box before them.
    """
    boxes = _closed_boxes(text)
    return text[boxes[-1].opening + 1 : boxes[-1].closing] if boxes else None


def last_boxed_parts(text: str) -> list[str]:
    """The contents of the last box and of the boxes before it that join it as parts of one answer.

    ``\\boxed{1}, \\boxed{2}`` gives ["1", "2"]; ``\\boxed{7} no wait
    \\boxed{8}`` gives ["8"]; no box gives [].
    """
    boxes = _closed_boxes(text)
    run = boxes[-1:]
    for box in reversed(boxes[:-1]):
        if not _separates_parts(text[box.closing + 1 : run[-1].command]):  # empty for a box around the next one
            break
        run.append(box)
    return [text[box.opening + 1 : box.closing] for box in reversed(run)]


def _separates_parts(between: str) -> bool:
    """Whether the text between two boxes joins them as parts of one answer (", ", " and y = ", "$, $")."""
    return (
        len(between) <= MAX_SEPARATOR_CHARS
        and _PART_SEPARATOR.fullmatch(_MATH_DELIMITERS.sub(" ", between)) is not None
    )


def _closed_boxes(text: str) -> list[_Box]:
    """Every closed, non-empty box, in the order they open."""
    openings = list(_BOX_OPEN.finditer(text))
    if not openings:
        return []
    closing = _matching_braces(text)
    boxes = []
    for match in openings:
        brace = match.end() - 1
        end = closing.get(brace)
        if end is not None and _NON_SPACE.search(text, brace + 1, end):  # a slice would copy nested boxes quadratically
            boxes.append(_Box(match.start(), brace, end))
    return boxes


def brace_depth(text: str) -> int:
    """The deepest ``{`` nesting in ``text`` (escaped braces do not count)."""
    depth = deepest = 0
    for match in _BRACE_TOKEN.finditer(text):
        token = match.group()
        if token == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif token == "}" and depth:
            depth -= 1
    return deepest


def _matching_braces(text: str) -> dict[int, int]:
    """Map the index of every closed ``{`` to the index of its ``}``."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for match in _BRACE_TOKEN.finditer(text):
        token = match.group()
        if token == "{":
            stack.append(match.start())
        elif token == "}" and stack:
            pairs[stack.pop()] = match.start()
    return pairs


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def verdict(correct: bool, parsed: str, answer_key: str) -> GradeResult:
    """The result for an answer that was found and compared; ``answer_key`` is what votes compare."""
    if correct:
        return GradeResult(score=1.0, correct=True, parsed=parsed, feedback=CORRECT_FEEDBACK, answer_key=answer_key)
    feedback = f"Your answer is incorrect. Your final answer was read as: {shorten(parsed)}"
    return GradeResult(score=0.0, correct=False, parsed=parsed, feedback=feedback, answer_key=answer_key)


def no_answer() -> GradeResult:
    """A response without a final answer: a wrong answer (``parsed`` None), not a grading failure.

    ``error`` stays None because the grader did judge it; the feedback says
    why it scored 0. RISE scores such turns with their own reward
    (``method.unparsed_reward``, -1 in the reference code).
    """
    return GradeResult(score=0.0, correct=False, parsed=None, feedback=NO_ANSWER_FEEDBACK)


def too_long() -> GradeResult:
    """The result for a box over :data:`MAX_ANSWER_CHARS`: zero, and ``error`` says why it was not read."""
    return GradeResult.failure("answer too long")


def not_a_string(response: object) -> GradeResult:
    return GradeResult.failure(f"response is {type(response).__name__}, not str", feedback=NOT_A_STRING_FEEDBACK)
