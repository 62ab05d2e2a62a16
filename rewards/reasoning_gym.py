"""The ``reasoning_gym`` grader: a reasoning-gym dataset's own ``score_answer``.

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ generates
procedural tasks (arithmetic, GSM8K-like word problems, logic, puzzles) and
scores answers with each dataset's ``score_answer(answer, entry)``, which
needs the whole generated entry (its metadata too), not just an answer. So a
task's reference names the entry instead of copying it (:func:`reference`):
the dataset, its config (seed and size included) and the entry's index,
plus the answer for readers and a digest of the entry. The grader builds the
entry again from those, deterministically, and refuses to score when its
digest differs (another reasoning-gym version generates other tasks), rather
than score against the wrong entry.

What counts as the answer (:func:`extract_answer`): the last ``\\boxed{}``
(read by :mod:`rewards.extract`'s rules), else the last
``<answer>...</answer>``, reasoning-gym's own answer format; its content,
stripped, goes to ``score_answer`` as is. With ``last_number`` (for datasets
whose answers are numbers) a response with neither answers with its last
number, read as the ``numeric`` grader reads it: small models seldom box
their answers (SmolLM2-135M-Instruct boxes none of its right answers on the
quickstart's tasks). An answer over :data:`rewards.extract.MAX_ANSWER_CHARS`
is not scored.

Scores are the dataset's: partial credit exists (gsm_symbolic gives 0.01 for
a wrong number, others a share for an answer that contains the right one),
so the grader is not ``binary``; ``correct`` means a score of 1. A score that
is not a number in [0, 1] is a grading failure, never a reward.

The answer key that votes compare is the extracted answer with its
whitespace collapsed.

reasoning-gym is an optional dependency (the ``reasoning-gym`` extra, which
``make install`` installs); this module imports it only when a grade or a
task source needs it, so ``import rewards`` works without it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from difflib import get_close_matches
from functools import lru_cache
from types import ModuleType
from typing import Any, ClassVar

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
from rewards.numeric import read_number

LIBRARY = "reasoning_gym"
INSTALL_HINT = "reasoning-gym is not installed: pip install 'selfimprove[reasoning-gym]' (make install installs it)"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"


def require_library() -> None:
    """A ValueError with :data:`INSTALL_HINT` where reasoning-gym is missing, so that a config naming the source or
    the grader fails on one line when it loads (without importing it, which takes seconds)."""
    if importlib.util.find_spec(LIBRARY) is None:
        raise ValueError(INSTALL_HINT)


def library() -> ModuleType:
    """The ``reasoning_gym`` package (:func:`require_library`'s error where it is missing)."""
    require_library()
    return importlib.import_module(LIBRARY)


def dataset_names() -> list[str]:
    """Every dataset reasoning-gym registers, sorted."""
    return sorted(library().factory.DATASETS)


def make_dataset(name: str, config: Mapping[str, Any]) -> Any:
    """The dataset ``name`` built with ``config`` (its config class's fields); a ValueError naming the dataset and
    the problem for an unknown name or a config it refuses. Cached: the grader builds the same one for every grade."""
    names = dataset_names()
    if name not in names:
        close = get_close_matches(name, names, n=3)
        guess = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown reasoning-gym dataset {name!r}{guess}; known: {', '.join(names)}")
    return _dataset(name, _config_key(config))


def _config_key(config: Mapping[str, Any]) -> str:
    """``config`` as the key of the caches: JSON with sorted keys."""
    return json.dumps(dict(config), sort_keys=True)


@lru_cache(maxsize=32)
def _dataset(name: str, config_json: str) -> Any:
    try:
        return library().create_dataset(name, **json.loads(config_json))
    except (TypeError, ValueError, AssertionError) as exc:
        # Config classes are dataclasses (TypeError for an unknown field) whose validate() asserts.
        reason = str(exc) or f"{type(exc).__name__} in its config check"
        raise ValueError(f"reasoning-gym dataset {name!r} refuses the config {config_json}: {reason}") from None


def entry_digest(entry: Mapping[str, Any]) -> str:
    """A short digest of an entry's question and answer: what the grader checks the rebuilt entry against."""
    payload = json.dumps([entry["question"], entry["answer"]], ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def reference(name: str, config: Mapping[str, Any], index: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The task reference of entry ``index`` of dataset ``name`` built with ``config``: plain JSON, so rollout
    records keep it as it is."""
    return {
        "dataset": name,
        "config": dict(config),
        "index": index,
        "answer": entry["answer"],
        "digest": entry_digest(entry),
    }


def rebuilt_entry(ref: Any) -> tuple[Any, dict[str, Any]]:
    """(the dataset, the entry) a reference names; a ValueError saying why when it names none, or another entry."""
    if not isinstance(ref, Mapping) or not {"dataset", "config", "index", "digest"} <= ref.keys():
        raise ValueError(f"reference is not a reasoning-gym task: {shorten(repr(ref), 80)}")
    name, config, index = ref["dataset"], ref["config"], ref["index"]
    if not isinstance(name, str) or not isinstance(config, Mapping):
        raise ValueError(f"reference is not a reasoning-gym task: {shorten(repr(ref), 80)}")
    dataset = make_dataset(name, config)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(dataset):
        raise ValueError(f"reference index {index!r} is outside reasoning-gym dataset {name!r} (size {len(dataset)})")
    entry = _entry(name, _config_key(config), index)
    if entry_digest(entry) != ref["digest"]:
        raise ValueError(
            f"{name} entry {index} differs from the task's: this reasoning-gym version generates other "
            "tasks from the same config"
        )
    return dataset, entry


@lru_cache(maxsize=4096)
def _entry(name: str, config_json: str, index: int) -> dict[str, Any]:
    return _dataset(name, config_json)[index]


def extract_answer(response: str, last_number: bool = False) -> str | None:
    """The last ``\\boxed{}``, else the last ``<answer>...</answer>``, stripped, else (``last_number``) the last
    number in the numeric grader's spelling ("1,234.50" is "1234.5"); None when the response has none of them."""
    for text in search_texts(response):
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        tagged = _last_tagged(text)
        if tagged:
            return tagged
        if last_number and (number := read_number(text)) is not None:
            return number.text
    return None


def _last_tagged(text: str) -> str | None:
    """The content of the last closed ``<answer>`` tag, found from the end (linear, whatever the text holds)."""
    end = text.rfind(_ANSWER_CLOSE)
    start = text.rfind(_ANSWER_OPEN, 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    return text[start + len(_ANSWER_OPEN) : end].strip() or None


def checked_score(score: Any) -> float | None:
    """``score`` as a float when it is a number in [0, 1]; None for anything else (NaN, 1.5, a string)."""
    if not isinstance(score, numbers.Real) or isinstance(score, bool):
        return None
    value = float(score)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


@register_grader("reasoning_gym")
@dataclass(frozen=True)
class ReasoningGymGrader(ExactKeys):
    """Scores the extracted answer with the task's reasoning-gym dataset (module doc).

    ``last_number``: a response without a box or an answer tag answers with its last number (off by default:
    most datasets' answers are not numbers).
    """

    name: ClassVar[str] = "reasoning_gym"
    binary: ClassVar[bool] = False  # the datasets' scores include partial credit
    # score_answer is each dataset's own code (some parse with sympy): workers with a hard timeout, several per job.
    placement: ClassVar[Placement] = Placement.POOL_CHUNKED
    # Importing reasoning-gym takes seconds (it imports matplotlib): done when a worker starts, not in its first job.
    preload: ClassVar[tuple[str, ...]] = (LIBRARY,)
    last_number: bool = False

    def __post_init__(self) -> None:
        require_library()

    @never_raises
    def grade(self, response: str, reference: Any) -> GradeResult:
        if not isinstance(response, str):
            return not_a_string(response)
        try:
            dataset, entry = rebuilt_entry(reference)
        except ValueError as exc:
            return GradeResult.failure(shorten(str(exc), 300))
        answer = extract_answer(response, self.last_number)
        if answer is None:
            return no_answer()
        if len(answer) > MAX_ANSWER_CHARS:
            return too_long()
        raw = dataset.score_answer(answer, entry)
        score = checked_score(raw)
        if score is None:
            return GradeResult.failure(
                f"{reference['dataset']}'s score_answer returned {shorten(repr(raw), 80)}, not a number in [0, 1]"
            )
        return replace(verdict(score == 1.0, shorten(answer), " ".join(answer.split())), score=score)
