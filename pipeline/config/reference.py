"""The configuration reference, ``docs/configuration.md``, written from the config's pydantic models.

Every key's type, constraints, default and description come from the model
fields (``Field(description=...)``), so the page cannot drift from the code:
``tests/test_docs.py`` fails when the page in the repository differs from
:func:`reference_page`, and a field without a description fails it too.
``make docs-reference`` (``python -m pipeline.config.write_reference
docs/configuration.md``) rewrites the page. Each key's entry has the dotted
key as its anchor, which config errors link to (:func:`key_link`).
"""

from __future__ import annotations

import json
import math
import re
import typing
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

REFERENCE_PAGE = "docs/configuration.md"
_DOCS_PAGE = re.compile(r"\bdocs/([\w-]+\.md(?:#[\w.-]+)?)")

INTRO = """\
A run config is YAML with the sections below; `configs/quickstart.yaml` is a complete example.
Unknown keys, wrong types, values out of range and missing files fail before any work starts,
with one line naming the dotted key and a link to its entry here.
`--set KEY=VALUE` on the command line sets any key (the value is read as YAML).
"""

_CONSTRAINTS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)
_SCALARS: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "path",
    NoneType: "null",
    Any: "any",
}


def reference_page(root: type[BaseModel]) -> str:
    """The whole page: the intro, then one table per section, nested sections after their parent's table."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the config's pydantic models by `make docs-reference`: "
        "edit their Field(description=...), not this page. -->",
        "",
        INTRO,
    ]
    for name, field in root.model_fields.items():
        lines += _section_lines(name, field, depth=2)
    return "\n".join(lines).rstrip() + "\n"


def key_link(root: type[BaseModel], loc: list[str]) -> str:
    """The reference entry of the longest documented prefix of the dotted key ``loc``.

    A key the config does not have (a typo) links to the section holding it, a
    ``method`` key to the section of the method that has it.
    """
    documented: list[str] = []
    models = [root]
    for part in loc:
        field = next((model.model_fields[part] for model in models if part in model.model_fields), None)
        if field is None:
            break
        documented.append(part)
        models = _sections_of(field.annotation)
    return f"{REFERENCE_PAGE}#{'.'.join(documented)}" if documented else REFERENCE_PAGE


def _section_lines(key: str, field: FieldInfo, depth: int) -> list[str]:
    """A section's heading (anchored at its key), its description, its keys' table, then its sub-sections."""
    sections = _sections_of(field.annotation)
    lines = [f"{'#' * min(depth, 4)} `{key}` {{#{key}}}", "", _description(key, field), ""]
    if len(sections) == 1:
        return lines + _table(key, sections[0], depth)
    lines += [f'<a id="{key}.name"></a>`{key}.name` picks one (default: {_default(field)}); each has its own keys:', ""]
    for section in sections:  # the method: one table per registered method's section, its name told above it
        name = section.model_fields["name"]
        lines += [f"With `{key}.name: {name.default}`: {_description(f'{key}.name', name)}", ""]
        lines += _table(key, section, depth, skip=("name",))
    return lines


def _table(key: str, section: type[BaseModel], depth: int, skip: tuple[str, ...] = ()) -> list[str]:
    rows, nested = ["| key | type | default | description |", "| --- | --- | --- | --- |"], []
    for name, field in section.model_fields.items():
        if name in skip:
            continue
        dotted = f"{key}.{name}"
        if _sections_of(field.annotation):
            rows.append(f"| `{dotted}` | section | {_cell(_default(field))} | see [below](#{dotted}) |")
            nested += _section_lines(dotted, field, depth + 1)
        else:
            rows.append(
                f'| <a id="{dotted}"></a>`{dotted}` | {_type(field)} | {_cell(_default(field))} | '
                f"{_cell(_description(dotted, field))} |"
            )
    return [*rows, "", *nested]


def _sections_of(annotation: Any) -> list[type[BaseModel]]:
    """The config sections a field holds: one, several (the method's union), or none for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [section for arg in typing.get_args(annotation) for section in _sections_of(arg)]


def _description(key: str, field: FieldInfo) -> str:
    """The field's description on one line, its mentions of other docs pages made links (which the build checks)."""
    if not field.description:
        raise ValueError(f"config key {key} has no Field(description=...): every key needs one for {REFERENCE_PAGE}")
    return _DOCS_PAGE.sub(r"[\1](\1)", " ".join(field.description.split()))


def _type(field: FieldInfo) -> str:
    """The type in words, with the field's bounds and pattern (``integer >= 1, or null``)."""
    args = typing.get_args(field.annotation)
    optional = typing.get_origin(field.annotation) in (UnionType, typing.Union) and NoneType in args
    annotation = typing.Union[tuple(arg for arg in args if arg is not NoneType)] if optional else field.annotation  # noqa: UP007 (built at run time)
    limits = [
        f"{sign} {getattr(item, attr)}"
        for item in field.metadata
        for kind, attr, sign in _CONSTRAINTS
        if isinstance(item, kind)
    ]
    limits += [f"matching `{item.pattern}`" for item in field.metadata if getattr(item, "pattern", None)]
    text = " ".join([_type_name(annotation), ", ".join(limits)]).strip()
    return _cell(f"{text}, or null" if optional else text)


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{member}`" for member in annotation)
    if origin in (UnionType, typing.Union):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return "mapping"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    raise ValueError(f"no name for the config type {annotation!r}: add it to pipeline/config/reference.py")


def _default(field: FieldInfo) -> str:
    """The default as YAML would write it; a whole section's default is its method or its own keys' defaults."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        named = "name" in type(value).model_fields
        return f"`{value.model_dump(include={'name'})['name']}`" if named else "its keys' defaults"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    value = to_jsonable_python(value)  # a Path, an enum member, a list of them: as YAML spells them
    if isinstance(value, str) and "\n" in value:
        return json.dumps(value)  # YAML too, and on one line
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _cell(text: str) -> str:
    """Text safe inside a table cell: a ``|`` would end it."""
    return text.replace("|", "\\|")
