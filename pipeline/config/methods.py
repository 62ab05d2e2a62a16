"""The method registry: each method's class, by the name its config section carries.

Adding a method is a folder under ``pipeline/methods/`` plus one line here.
The table names the classes instead of importing them, since ``methods/``
sits above the config in the layers: the config loads them when it builds
its ``method`` union, and every other layer reaches a method through the
run's section (docs/ARCHITECTURE.md, "The method registry"). This is the one
module that imports by name (``tests/test_architecture.py`` checks it).
"""

from __future__ import annotations

import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config.sections import MethodSection

METHODS: dict[str, str] = {
    "rise": "pipeline.methods.rise.method:RiseMethod",
    "exit": "pipeline.methods.exit.method:ExitMethod",
}
DEFAULT_METHOD = "rise"


def method_section(name: str) -> type[MethodSection]:
    """The class of method ``name``; one line naming the known methods when there is none."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    method: type[MethodSection] = pkgutil.resolve_name(METHODS[name])
    return method


def method_sections() -> tuple[type[MethodSection], ...]:
    """Every registered method's class, in registry order."""
    return tuple(method_section(name) for name in METHODS)
