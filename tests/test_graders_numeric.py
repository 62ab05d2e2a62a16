"""The ``numeric`` grader: what counts as the answer, and how it is compared."""

from __future__ import annotations

import pytest

import rewards
from rewards import GradeResult, get_grader
from rewards.extract import MAX_ANSWER_CHARS

FIVE_MB = "Let me think step by step. " * 200_000
DEEP = 10_000

# (id, response, reference, correct, parsed); correct=None means a failure
# result (score 0 with an error), and then ``parsed`` is the expected error.
CASES = [
    ("boxed", "Adding them gives \\boxed{42}.", "42", True, "42"),
    ("plain-last-number", "3 apples and 4 more make 7. The answer is 7.", "7", True, "7"),
    ("thousands-boxed", "\\boxed{1,234}", "1234", True, "1234"),
    ("dollars-and-cents", "She pays $1,234.00 in total.", "1234", True, "1234"),
    ("latex-dollar", "\\boxed{\\$18}", "18", True, "18"),
    ("trailing-.0", "\\boxed{42.0}", "42", True, "42"),
    ("trailing-.00", "\\boxed{42.00}", "42", True, "42"),
    ("leading-zeros", "\\boxed{007}", "7", True, "7"),
    ("unicode-minus", "The change is \\boxed{\u22127}.", "-7", True, "-7"),
    ("unicode-minus-plain", "so the temperature is \u22123", "-3", True, "-3"),
    ("leading-plus", "\\boxed{+5}", "5", True, "5"),
    ("percent-latex", "\\boxed{50\\%}", "50", True, "50"),
    ("percent-plain", "so 75% of them pass", "75", True, "75"),
    ("spaces-in-box", "\\boxed{  12  }", "12", True, "12"),
    ("decimal", "\\boxed{3.5}", "3.5", True, "3.5"),
    ("decimal-trailing-zero", "\\boxed{3.50}", "3.5", True, "3.5"),
    ("latex-fraction", "\\boxed{\\frac{7}{2}}", "3.5", True, "7/2"),
    ("dfrac-within-tolerance", "\\boxed{\\dfrac{1}{3}}", "0.3333333", True, "1/3"),
    ("negative-fraction", "\\boxed{-\\frac{1}{2}}", "-0.5", True, "-1/2"),
    ("slash-fraction", "\\boxed{1/4}", "0.25", True, "1/4"),
    ("equation-in-box", "\\boxed{x = 7}", "7", True, "7"),
    ("units-in-box", "\\boxed{18 \\text{ dollars}}", "18", True, "18"),
    ("thin-space-thousands", "\\boxed{1\\,000}", "1000", True, "1000"),
    ("braced-comma-thousands", "\\boxed{1{,}000}", "1000", True, "1000"),
    ("list-takes-last", "The values are 1,2,3,4", "4", True, "4"),
    ("within-rel-tol", "It is 3.0000001", "3.0", True, "3.0000001"),
    ("integer-reference-is-exact", "It is 3.0000001", "3", False, "3.0000001"),
    ("outside-rel-tol", "It is 3.001", "3", False, "3.001"),
    ("wrong", "\\boxed{41}", "42", False, "41"),
    ("minus-needs-to-touch", "the answer is 10 - 5", "-5", False, "5"),
    ("negative-zero", "\\boxed{-0}", "0", True, "0"),
    ("leading-dot-reference", "0.5", ".5", True, "0.5"),
    ("several-boxed-last-wins", "First \\boxed{3}, but actually \\boxed{5}", "5", True, "5"),
    ("several-boxed-last-wrong", "First \\boxed{5}, then I changed it to \\boxed{3}", "5", False, "3"),
    ("fbox", "\\fbox{9}", "9", True, "9"),
    ("box-beats-later-number", "\\boxed{9}. Check: 3 * 3 = 9, plus 1 is 10", "9", True, "9"),
    ("nested-boxes", "\\boxed{\\boxed{4}}", "4", True, "4"),
    ("unclosed-last-box", "\\boxed{5} and then \\boxed{6", "5", True, "5"),
    ("empty-box-skipped", "Put it in \\boxed{}. The answer is 6", "6", True, "6"),
    ("box-in-code-ignored", "```python\nprint('\\\\boxed{5}')\n```\nSo the answer is 12.", "12", True, "12"),
    ("box-only-in-code", "```latex\n\\boxed{8}\n```", "8", True, "8"),
    ("non-number-box", "\\boxed{A}", "3", False, "A"),
    ("too-many-digits-box", "\\boxed{" + "9" * 250 + "}", "9", False, "9" * 197 + "..."),
    ("gsm8k-reference", "\\boxed{1234}", "Half of 2468 is 1234.\n#### 1,234", True, "1234"),
    ("int-reference", "\\boxed{7}", 7, True, "7"),
    ("float-reference", "\\boxed{2.5}", 2.5, True, "2.5"),
    ("huge-answer-at-end", FIVE_MB + "\\boxed{7}", "7", True, "7"),
    ("huge-answer-at-start", "\\boxed{7}" + "x" * 5_000_000, "7", False, None),  # no answer: wrong, not an error
    ("deep-braces-in-box", "\\boxed{" + "{" * 900 + "3" + "}" * 900 + "}", "3", True, "3"),  # within MAX_ANSWER_CHARS
    ("deep-boxes", "\\boxed{" * DEEP + "3" + "}" * DEEP, "3", True, "3"),
    ("unbalanced-braces", "{" * DEEP + " the answer is 4", "4", True, "4"),
    ("empty", "", "1", False, None),  # no answer: wrong, not an error
    ("whitespace", "  \n\t ", "1", False, None),  # no answer: wrong, not an error
    ("no-number", "I am not sure.", "1", False, None),  # no answer: wrong, not an error
    ("garbage", "\x00\ufffd}{\\boxed{ }}{ \\frac{", "1", False, None),  # no answer: wrong, not an error
    ("none-response", None, "1", None, "response is NoneType, not str"),
    ("int-response", 42, "42", None, "response is int, not str"),
    ("bytes-response", b"\\boxed{1}", "1", None, "response is bytes, not str"),
    ("bad-reference", "\\boxed{1}", "one", None, "reference is not a number: 'one'"),
    ("bool-reference", "\\boxed{1}", True, None, "reference is not a number: True"),
]


