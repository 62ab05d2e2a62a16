"""Plain data across the channel between the trusted checker and the sandboxed candidate.

The checker (:mod:`rewards.code.checker`) and the candidate's process
(:mod:`rewards.code.candidate`) exchange one JSON object per line. Values
crossing it are *plain data*: None, bool, int, float, str, list, tuple,
dict, set and frozenset, of exactly those types (no subclasses), nested.
JSON cannot tell a tuple from a list, so containers other than lists travel
tagged: ``{"tuple": [...]}``, ``{"set": [...]}``, ``{"frozenset": [...]}``
and ``{"dict": [[key, value], ...]}`` (keys of any hashable plain type).

:func:`decode` is what makes the channel safe: whatever bytes the candidate
wrote, it returns fresh builtins or raises :class:`WireError`, so no object
of the candidate's making (a custom ``__eq__``, an ``int`` subclass) ever
reaches a test's comparison.

Standard library only, few imports: both sides run it, the candidate side
in a sandbox without site-packages, on every grade.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing would cost every run a few milliseconds
    from typing import Any

MAX_LINE_BYTES = 4 << 20
"""The longest line either side accepts (a reply larger than this fails its call)."""

_SCALARS = (type(None), bool, int, float, str)
_TAGGED: dict[type, str] = {tuple: "tuple", set: "set", frozenset: "frozenset"}
_UNTAG = {"tuple": tuple, "set": set, "frozenset": frozenset}
PLAIN_TYPES = "None, bool, int, float, str, list, tuple, dict, set or frozenset"


class WireError(ValueError):
    """A value that is not plain data, or a line that is not a valid message."""


def encode(value: Any, canonical: bool = False) -> Any:
    """``value`` as JSON-ready data; WireError if it is not plain data.

    ``canonical`` sorts dict entries and set elements, so that equal values
    encode equally (the answer key hashes this form).
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [encode(item, canonical) for item in value]
    if kind is dict:
        entries = [[encode(key, canonical), encode(item, canonical)] for key, item in value.items()]
        return {"dict": sorted(entries, key=_sort_key) if canonical else entries}
    if kind in _TAGGED:
        items = [encode(item, canonical) for item in value]
        return {_TAGGED[kind]: sorted(items, key=_sort_key) if canonical and kind is not tuple else items}
    raise WireError(f"a value of type {kind.__name__!r}, which is not plain data ({PLAIN_TYPES})")


def decode(data: Any) -> Any:
    """Fresh builtins from what :func:`json.loads` returned; WireError if it is not an encoding."""
    if type(data) in _SCALARS:
        return data
    if type(data) is list:
        return [decode(item) for item in data]
    if type(data) is dict and len(data) == 1:
        ((tag, items),) = data.items()
        if type(items) is list:
            if tag in _UNTAG:
                return _hashable_container(_UNTAG[tag], [decode(item) for item in items])
            if tag == "dict" and all(type(entry) is list and len(entry) == 2 for entry in items):
                return _hashable_container(dict, [(decode(key), decode(item)) for key, item in items])
    raise WireError("not an encoded plain value")


def dump_line(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON (NaN and infinities allowed: floats are floats)."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def load_line(line: bytes) -> dict[str, Any]:
    """A message from one line; WireError for anything that is not a JSON object."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WireError(f"not a JSON line ({type(exc).__name__})") from None
    if type(message) is not dict:
        raise WireError("not a JSON object")
    return message


def _hashable_container(kind: type, items: list) -> Any:
    try:
        return kind(items)
    except TypeError:  # an unhashable set element or dict key
        raise WireError(f"{kind.__name__} with an unhashable member") from None


def _sort_key(encoded: Any) -> str:
    return json.dumps(encoded, sort_keys=True)
