"""The ``numeric`` grader: one number, compared by value.

Meant for GSM8K-style tasks whose reference is a single number ("42", "3.5",
"1,234", or a GSM8K solution ending in "#### 42"). Numbers are read into
exact fractions, so "42", "42.00", "$42" and "\\frac{84}{2}" are all 42, and
compared with a relative tolerance for answers rounded by the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

from rewards.base import GradeResult, register_grader
from rewards.extract import last_boxed, no_answer, not_a_string, search_texts, shorten, verdict

MAX_DIGITS = 100
"""Longer digit strings are not read as numbers: no answer is that long, and
Python refuses to convert ints of more than 4300 digits anyway."""

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# One answer: a LaTeX fraction, a slash fraction or a decimal, with an optional
# sign (ASCII or U+2212), dollar sign (plain or LaTeX-escaped) and percent
# sign. It never starts inside a word or right after a decimal point, and a
# sign counts only when it touches the digits ("10 - 5" is not "-5").
_ANSWER = re.compile(
    rf"(?<![\w.])(?P<sign>[-+\u2212])?(?:"
    rf"\\frac\s*\{{\s*(?P<num>{_UNSIGNED})\s*\}}\s*\{{\s*(?P<den>{_UNSIGNED})\s*\}}"
    rf"|(?P<slash_num>{_UNSIGNED})\s*/\s*(?P<slash_den>{_UNSIGNED})"
    rf"|(?:\\?\$\s?)?(?P<digits>{_UNSIGNED})(?:\s?\\?%)?)"
)
# LaTeX spacing that models put inside numbers ("1\,234", "1{,}234").
_LATEX_SPACING = re.compile(r"\\[,!;: ]|~")


@dataclass(frozen=True)
class Number:
    """A number as read: ``text`` is its normalised spelling, e.g. "1234"."""

    text: str
    value: Fraction


def read_number(text: str) -> Number | None:
    """The last number (or fraction) in ``text``."""
    last = None
    for last in _ANSWER.finditer(_clean(text)):
        pass
    return _number(last) if last else None


def reference_number(reference: Any) -> Number | None:
    """The number a task reference stands for, or None if it is not exactly one.

    A GSM8K solution counts by its final "#### 42" part.
    """
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = str(reference)
    if not isinstance(reference, str):
        return None
    whole = _ANSWER.fullmatch(_clean(reference.rpartition("####")[2]).strip())
    return _number(whole) if whole else None


def _clean(text: str) -> str:
    text = _LATEX_SPACING.sub("", text.replace("{,}", ","))
    return text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _number(match: re.Match[str]) -> Number | None:
    if match.group("digits") is not None:
        numerator, denominator = _unsigned(match.group("digits")), "1"
    else:
        numerator = _unsigned(match.group("num") or match.group("slash_num"))
        denominator = _unsigned(match.group("den") or match.group("slash_den"))
    if numerator is None or denominator is None or Fraction(denominator) == 0:
        return None
    value = Fraction(numerator) / Fraction(denominator)
    if match.group("sign") in ("-", "\u2212") and value != 0:
        numerator, value = "-" + numerator, -value
    return Number(numerator if denominator == "1" else f"{numerator}/{denominator}", value)


def _unsigned(digits: str) -> str | None:
    """Canonical spelling of an unsigned decimal: no commas, no padding zeros."""
    if len(digits) > MAX_DIGITS:
        return None
    whole, _, decimals = digits.replace(",", "").partition(".")
    whole, decimals = whole.lstrip("0") or "0", decimals.rstrip("0")
    return f"{whole}.{decimals}" if decimals else whole


def close_enough(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    """Equal, or within ``rel_tol`` of the larger magnitude (exact arithmetic,
    so huge or tiny numbers neither overflow nor underflow)."""
    return a == b or abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


@register_grader("numeric")
@dataclass(frozen=True)
class NumericGrader:
    """Grades the last boxed answer, else the last number, against one number.

    ``rel_tol``: relative tolerance of the comparison. ``require_boxed``: only
    a ``\\boxed{}`` answer counts (no fallback to the last number).
    """

    name: ClassVar[str] = "numeric"
    binary: ClassVar[bool] = True
    rel_tol: float = 1e-6
    require_boxed: bool = False

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
        if number is None:
            return verdict(False, shorten(read))
        return verdict(close_enough(number.value, gold.value, self.rel_tol), number.text)

    def _answer(self, response: str) -> tuple[str, Number | None] | None:
        """(the answer as written, its number) by the rules of
        :mod:`rewards.extract`, or None if the response gives no answer."""
        for text in search_texts(response):
            boxed = last_boxed(text)
            if boxed is not None:
                return boxed, read_number(boxed)
            if not self.require_boxed and (number := read_number(text)) is not None:
                return number.text, number
        return None
