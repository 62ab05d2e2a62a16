"""The CLI run in process, and what its one-line errors look like."""

from __future__ import annotations

from typer.testing import CliRunner

from pipeline.cli import app


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, *names: str) -> None:
    assert code == 1, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    for name in names:
        assert name in lines[0], (name, output)
