"""The ``numeric`` grader: one number, compared by value.

Meant for GSM8K-style tasks whose reference is a single number ("42", "3.5",
"1,234", "1e-05", or a GSM8K solution ending in "#### 42"). Numbers are read
into exact fractions, so "42", "42.00", "$42" and "\\frac{84}{2}" are all 42.

What a boxed answer means: the box must hold one number (units, "x =" and
LaTeX spacing aside) or plain arithmetic, which is evaluated exactly
(``\\boxed{2^3}`` is 8, ``\\boxed{84/2}`` is 42). Anything else in a box
(``5!``, ``42 (or 43)``) is an answer that is not a number: it is wrong, never
read as its last number; a box over :data:`rewards.extract.MAX_ANSWER_CHARS`
is wrong without being read. Without a box, a GSM8K-style final line
("#### 42", the line after the last "####" holding just a number) counts, and
without either the last number of the response.

What is a number: a mixed number (an integer, spaces, then a proper fraction:
"1 1/2", "-2 3/4", "2\\frac{3}{4}") is one number; anything else between the
two ("1, 1/2", a line break) or an improper fraction ("2 3/2") leaves two
numbers, the fraction last. So "page 1 1/2 hours" reads as 1.5: spaces alone
cannot tell a whole part from a separate number. A number right after ``^``
is an exponent ("12 m^2", "10^{-3}"), and one followed by an ordinal suffix
("3rd", "21st", "4^{th}") names a position: neither is an answer. A number
glued to other letters ("5km") still is.

How it is compared: an integer reference exactly, any other reference within
a relative tolerance (1e-6 by default, for answers the model rounded), unless
``rel_tol`` is set, which then applies to every reference.

The answer key that votes compare is the exact value (``"42"``, ``"-7/2"``),
so every spelling of one number votes together; a boxed answer that is not a
number votes by its text.
"""

from __future__ import annotations

import ast
import re
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from rewards import python_ast
from rewards.base import ExactKeys, GradeResult, Placement, never_raises, register_grader
from rewards.extract import (
    MAX_ANSWER_CHARS,
    last_boxed,
    no_answer,
    not_a_string,
    search_texts,
    shorten,
    too_long,
    verdict,
)

MAX_DIGITS = 100
"""Longer digit strings (mantissas or exponents) and larger exponents are not
read as numbers: no answer is that long, and Python refuses to convert ints of
more than 4300 digits anyway."""

DEFAULT_REL_TOL = 1e-6
"""The tolerance for non-integer references when ``rel_tol`` is not set."""

FINAL_MARK = "####"
"""GSM8K's mark before the final answer, in references and in the responses of models trained on them."""

MAX_EXPRESSION_CHARS = 200
MAX_NESTING = 20
"""Boxed arithmetic longer or deeper than this is not evaluated (not a number)."""

