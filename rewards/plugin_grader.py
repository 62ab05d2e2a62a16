"""Graders from user code (:mod:`rewards.plugins`): a grader class, or a plain function like TRL's reward functions.

A plugin named in ``grader.name`` is either

- a class with ``grade(response, reference) -> GradeResult``, built with the
  grader's options; its ``binary``, ``placement`` and ``cluster_keys`` are
  used where it has them (else False, :attr:`Placement.POOL` and exact
  keys); or
- a function ``fn(response, reference, **options)`` that returns a bool, a
  score in [0, 1] or a :class:`GradeResult`. A bool or score is correct at
  1; with no parsed answer of its own, the whole response is the answer that
  votes compare (``parsed`` shows its end), so equal responses vote together.
  A function annotated ``-> bool`` is a binary grader. Its grades run in the
  grading pool's workers (:attr:`Placement.POOL_CHUNKED`), under the same hard
  timeout and process isolation as the built-in graders that can hang.

Either way :class:`PluginGrader` keeps every grader's promise: a raise, a
NaN, a score outside [0, 1] or a result of the wrong type (a GradeResult's
fields included, which must be JSON for the records) becomes a zero-score
result with ``error`` saying which (a hang is the pool's ``timeout``), never
an exception; a spec that cannot be imported, or a
function that cannot take ``(response, reference, **options)``, is a
one-line :class:`rewards.plugins.PluginError` when the grader is built,
which the config does when it loads.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from numbers import Real
from typing import Any

from rewards.base import Grader, GradeResult, Placement, grader_names, never_raises, registered_grader
from rewards.extract import CORRECT_FEEDBACK, SHOWN_CHARS
from rewards.plugins import GRADER, build, check_call, find_plugin, load_plugin, one_line

logger = logging.getLogger(__name__)

INCORRECT_FEEDBACK = "Your answer is incorrect."

_built: dict[tuple[str, str], Any] = {}
"""Grader instances of plugin classes by (spec, options), one per process: a worker rebuilds the grader of every job
it takes (:meth:`PluginGrader.__reduce__`), and a class may be costly to build."""


def load_grader_plugin(name: str) -> Any:
    """The class or function a grader name that is no built-in means; a PluginError saying why there is none."""
    return load_plugin(GRADER, name, find_plugin(GRADER, name, grader_names()).spec)


class PluginGrader:
    """A grader from user code, named by ``name`` (as the config spells it), with its options; see the module doc.

    It pickles as its name, options and spec, so that each grading worker
    loads the user's code itself (and never looks the entry points up again).
    """

    def __init__(self, name: str, options: dict[str, Any], spec: str | None = None) -> None:
        self.name = name
        self.options = dict(options)
        self.spec = spec or find_plugin(GRADER, name, grader_names()).spec
        target = load_plugin(GRADER, name, self.spec)
        if inspect.isclass(target):
            self._grader: Any = _instance(self.spec, target, self.options)
            self._function: Callable[..., Any] | None = None
            self.binary = bool(getattr(self._grader, "binary", False))
            self.placement = getattr(self._grader, "placement", Placement.POOL)
        else:
            check_call(GRADER, target, self.options, partial=False)
            self._grader, self._function = None, target
            self.binary = _returns_bool(target)
            self.placement = Placement.POOL_CHUNKED

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, Any], str]]:
        return (PluginGrader, (self.name, self.options, self.spec))

    @never_raises
    def grade(self, response: str, reference: Any) -> GradeResult:
        if self._function is not None:
            return checked(self._function(response, reference, **self.options), response)
        return checked(self._grader.grade(response, reference), response)

    def cluster_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """The class's own classes when it has them; otherwise, or when its method fails, equal keys are equal
        answers (votes then merely split what the class would have merged, and the eval still ends)."""
        exact = {key: key for key in keys}
        if self._grader is None or not callable(getattr(self._grader, "cluster_keys", None)):
            return exact
        try:
            classes = self._grader.cluster_keys(keys)
        except Exception as exc:  # the user's code must not end an eval that is done generating
            logger.warning("%s: cluster_keys raised %s; comparing answer keys exactly", self.name, one_line(exc))
            return exact
        if not isinstance(classes, dict) or not all(isinstance(classes.get(key), str) for key in keys):
            logger.warning("%s: cluster_keys did not map every key to a str; comparing answer keys exactly", self.name)
            return exact
        return classes


def checked(value: Any, response: str) -> GradeResult:
    """A plugin's verdict as a GradeResult, or the failure that says why it is none."""
    if isinstance(value, GradeResult):
        return _checked_result(value)
    if isinstance(value, bool):
        return _whole_response_verdict(float(value), response)
    if isinstance(value, Real):
        if problem := _score_problem(value):
            return GradeResult.failure(problem)
        return _whole_response_verdict(float(value), response)
    return GradeResult.failure(f"grader returned {_type_name(value)}, not a bool, a score in [0, 1] or a GradeResult")


