"""The method registry: each method's package under ``pipeline/methods/``, by the name its config section carries.

Adding a method is a folder plus one line here. The table names packages
instead of importing them, so that the layers below ``methods/`` never
import a method: the config loads each method's section class by name (its
package's ``config`` module holds ``SECTION``), and the run loop loads its
stages the same way (``pipeline.methods.registry``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config.sections import MethodSection

METHOD_PACKAGES: dict[str, str] = {
    "rise": "pipeline.methods.rise",
    "exit": "pipeline.methods.exit",
}
DEFAULT_METHOD = "rise"


def method_section(name: str) -> type[MethodSection]:
    """The config section class of method ``name``; one line naming the known methods when there is none."""
    if name not in METHOD_PACKAGES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_PACKAGES)}")
    return importlib.import_module(f"{METHOD_PACKAGES[name]}.config").SECTION


def method_sections() -> tuple[type[MethodSection], ...]:
    """Every registered method's section class, in registry order."""
    return tuple(method_section(name) for name in METHOD_PACKAGES)