@pytest.mark.parametrize(
    ("response", "reference", "correct", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_numeric_table(response: object, reference: object, correct: bool | None, expected: str) -> None:
    result = get_grader("numeric").grade(response, reference)
    assert isinstance(result, GradeResult)
    if correct is None:
        assert (result.score, result.correct, result.parsed, result.error) == (0.0, False, None, expected)
    else:
        assert (result.correct, result.score, result.parsed, result.error) == (correct, float(correct), expected, None)


def test_feedback_texts() -> None:
    grader = get_grader("numeric")
    assert grader.grade("\\boxed{42}", "42").feedback == "Your answer is correct."
    wrong = grader.grade("\\boxed{41}", "42").feedback
    assert wrong.startswith("Your answer is incorrect.") and "41" in wrong and "42" not in wrong
    assert "\\boxed{}" in grader.grade("no idea", "42").feedback


def test_require_boxed_ignores_bare_numbers() -> None:
    grader = get_grader("numeric", require_boxed=True)
    unboxed = grader.grade("The answer is 5", "5")
    assert (unboxed.correct, unboxed.parsed, unboxed.error) == (False, None, None)
    assert grader.grade("I think \\boxed{5}", "5").correct
    marked = grader.grade("#### 5", "5")
    assert (marked.correct, marked.parsed) == (False, None)


# Issue 16: an expression in the box is evaluated or is not a number, never its
# last number; integer references compare exactly; float references parse in
# every spelling Python and JSON give them.
ISSUE_CASES = [
    ("power-is-evaluated", "\\boxed{2^3}", "3", False, "8"),
    ("power-right", "\\boxed{2^3}", "8", True, "8"),
    ("factorial-is-not-a-number", "\\boxed{5!}", "5", False, "5!"),
    ("scientific-is-its-value", "\\boxed{1e3}", "1", False, "1000"),
    ("scientific-right", "\\boxed{1e3}", "1000", True, "1000"),
    ("hedged-answer", "\\boxed{42 (or 43)}", "43", False, "42 (or 43)"),
    ("arithmetic-in-box", "\\boxed{84/2 + 3 \\times 2}", "48", True, "48"),
    ("latex-arithmetic", "\\boxed{\\frac{3}{4} \\cdot 8}", "6", True, "6"),
    ("division-by-zero-box", "\\boxed{1/(2-2)}", "1", False, "1/(2-2)"),
    ("huge-power-not-evaluated", "\\boxed{9^{9^{9}}}", "9", False, "9^{9^{9}}"),
    ("integer-exact-million", "\\boxed{1000001}", "1000000", False, "1000001"),
    ("integer-exact-large", "\\boxed{123456900}", "123456789", False, "123456900"),
    ("float-reference-exponent", "\\boxed{0.00001}", "1e-05", True, "0.00001"),
    ("float-reference-big", "\\boxed{10000000000000000}", 1e16, True, "10000000000000000"),
    ("float-reference-json", "\\boxed{1.5e-7}", 1.5e-07, True, "0.00000015"),
]


@pytest.mark.parametrize(
    ("response", "reference", "correct", "parsed"), [c[1:] for c in ISSUE_CASES], ids=[c[0] for c in ISSUE_CASES]
)
def test_boxed_expressions_and_exact_references(response: str, reference: object, correct: bool, parsed: str) -> None:
    result = get_grader("numeric").grade(response, reference)
    assert (result.correct, result.parsed, result.error) == (correct, parsed, None)


# Issue 35: answer formats that other projects' GSM8K graders accept or reject.
# A number after "^" is an exponent and one with an ordinal suffix a position,
# neither an answer; "#### 42" marks the final answer as in a reference; an
# integer, spaces and a proper fraction are one mixed number. The cases marked
# "kept" pass today and pin what must not change.
FORMAT_CASES = [
    ("exponent-after-caret", "The area is 12 m^2.", "12", True, "12"),
    ("exponent-in-braces", "So the floor covers 12 m^{2}", "12", True, "12"),
    ("negative-exponent", "The acceleration is 9.8 m s^{-2}", "9.8", True, "9.8"),
    ("exponent-after-unit-text", "The area is 12 \\text{ cm}^2.", "12", True, "12"),
    ("unit-power-in-box", "\\boxed{12 \\text{ m}^2}", "12", True, "12"),
    ("unit-power-word-in-box", "\\boxed{144 ft^2}", "144", True, "144"),
    ("power-of-ten-is-not-its-exponent", "That is 10^3", "3", False, "10"),
    ("ordinal-before-answer", "The 3rd option gives 7, on the 2nd try", "7", True, "7"),
    ("ordinal-21st", "He sold 40 cakes on the 21st", "40", True, "40"),
    ("ordinal-1st", "It costs $5 on the 1st", "5", True, "5"),
    ("latex-ordinal", "The answer is 7, the 4^{th} value", "7", True, "7"),
    ("ordinal-alone-is-no-answer", "She finished 3rd.", "3", False, None),
    ("number-glued-to-unit", "She ran 5km", "5", True, "5"),  # kept
    ("mark-then-next-question", "9 * 2 = 18\n#### 18\n\nQuestion: Tom has 3 apples", "18", True, "18"),
    ("mark-with-unit", "#### 42 dollars.\nNext, 5 more", "42", True, "42"),
    ("mark-in-bold", "#### **1,234**\nThat took 3 steps", "1234", True, "1234"),
    ("last-mark-wins", "#### 5\nWait, I made an error.\n#### 7\n(2 checks)", "7", True, "7"),
    ("mark-on-next-line", "####\n42\nThat is 6 times 7", "42", True, "42"),
    ("heading-is-not-a-mark", "#### Step 3: Total\nShe pays 5 + 7 = 12", "12", True, "12"),  # kept
    ("numbered-heading-is-not-a-mark", "#### 2. Total\nShe pays 12 in all", "12", True, "12"),  # kept
    ("box-beats-mark", "\\boxed{41}\n#### 42\nsee 3", "41", True, "41"),  # kept
    ("mixed-number", "She needs 1 1/2 cups of flour", "1.5", True, "1 1/2"),
    ("mixed-number-with-unit", "That makes 2 3/4 cups", "2.75", True, "2 3/4"),
    ("negative-mixed-number", "The change is -1 1/2 degrees", "-1.5", True, "-1 1/2"),
    ("mixed-number-latex", "\\boxed{2\\frac{3}{4}}", "2.75", True, "2 3/4"),
    ("mixed-number-in-box", "\\boxed{1 1/2}", "1.5", True, "1 1/2"),
    ("mixed-number-after-mark", "#### 12 1/2\nNext: 4", "12.5", True, "12 1/2"),
    ("spaces-make-a-mixed-number", "Read page 1 1/2 hours", "1.5", True, "1 1/2"),
    ("comma-keeps-two-numbers", "The values are 1, 1/2", "0.5", True, "1/2"),  # kept
    ("line-break-keeps-two-numbers", "Step 1\n1/2 of them", "0.5", True, "1/2"),  # kept
    ("improper-fraction-is-not-mixed", "Day 2 3/2 of a cup", "1.5", True, "3/2"),  # kept
    ("improper-mixed-box-is-not-a-number", "\\boxed{2 3/2}", "3.5", False, "2 3/2"),  # kept
]


@pytest.mark.parametrize(
    ("response", "reference", "correct", "parsed"), [c[1:] for c in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES]
)
def test_answer_formats(response: str, reference: object, correct: bool, parsed: str | None) -> None:
    result = get_grader("numeric").grade(response, reference)
    assert (result.correct, result.score, result.parsed, result.error) == (correct, float(correct), parsed, None)


def test_new_formats_vote_by_value() -> None:
    """A mixed number, a "####" line and a unit with a power key by value, like every other spelling."""
    grader = get_grader("numeric")
    halves = ("She needs 1 1/2 cups", "\\boxed{1\\frac{1}{2}}", "#### 1.5\nQuestion 2", "\\boxed{3/2}")
    assert {grader.grade(r, "1.5").answer_key for r in halves} == {"3/2"}
    assert {
        grader.grade(r, "12").answer_key for r in ("The area is 12 m^2", "\\boxed{12 \\text{ m}^2}", "#### 12")
    } == {"12"}


def test_answer_keys_are_values() -> None:
    """Equal numbers written differently share one key; different numbers do not."""
    grader = get_grader("numeric")
    keys = {
        grader.grade(r, "42").answer_key
        for r in ("\\boxed{84/2}", "\\boxed{42}", "It is 42.0", "\\boxed{\\frac{84}{2}}", "\\boxed{\\$42}")
    }
    assert keys == {"42"}
    assert grader.grade("\\boxed{41}", "42").answer_key == "41"
    assert grader.grade("\\boxed{-3.5}", "1").answer_key == "-7/2"
    assert grader.grade("no answer here", "42").answer_key is None
    assert grader.cluster_keys(["42", "41"]) == {"42": "42", "41": "41"}


def test_rel_tol_option() -> None:
    assert not get_grader("numeric").grade("\\boxed{3.01}", "3").correct
    assert get_grader("numeric", rel_tol=0.01).grade("\\boxed{3.01}", "3").correct


def test_tolerance_is_exact_for_huge_and_tiny_numbers() -> None:
    grader = get_grader("numeric")
    big = "9" * 60
    assert grader.grade(f"\\boxed{{{big}}}", big).correct
    assert not grader.grade(f"\\boxed{{{big}}}", "1" + "0" * 59).correct
    tiny = "0." + "0" * 20 + "1"
    assert grader.grade(f"\\boxed{{{tiny}}}", tiny).correct
    assert not grader.grade(f"\\boxed{{{tiny}}}", "0").correct


def test_registered_and_exported() -> None:
    assert "numeric" in rewards.grader_names()
    assert isinstance(get_grader("numeric"), rewards.NumericGrader)
    assert get_grader("numeric").name == "numeric"


# Issue 32: whatever the response or the reference holds, a grade is a 0/1
# result, never an exception (Python refuses to convert ints of more than 4300
# digits, and Fraction's exponent goes through int()).
HOSTILE_RESPONSES = [
    ("exponent-of-5000-digits", "The answer is 1e" + "9" * 5_000),
    ("negative-exponent-of-5000-digits", "\\boxed{2e-" + "9" * 5_000 + "}"),
    ("mantissa-of-5000-digits", "\\boxed{" + "9" * 5_000 + "}"),
    ("fraction-of-huge-numbers", "\\frac{" + "1" * 5_000 + "}{" + "3" * 5_000 + "}"),
    ("box-of-100k-junk", "\\boxed{" + "x^{2}+" * 20_000 + "}"),
    ("box-of-words", "\\boxed{" + " apples" * 15_000 + "}"),
    ("box-of-spaces", "\\boxed{7" + " " * 100_000 + "}"),
    ("nested-braces-in-box", "\\boxed{" + "{" * 50_000 + "7" + "}" * 50_000 + "}"),
    ("nan", "\\boxed{NaN}"),
    ("infinity", "\\boxed{\\infty}"),
    ("float-overflow", "\\boxed{1e309}"),
    ("arabic-indic-digits", "\\boxed{\u0664\u0662}"),
    ("lone-surrogate", "\\boxed{\ud800}"),
]


@pytest.mark.parametrize("response", [c[1] for c in HOSTILE_RESPONSES], ids=[c[0] for c in HOSTILE_RESPONSES])
def test_hostile_responses_get_a_grade(response: str) -> None:
    result = get_grader("numeric").grade(response, "42")
    assert isinstance(result, GradeResult) and result.score in (0.0, 1.0) and result.correct == (result.score == 1.0)


@pytest.mark.parametrize(
    "reference",
    [10**5_000, "1e" + "9" * 5_000, "#### 1e-" + "9" * 5_000, float("nan"), float("inf")],
    ids=["int-of-5000-digits", "exponent-of-5000-digits", "gsm8k-exponent", "nan", "inf"],
)
def test_unreadable_references_are_failures(reference: object) -> None:
    result = get_grader("numeric").grade("\\boxed{42}", reference)
    assert (result.score, result.correct, result.parsed) == (0.0, False, None) and result.error


def test_a_box_over_the_bound_is_wrong_without_being_read() -> None:
    """The bound on a box's length is what keeps an inline grade cheap: past it the box is not parsed."""
    grader = get_grader("numeric")
    at_bound = "\\boxed{42" + " " * (MAX_ANSWER_CHARS - 2) + "}"
    over_bound = "\\boxed{42" + " " * (MAX_ANSWER_CHARS - 1) + "}"
    assert grader.grade(at_bound, "42").correct
    assert grader.grade(over_bound, "42") == GradeResult.failure("answer too long")
    words = grader.grade("\\boxed{" + " a" * MAX_ANSWER_CHARS + "}", "42")
    assert (words.score, words.parsed, words.error) == (0.0, None, "answer too long")