_INTEGER = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_UNSIGNED = rf"(?:{_INTEGER}(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
# No number starts inside a word, right after a decimal point, or in an
# exponent ("m^2", "m^{2}", "s^-1", "s^{-1}").
_NOT_INSIDE = r"(?<![\w.^])(?<!\^\{)(?<!\^[-+\u2212])(?<!\^\{[-+\u2212])"
# "3rd", "21st", "4^{th}", "2^{\text{nd}}": a position, not an amount.
_ORDINAL_SUFFIX = r"(?:\^\{?(?:\\text\s*\{)?)?(?i:st|nd|rd|th)(?![A-Za-z])"
# One answer: a LaTeX fraction or a slash fraction (either with an optional
# whole part before it, for a mixed number), or a decimal (with an optional
# exponent), with an optional sign (ASCII or U+2212), dollar sign (plain or
# LaTeX-escaped) and percent sign. A sign counts only when it touches the
# digits ("10 - 5" is not "-5"). The decimal is atomic, so that "21st" cannot
# be read as "2" once "21" is found to be an ordinal.
_ANSWER = re.compile(
    rf"{_NOT_INSIDE}(?P<sign>[-+\u2212])?(?:"
    rf"(?:(?P<whole>{_INTEGER})(?: +|(?=\\frac)))?(?P<fraction>"
    rf"\\frac\s*\{{\s*(?P<num>{_UNSIGNED})\s*\}}\s*\{{\s*(?P<den>{_UNSIGNED})\s*\}}"
    rf"|(?P<slash_num>{_UNSIGNED})\s*/\s*(?P<slash_den>{_UNSIGNED}))"
    rf"|(?:\\?\$\s?)?(?P<digits>(?>{_UNSIGNED}))(?!{_ORDINAL_SUFFIX})(?:\s?\\?%)?)"
)
# LaTeX spacing that models put inside numbers ("1\,234", "1{,}234").
_LATEX_SPACING = re.compile(r"\\[,!;: ]|~")
# Words around a boxed number that do not change it: "\text{ dollars}",
# "\text{ cm}^2", "18 apples", "12 m^2", "x = 7", "$...$".
_UNIT_POWER = r"(?:\^\{?-?\d\}?|[\u00b2\u00b3])"
_UNIT_TEXT = re.compile(rf"\\(?:text|mathrm|textbf|mbox)\s*\{{[A-Za-z .]*{_UNIT_POWER}?\}}{_UNIT_POWER}?")
# Trailing words ("18 apples") are matched in the reversed text, from its
# start, in linear time: a pattern anchored at the end is tried from every
# position, which is quadratic on a long box of words or spaces.
_TRAILING_WORDS_REVERSED = re.compile(r"\s*(?:\.?(?:\}?\d-?\{?\^|[\u00b2\u00b3])?[A-Za-z]+\s+)+")
_LEFT_HAND_SIDE = re.compile(r"^\s*[A-Za-z]\w*\s*=(?!=)")
# Boxed arithmetic, once rewritten into Python's spelling.
_FRACTION = re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_OPERATORS = (
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\u00d7", "*"),
    ("\u00b7", "*"),
    ("\\div", "/"),
    ("\u00f7", "/"),
    ("\u2212", "-"),
    ("^", "**"),
    ("\\left", ""),
    ("\\right", ""),
    ("{", "("),
    ("}", ")"),
)
_ARITHMETIC = re.compile(r"[\d.\s+\-*/()]+")


@dataclass(frozen=True)
class Number:
    """A number as read: ``text`` is its normalised spelling, e.g. "1234";
    ``integer`` says it was spelled as an integer (no point, exponent or fraction)."""

    text: str
    value: Fraction
    integer: bool = False


def read_number(text: str) -> Number | None:
    """The last number (or fraction) in ``text``."""
    last = next(iter(deque(_ANSWER.finditer(_clean(text)), maxlen=1)), None)
    if last is None:
        return None
    number = _number(last)
    if number is None and last.group("whole") is not None:
        return _fraction(last)  # "2 3/2" is 2 and then 3/2, not a mixed number
    return number


def marked_number(text: str) -> Number | None:
    """The number of the line after the last "####", if that line holds just one number.

    A line that holds anything else ("#### Step 3: the total") is a Markdown
    heading, not a final answer.
    """
    if FINAL_MARK not in text:
        return None
    line = text.rpartition(FINAL_MARK)[2].lstrip().partition("\n")[0]
    whole = _ANSWER.fullmatch(_bare(line.strip(" \t*").rstrip(". \t*")))
    return _number(whole) if whole else None


def boxed_number(content: str) -> Number | None:
    """The number a box holds: one number, or plain arithmetic evaluated exactly; else None
    (without a look at a box over MAX_ANSWER_CHARS)."""
    if len(content) > MAX_ANSWER_CHARS:
        return None
    text = _bare(content)
    for candidate in (text, text.replace("{", "").replace("}", "")):
        if whole := _ANSWER.fullmatch(candidate):
            return _number(whole)
    value = evaluate_arithmetic(text)
    return None if value is None else Number(_fraction_text(value), value)


