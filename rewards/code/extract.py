"""Finding the program in a model response.

Models answer code tasks in three shapes, all handled here:

1. Markdown: one or more fenced blocks (```` ```python ````). The last block
   that defines the entry point wins: models often show a draft or a usage
   example before the final version. Blocks tagged with another language
   (``bash``, ``text``) are ignored unless there is nothing else.
2. Bare code, possibly with prose around it.
3. A HumanEval-style completion: only the body of the function whose
   signature and docstring are in the prompt. The program is then the prompt
   followed by the body, exactly as HumanEval builds it.

A full program is run after the prompt's own code (:attr:`Program.context`),
so that helpers and imports the prompt defines (HumanEval/38's
``encode_cyclic``, ``from typing import List``) are there even when the
model did not repeat them; its own definitions replace the prompt's.

Nothing here runs or rejects code: a program that does not parse is still
returned, so that the ``SyntaxError`` reaches the model as feedback.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from rewards import python_ast

MAX_RESPONSE_CHARS = 100_000
"""Longer responses are cut to their last this many characters before searching."""

PYTHON_TAGS = frozenset({"", "python", "python3", "py", "py3"})
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w.+#-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from \S+ import |@)", re.MULTILINE)
_MAX_TRIMMED_LINES = 50


@dataclass(frozen=True)
class Program:
    """An extracted program.

    ``code`` is what the model wrote, as a runnable unit (for a completion:
    prompt plus body); ``context`` is prompt code to run before it (empty
    when ``code`` already includes the prompt); ``shape`` is ``fenced``,
    ``bare`` or ``completion``.
    """

    code: str
    context: str
    shape: str


def extract_program(response: str, entry_point: str | None = None, prompt: str | None = None) -> Program | None:
    """The program in ``response``, or None if it holds no code at all.

    ``prompt`` is the code the task showed (HumanEval's signature and
    docstring); it is ignored unless it parses as Python.
    """
    response = response[-MAX_RESPONSE_CHARS:]
    blocks = fenced_blocks(response)
    shape = "fenced"
    if not blocks and not _FENCE.search(response):  # empty fences are no code, not bare code
        shape = "bare"
        blocks = [response] if response.strip() else []
    if not blocks:
        return None
    prompt = prompt_code(prompt) or None
    context = prompt or ""
    for block in reversed(blocks):
        if entry_point is None or defines(block, entry_point):
            return Program(_code_part(block, shape), context, shape)
    if prompt and entry_point:
        for block in reversed(blocks):
            body = completion_body(prompt, block, entry_point)
            if body is not None:
                return Program(_join(prompt, body), "", "completion")
    return Program(_code_part(blocks[-1], shape), context, shape)


def prompt_code(prompt: object) -> str:
    """The prompt if it is Python code (a signature to complete, helpers to
    run before the program), else "" (prose, or no prompt at all)."""
    return prompt if isinstance(prompt, str) and _parses(prompt) else ""


def fenced_blocks(text: str) -> list[str]:
    """Contents of the fenced code blocks, Python ones only when there are any.

    An unclosed last fence (the response was cut off) counts as a block.
    """
    found = [(tag.lower(), textwrap.dedent(body)) for tag, body in _FENCE.findall(text)]
    found = [(tag, body) for tag, body in found if body.strip()]
    python = [body for tag, body in found if tag in PYTHON_TAGS]
    return python or [body for _, body in found]


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines function ``name`` at top level (by pattern, so
    that code with a syntax error elsewhere still counts)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.MULTILINE) is not None


def completion_body(prompt: str, text: str, entry_point: str) -> str | None:
    """``text`` as the body of the prompt's function, if it reads as one.

    Accepted when prompt + text parses and the entry point then has a body
    beyond its docstring; unindented text is tried indented too.
    """
    for body in (text, textwrap.indent(text, "    ")):
        module = _parse(_join(prompt, body))
        for node in module.body if module else []:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
                statements = node.body[1:] if _starts_with_docstring(node) else node.body
                if statements:
                    return body
    return None


def _code_part(text: str, shape: str) -> str:
    """The code in an unfenced response: from the first line that starts code
    to the last line that keeps it parseable (prose before and after dropped)."""
    if shape != "bare" or _parses(text):
        return text.strip("\n")
    start = _CODE_START.search(text)
    if start is None:
        return text.strip("\n")
    lines = text[start.start() :].splitlines()
    for end in range(len(lines), max(0, len(lines) - _MAX_TRIMMED_LINES), -1):
        candidate = "\n".join(lines[:end])
        if _parses(candidate):
            return candidate
    return "\n".join(lines)


def _join(prompt: str, body: str) -> str:
    """Prompt then body, as HumanEval joins them (its prompts end with a newline)."""
    return prompt + ("" if prompt.endswith("\n") else "\n") + body


def _parse(code: str) -> ast.Module | None:
    """The parsed module, or None for anything the parser rejects (including
    null bytes and nesting too deep for it)."""
    try:
        return python_ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _parses(code: str) -> bool:
    return _parse(code) is not None


def _starts_with_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = node.body[0]
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
