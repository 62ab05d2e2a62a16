"""User code named in a config, found without a fork: installed entry points and import paths.

A config's ``grader.name`` or ``tasks.*.source`` names a built-in first (the
registries of :mod:`rewards.base` and :mod:`pipeline.tasks.base`); any other
name is looked up here, in this order:

1. an entry point of that name in the kind's group (``selfimprove.graders``,
   ``selfimprove.tasks``) that an installed distribution declares, e.g. in its
   ``pyproject.toml``: ``[project.entry-points."selfimprove.graders"]`` then
   ``exact = "my_package.graders:exact"``;
2. an import path: ``package.module:attr``, imported the way Python imports
   anything (installed, or on ``PYTHONPATH``), or ``path/to/file.py:attr``, a
   file loaded by its path, relative to the working directory as every path
   in a config is.

Either way the name resolves to a *spec*, ``module:attr`` or
``/absolute/path/file.py:attr``, that any process can load again on its own:
user objects cross into grading workers as their spec, never pickled, since
a module loaded from a file cannot be imported by name in another process.

Every failure is a :class:`PluginError` whose message is one line naming
the plugin and what is wrong, so that a config fails before any server
starts, not with a traceback halfway through a run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

FORMS = "module:attr, path/to/file.py:attr, or an installed plugin (`selfimprove plugins` lists them)"
"""How a user names their own plugin, for the error that names an unknown one."""

_MAX_REASON = 300


class PluginError(ValueError):
    """A plugin that cannot be used; the message is one line naming it and what is wrong."""


@dataclass(frozen=True)
class PluginKind:
    """What a plugin of one kind is: a class with ``method``, or a function, either called with ``args`` first."""

    noun: str
    group: str
    method: str
    args: tuple[str, ...]


GRADER = PluginKind("grader", "selfimprove.graders", "grade", ("response", "reference"))
TASK_SOURCE = PluginKind("task source", "selfimprove.tasks", "load", ("split",))


@dataclass(frozen=True)
class Plugin:
    """A plugin as a config names it, the spec it resolves to and where it comes from."""

    name: str
    spec: str
    origin: str

    def load(self) -> Any:
        return load_spec(self.spec)


def find_plugin(kind: PluginKind, name: str, builtins: list[str]) -> Plugin:
    """The plugin ``name`` means: an installed entry point, else an import path; a PluginError naming the choices
    when it is neither (``builtins``: the built-in names, which the caller looked up first)."""
    for plugin in installed_plugins(kind.group):
        if plugin.name == name:
            return plugin
    if ":" in name:
        return Plugin(name, absolute_spec(name), "import path")
    raise PluginError(f"unknown {kind.noun} {name!r}; known: {', '.join(builtins)}; or your own: {FORMS}")


def load_plugin(kind: PluginKind, name: str, spec: str) -> Any:
    """The class or function ``spec`` names, checked to be a ``kind``; a PluginError otherwise."""
    target = load_spec(spec)
    if inspect.isclass(target):
        if not callable(getattr(target, kind.method, None)):
            raise PluginError(f"{name}: class {target.__name__} has no {kind.method}({', '.join(kind.args)}) method")
    elif callable(target):
        try:
            check_call(kind, target, {}, partial=True)
        except PluginError as exc:
            raise PluginError(f"{name}: {exc}") from None
    else:
        raise PluginError(f"{name} is a {type(target).__name__}, not a {kind.noun} class or function")
    return target


def check_call(kind: PluginKind, function: Callable[..., Any], options: dict[str, Any], partial: bool) -> None:
    """Refuse a function that cannot be called with ``kind.args`` and ``options`` (``partial``: options aside)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # a builtin without a signature: calling it is the only test
    try:
        (signature.bind_partial if partial else signature.bind)(*kind.args, **options)
    except TypeError as exc:
        called = f"{function.__name__}({', '.join([*kind.args, *options])})"
        raise PluginError(f"{function.__name__}{signature} cannot be called as {called}: {exc}") from None


def build(cls: type, options: dict[str, Any]) -> Any:
    """``cls(**options)``, whose failure, whatever the user's constructor raises, is a PluginError."""
    try:
        return cls(**options)
    except Exception as exc:  # the user's code: anything may go wrong there
        raise PluginError(f"{cls.__name__}(**options) raised {one_line(exc)}") from None


def installed_plugins(group: str) -> list[Plugin]:
    """The entry points of ``group`` that installed distributions declare, by name (the first of a name wins)."""
    found: dict[str, Plugin] = {}
    for point in sorted(entry_points(group=group), key=lambda point: point.name):
        found.setdefault(point.name, Plugin(point.name, point.value, _origin(point)))
    return list(found.values())


def absolute_spec(spec: str) -> str:
    """``spec`` with a file's path made absolute, so that a process with another working directory loads the same file."""
    module, _, attr = spec.rpartition(":")
    return f"{Path(module).resolve()}:{attr}" if _is_file(module) else spec


def load_spec(spec: str) -> Any:
    """The object ``spec`` names: ``module:attr`` or ``path/file.py:attr`` (``attr`` may be dotted)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise PluginError(f"{spec!r} is not an import path: expected module:attr or path/to/file.py:attr")
    module = _load_file(Path(module_name)) if _is_file(module_name) else _import(module_name)
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise PluginError(f"{spec}: module {module_name} has no {attr!r}")
        found = getattr(found, part)
    return found


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, cut short: a user's exception as part of an error message."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:_MAX_REASON]


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # the user's module runs on import: anything may go wrong there
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and Path(name.replace(".", "/") + ".py").is_file():
            hint = f"; a file is named by its path: {name.replace('.', '/')}.py:attr"
        raise PluginError(f"cannot import module {name} ({one_line(exc)}){hint}") from None


def _load_file(path: Path) -> ModuleType:
    """The module of a Python file, loaded once per process under a name made from its absolute path."""
    path = path.resolve()
    if not path.is_file():
        raise PluginError(f"file not found: {path}")
    name = f"_selfimprove_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"cannot import {path} ({one_line(exc)})") from None
    return module


def _origin(point: EntryPoint) -> str:
    dist = point.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "an installed distribution"
    return f"entry point of {where} ({point.value})"