def _checked_result(result: GradeResult) -> GradeResult:
    """``result`` with a plain float score, when every field has the type the records need."""
    if isinstance(result.score, bool) or not isinstance(result.score, Real):
        return GradeResult.failure(f"grader returned a GradeResult whose score is {_type_name(result.score)}")
    if problem := _score_problem(result.score):
        return GradeResult.failure(problem)
    wrong = [
        f"{name} is {_type_name(value)}"
        for name, value, allowed in (
            ("correct", result.correct, (bool,)),
            ("feedback", result.feedback, (str,)),
            ("parsed", result.parsed, (str, type(None))),
            ("error", result.error, (str, type(None))),
            ("answer_key", result.answer_key, (str, type(None))),
        )
        if not isinstance(value, allowed)
    ]
    if wrong:
        return GradeResult.failure(f"grader returned a GradeResult whose {', '.join(wrong)}")
    return replace(result, score=float(result.score))


def _type_name(value: Any) -> str:
    """``str``, or ``numpy.bool`` for a type that only shares a builtin's name."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _score_problem(score: Real) -> str | None:
    if math.isnan(score):
        return "grader returned NaN"
    if not 0 <= float(score) <= 1:
        return f"grader returned {score!r}, outside [0, 1]"
    return None


def _whole_response_verdict(score: float, response: str) -> GradeResult:
    """The result of a bare verdict: the stripped response is the answer, keyed by its hash (votes compare it)."""
    correct = score == 1.0
    feedback = CORRECT_FEEDBACK if correct else INCORRECT_FEEDBACK
    answer = response.strip() if isinstance(response, str) else ""
    if not answer:
        return GradeResult(score=score, correct=correct, parsed=None, feedback=feedback)
    shown = answer if len(answer) <= SHOWN_CHARS else "..." + answer[3 - SHOWN_CHARS :]
    key = hashlib.sha256(answer.encode("utf-8")).hexdigest()[:16]
    return GradeResult(score=score, correct=correct, parsed=shown, feedback=feedback, answer_key=key)


def _instance(spec: str, cls: type, options: dict[str, Any]) -> Any:
    key = (spec, json.dumps(options, sort_keys=True, default=repr))
    if key not in _built:
        _built[key] = build(cls, options)
    return _built[key]


def _returns_bool(function: Callable[..., Any]) -> bool:
    """Whether the function declares ``-> bool``: its scores are then only 0 or 1."""
    try:
        return inspect.signature(function).return_annotation in (bool, "bool")
    except (TypeError, ValueError):
        return False


def get_grader(name: str, **options: Any) -> Grader:
    """Build the built-in grader registered as ``name`` with its options, else the user's grader that ``name``
    names (an installed entry point or an import path)."""
    factory = registered_grader(name)
    return factory(**options) if factory is not None else PluginGrader(name, options)