def _bare(text: str) -> str:
    """``text`` less what does not change the number it spells: units ("18 apples",
    "\\text{ cm}^2"), a left-hand side ("x ="), "$" and LaTeX spacing."""
    return _LEFT_HAND_SIDE.sub("", _without_trailing_words(_UNIT_TEXT.sub("", _clean(text)))).strip().strip("$").strip()


def _without_trailing_words(text: str) -> str:
    """``text`` less the words after its number ("18 apples", "7 cm."), in time linear in its length."""
    words = _TRAILING_WORDS_REVERSED.match(text[::-1])
    return text[: len(text) - words.end()] if words else text


def evaluate_arithmetic(text: str) -> Fraction | None:
    """``text`` as exact arithmetic (+ - * / ^, parentheses, \\frac, \\times, \\div), or None.

    Only numbers and operators are allowed, and the size of every
    intermediate result is bounded, so a box cannot make this slow.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    for _ in range(MAX_NESTING):
        text, count = _FRACTION.subn(r"((\1)/(\2))", text)
        if not count:
            break
    for latex, python in _OPERATORS:
        text = text.replace(latex, python)
    if not _ARITHMETIC.fullmatch(text) or _nesting(text) > MAX_NESTING:
        return None
    try:
        return _evaluate(python_ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None


def _evaluate(node: ast.AST) -> Fraction:
    """Exact value of a parsed arithmetic expression; ValueError for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _bounded(Fraction(str(node.value)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        operations = {
            ast.Add: lambda: left + right,
            ast.Sub: lambda: left - right,
            ast.Mult: lambda: left * right,
            ast.Div: lambda: left / right,
        }
        if type(node.op) in operations:
            return _bounded(operations[type(node.op)]())
    raise ValueError("not plain arithmetic")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    """``base ** exponent`` for an integer exponent whose result stays within MAX_DIGITS."""
    if exponent.denominator != 1 or abs(exponent) > MAX_DIGITS:
        raise ValueError("exponent out of range")
    size = max(len(str(abs(base.numerator))), len(str(base.denominator)))
    if base not in (0, 1, -1) and (size - 1) * abs(exponent) > MAX_DIGITS:
        raise ValueError("power too large")
    return _bounded(base ** int(exponent))


def _bounded(value: Fraction) -> Fraction:
    if max(len(str(abs(value.numerator))), len(str(value.denominator))) > MAX_DIGITS:
        raise ValueError("number too large")
    return value


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


def reference_number(reference: Any) -> Number | None:
    """The number a task reference stands for, or None if it is not exactly one.

    A GSM8K solution counts by its final "#### 42" part; ints count as
    integers, floats in any spelling Python or JSON gives them ("1e-05").
    """
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = str(reference)
    if not isinstance(reference, str):
        return None
    whole = _ANSWER.fullmatch(_clean(reference.rpartition(FINAL_MARK)[2]).strip())
    return _number(whole) if whole else None


def _clean(text: str) -> str:
    text = _LATEX_SPACING.sub("", text.replace("{,}", ","))
    return text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _number(match: re.Match[str]) -> Number | None:
    """The signed number an :data:`_ANSWER` match spells; None past MAX_DIGITS, for a zero
    denominator, or for a whole part before an improper fraction (not a mixed number)."""
    digits = match.group("digits")
    if digits is not None:
        value = _unsigned(digits)
        number = (
            None if value is None else Number(_fraction_text(value), value, re.fullmatch(r"[\d,]+", digits) is not None)
        )
    else:
        number = _fraction(match)
        if number is not None and match.group("whole") is not None:
            number = _mixed(match.group("whole"), number)
    if number is not None and match.group("sign") in ("-", "\u2212") and number.value != 0:
        return Number("-" + number.text, -number.value, number.integer)
    return number


def _fraction(match: re.Match[str]) -> Number | None:
    """The unsigned fraction of an :data:`_ANSWER` match, spelled as written ("2/4")."""
    numerator = _unsigned(match.group("num") or match.group("slash_num"))
    denominator = _unsigned(match.group("den") or match.group("slash_den"))
    if numerator is None or denominator is None or denominator == 0:
        return None
    return Number(f"{_fraction_text(numerator)}/{_fraction_text(denominator)}", numerator / denominator)


def _mixed(whole: str, fraction: Number) -> Number | None:
    """``whole`` and a proper ``fraction`` as one mixed number ("1 1/2" is 3/2); None for an improper one."""
    value = _unsigned(whole)
    if value is None or not 0 < fraction.value < 1:
        return None
    return Number(f"{_fraction_text(value)} {fraction.text}", value + fraction.value)


def _unsigned(digits: str) -> Fraction | None:
    """The exact value of an unsigned decimal ("1,234.50", "1e-05"); None past MAX_DIGITS."""
    mantissa, _, exponent = digits.replace(",", "").lower().partition("e")
    if len(mantissa) > MAX_DIGITS or len(exponent) > MAX_DIGITS or abs(int(exponent or 0)) > MAX_DIGITS:
        return None
    return Fraction(mantissa) * Fraction(10) ** int(exponent or 0)


def _fraction_text(value: Fraction) -> str:
    """A decimal spelling ("3.5", "0.00001") where one is exact, else "n/d"."""
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator != 1:
        return str(value)
    places = max(twos, fives)
    scaled = abs(value.numerator) * (10**places // value.denominator)
    whole, decimals = divmod(scaled, 10**places) if places else (scaled, 0)
    sign = "-" if value < 0 else ""
    return f"{sign}{whole}.{decimals:0{places}d}".rstrip("0") if places else f"{sign}{whole}"


def close_enough(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    """Equal, or within ``rel_tol`` of the larger magnitude (exact arithmetic,
    so huge or tiny numbers neither overflow nor underflow)."""
    return a == b or abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


@register_grader("numeric")
@dataclass(frozen=True)
class NumericGrader(ExactKeys):
    """Grades the last boxed answer, else a "#### 42" final line, else the last number, against one number.

    ``rel_tol``: relative tolerance of the comparison (None: exact for
    integer references, 1e-6 for others). ``require_boxed``: only a
    ``\\boxed{}`` answer counts (no fallback to the last number).
    """

    name: ClassVar[str] = "numeric"
    binary: ClassVar[bool] = True
    placement: ClassVar[Placement] = (
        Placement.INLINE
    )  # bounded: MAX_ANSWER_CHARS, MAX_DIGITS, MAX_EXPRESSION_CHARS, MAX_NESTING
    rel_tol: float | None = None
    require_boxed: bool = False

    @never_raises
    def grade(self, response: str, reference: Any) -> GradeResult:
        if not isinstance(response, str):
            return not_a_string(response)
        gold = reference_number(reference)
        if gold is None:
            return GradeResult.failure(f"reference is not a number: {shorten(repr(reference), 80)}")
        found = self._answer(response)
        if found is None:
            return no_answer()
        read, number = found
        if len(read) > MAX_ANSWER_CHARS:
            return too_long()
        if number is None:
            return verdict(False, shorten(read), " ".join(read.split()))
        return verdict(close_enough(number.value, gold.value, self._tolerance(gold)), number.text, str(number.value))

    def _tolerance(self, gold: Number) -> float:
        if self.rel_tol is not None:
            return self.rel_tol
        return 0.0 if gold.integer else DEFAULT_REL_TOL

    def _answer(self, response: str) -> tuple[str, Number | None] | None:
        """(the answer as written, its number) by the rules of
        :mod:`rewards.extract`, or None if the response gives no answer."""
        for text in search_texts(response):
            boxed = last_boxed(text)
            if boxed is not None:
                return boxed, boxed_number(boxed)
            if not self.require_boxed and (number := marked_number(text) or read_number(text)) is not None:
                return number.text, number
        return None
