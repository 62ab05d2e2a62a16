"""The documentation: the site builds with warnings as errors, its configuration reference is the code's, the README
and the config errors point at pages and anchors that exist, and every command's help shows an example."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.reference import REFERENCE_PAGE, reference_page
from pipeline.config.settings import ConfigError, PipelineConfig, parse_config
from tests.helpers.runs import arithmetic_tasks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MINIMAL = {"tasks": arithmetic_tasks()}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def build(source: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of the site whose mkdocs.yml is in ``source``, as ``make docs`` runs it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(ROOT, out)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def anchors(site: Path, page: str) -> set[str]:
    """The ids of a built page (``cli.md`` is ``cli/index.html``; ``index.md`` the site's root)."""
    stem = page.removesuffix(".md")
    html = site / ("index.html" if stem == "index" else f"{stem}/index.html")
    return set(re.findall(r'id="([^"]+)"', html.read_text(encoding="utf-8")))


def test_the_site_builds_strictly_with_every_page_in_its_nav(site: Path) -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages = {next(iter(entry.values())) for entry in nav}
    assert pages == {path.name for path in (ROOT / "docs").glob("*.md")}
    assert all(anchors(site, page) for page in pages)


def test_broken_links_fail_the_build_each_named(tmp_path: Path) -> None:
    """A page that does not exist and an anchor that does not, in one build: strict mode names every warning."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (tmp_path / "docs" / "index.md").open("a", encoding="utf-8") as page:
        page.write("\n[gone](no-such-page.md)\n\n[gone](cli.md#no-such-anchor)\n")
    result = build(tmp_path, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr
    assert "no-such-anchor" in result.stdout + result.stderr


def test_the_configuration_reference_is_generated_from_the_code() -> None:
    assert (ROOT / REFERENCE_PAGE).read_text(encoding="utf-8") == reference_page(PipelineConfig), (
        f"{REFERENCE_PAGE} differs from the config's models: run `make docs-reference`"
    )


@pytest.mark.parametrize("method", ["rise", "exit"])
def test_every_config_key_has_an_entry_in_the_reference(site: Path, method: str) -> None:
    config = parse_config({**MINIMAL, "method": {"name": method}}).model_dump(mode="json")
    keys = set(_dotted_keys(config))
    assert "method.name" in keys and "rollout.server.port" in keys
    assert keys - {"tasks.train.options", "tasks.eval.options", "grader.options"} <= anchors(site, "configuration.md")


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """The leaf keys of a dumped config (a section's keys, not the section itself; a mapping option is a leaf)."""
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys += _dotted_keys(value, f"{dotted}.") if isinstance(value, dict) and value else [dotted]
    return keys


@pytest.mark.parametrize(
    ("patch", "anchor"),
    [
        ({"method": {"name": "rise", "turns": 0}}, "method.turns"),
        ({"rollout": {"sampling": {"top_p": 2}}}, "rollout.sampling.top_p"),
        ({"method": {"name": "exit", "kappa": "high"}}, "method.kappa"),
        ({"run": {"report_to": ["trackio"]}}, "run.report_to"),
        ({"rollout": {"turnz": 3}}, "rollout"),  # a typo: its section's entry
        ({"rollout": {"server": {"replicas": 2, "gpu_ids": [0]}}}, "rollout.server"),
    ],
)
def test_a_config_error_links_to_the_keys_reference_entry(site: Path, patch: dict, anchor: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, **patch})
    message = str(info.value)
    assert f"(see {REFERENCE_PAGE}#{anchor})" in message and "\n" not in message
    assert anchor in anchors(site, "configuration.md")


def test_the_readme_is_short_and_its_links_resolve(site: Path) -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250
    own = {_github_slug(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    links = [link for link in LINK.findall(text) if not link.startswith(("http://", "https://"))]
    assert links
    for link in links:
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in own, f"README links to #{anchor}, which is none of its headings"
            continue
        assert (ROOT / path).is_file(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in anchors(site, Path(path).name), f"README links to {link}: no such anchor"


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_command_shows_an_example_in_its_help() -> None:
    commands = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert {"run", "eval", "export", "compare"} <= set(commands)
    for command in commands:
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0
        assert f"Example: selfimprove {command} " in result.output, f"selfimprove {command} --help has no example"
