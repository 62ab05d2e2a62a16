"""``selfimprove view``: one self-contained HTML file of every trajectory, read back with an HTML parser."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.eval.stage import write_eval_outputs
from pipeline.run.layout import RunDir
from pipeline.system.atomic import write_json_atomic, write_jsonl_atomic
from rewards import get_grader
from tests.helpers.eval_dirs import TURNS, hand_evaluated_run
from tests.helpers.eval_records import graded_record, make_record

runner = CliRunner()
HOSTILE = "</script><script>alert(1)</script><!-- & <b>bold</b>"


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of each ``<script>`` by id (None: no id)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: dict[str | None, str] = {}
        self._script: str | None | bool = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs).get("id")
            self.scripts[self._script] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = False

    def handle_data(self, data: str) -> None:
        if self._script is not False:
            self.scripts[self._script] += data

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.scripts["viewer-data"])


def boxed(*answers: str | None) -> list[str]:
    """Responses giving these answers (None: a response with no final answer)."""
    return [f"The answer is \\boxed{{{a}}}." if a is not None else "I do not know." for a in answers]


def write_eval_dir(
    out: Path, trajectories: dict[str, list[list[str]]], grader: str = "numeric", reference: str = "7"
) -> Path:
    """An eval directory as the eval stage writes it: rollouts.jsonl (answer keys as graded) and the summaries
    from real grades (one response list per sample)."""
    records = [
        graded_record(task, sample, responses, grader, reference)
        for task, samples in trajectories.items()
        for sample, responses in enumerate(samples)
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "rollouts.jsonl", [record.to_dict() for record in records])
    write_eval_outputs(
        out,
        records,
        None,
        get_grader(grader),
        TURNS,
        len(next(iter(trajectories.values()))),
        seed=0,
        history_window=None,
    )
    return out


def finish_eval(run: RunDir, iteration: int, trajectories: dict[str, list[list[str]]]) -> None:
    out = run.stage_dir(iteration, "eval")
    write_eval_dir(out, trajectories)
    run.manifest.start(iteration, "eval")
    run.manifest.complete(iteration, "eval", sorted(out.iterdir()))


BASE = {"t0": [boxed("5", "5", "5"), boxed("5", "7", "7")], "t1": [boxed("7", "7", "7"), boxed("7", "5", "5")]}
BETTER = {"t0": [boxed("5", "7", "7"), boxed("7", "7", "7")], "t1": [boxed("7", "7", "7"), boxed("7", "7", "7")]}


def view(*paths: Path, out: Path | None = None) -> Page:
    """Run ``selfimprove view`` and parse the file it wrote (default: the first path's viewer.html)."""
    result = runner.invoke(app, ["view", *map(str, paths), *(["--out", str(out)] if out else [])])
    assert result.exit_code == 0, result.output
    return Page((out or paths[0] / "viewer.html").read_text(encoding="utf-8"))


def test_a_run_gives_one_self_contained_file_with_base_and_last_eval_side_by_side(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path)
    finish_eval(run, 0, BASE)
    finish_eval(run, 1, BETTER)
    write_eval_dir(run.stage_dir(2, "eval"), BASE)  # written but not done: left out
    result = runner.invoke(app, ["view", str(run.root)])
    assert result.exit_code == 0, result.output
    page = Page((run.root / "viewer.html").read_text(encoding="utf-8"))
    linked = [(tag, attrs) for tag, attrs in page.tags if {"src", "href"} & set(attrs)]
    assert linked == [] and not any(tag in ("link", "iframe", "img") for tag, _ in page.tags)
    assert set(page.scripts) == {"viewer-data", None}
    assert page.tags[[t for t, _ in page.tags].index("script")][1]["type"] == "application/json"
    payload = page.payload
    assert [ev["label"] for ev in payload["evals"]] == ["demo/iter_0 (base)", "demo/iter_1"]
    assert [task["id"] for task in payload["tasks"]] == ["t0", "t1"]
    assert payload["tasks"][0]["reference"] == "7" and payload["tasks"][0]["prompt"] == "What is 3 + 4?"
    base_t0 = payload["evals"][0]["tasks"]["0"]
    assert [[turn["parsed"] for turn in t["turns"]] for t in base_t0] == [["5", "5", "5"], ["5", "7", "7"]]
    turn = base_t0[1]["turns"][0]
    assert turn == {
        "response": "The answer is \\boxed{5}.",
        "parsed": "5",
        "correct": False,
        "feedback": "Your answer is incorrect.",
    }
    # The page opens on the first eval against the last one.
    assert "left: 0, right: DATA.evals.length - 1" in page.scripts[None]


def test_outcome_labels_match_a_hand_count(tmp_path: Path) -> None:
    eval_dir = write_eval_dir(
        tmp_path / "ev",
        {
            "a": [boxed("5", "7", "7"), boxed("7", "5", "7"), boxed("5", "6", "5")],
            "b": [boxed("7", "7", "7"), boxed(None, "5", None), boxed("5", None, "5")],
            "c": [boxed("7", "7", "7"), boxed(None, None, None), boxed("7", "7", "7")],
        },
    )
    records = [json.loads(line) for line in (eval_dir / "rollouts.jsonl").read_text().splitlines()]
    errored = graded_record("c", 0, boxed("7"), "numeric", "7").to_dict()  # right, then cut off: a flip to no answer
    errored["error"] = "the server went away"
    write_jsonl_atomic(eval_dir / "rollouts.jsonl", [errored if r["key"] == "c#0" else r for r in records])
    payload = view(eval_dir).payload
    labels = {
        (task["id"], t["sample"]): t["outcomes"]
        for i, task in enumerate(payload["tasks"])
        for t in payload["evals"][0]["tasks"][str(i)]
    }
    assert labels == {
        ("a", 0): ["fixed"],
        ("a", 1): ["fixed", "flipped"],
        ("a", 2): ["repeated", "never_right"],
        ("b", 0): ["always_right"],
        ("b", 1): ["never_right"],  # no answer, 5, no answer: neither 5 nor no answer repeats a wrong answer
        ("b", 2): ["repeated", "never_right"],  # 5, no answer, 5: the 5 repeats
        ("c", 0): ["flipped"],
        ("c", 1): ["never_right"],
        ("c", 2): ["always_right"],
    }
    assert payload["outcomes"] == ["fixed", "flipped", "repeated", "never_right", "always_right"]
    errored_view = payload["evals"][0]["tasks"]["2"][0]
    assert errored_view["error"] == "the server went away" and len(errored_view["turns"]) == 1


def test_answers_repeat_by_the_graders_classes_as_in_the_eval(tmp_path: Path) -> None:
    """2 after \\sqrt{4} repeats a wrong answer under the math grader, though their keys as graded differ."""
    responses = ["\\boxed{\\sqrt{4}}", "\\boxed{2}", "\\boxed{3}"]
    eval_dir = write_eval_dir(tmp_path / "ev", {"t": [responses]}, grader="math", reference="3")
    write_json_atomic(eval_dir / "eval_spec.json", {"grader": {"name": "math", "options": {}}})
    keys = [turn["grade"]["answer_key"] for turn in json.loads((eval_dir / "rollouts.jsonl").read_text())["turns"]]
    assert keys[0] != keys[1]
    trajectory = view(eval_dir).payload["evals"][0]["tasks"]["0"][0]
    assert trajectory["outcomes"] == ["fixed", "repeated"]


def test_model_output_shows_as_text_and_cannot_break_out_of_the_data(tmp_path: Path) -> None:
    eval_dir = write_eval_dir(tmp_path / "ev", {"t0": [[HOSTILE, *boxed("7", "7")]], "t1": [boxed("7", "7", "7")]})
    page = view(eval_dir)
    text = (eval_dir / "viewer.html").read_text(encoding="utf-8")
    assert "alert(1)</script>" not in text and "<script>alert" not in text and "<b>" not in text
    assert [tag for tag, _ in page.tags].count("script") == 2  # the data block and the page's own code
    assert page.payload["evals"][0]["tasks"]["0"][0]["turns"][0]["response"] == HOSTILE
    code = page.scripts[None]
    assert "innerHTML" not in code and "insertAdjacentHTML" not in code and "document.write" not in code


@pytest.mark.slow
def test_ten_thousand_trajectories_are_paged(tmp_path: Path) -> None:
    eval_dir = tmp_path / "big"
    eval_dir.mkdir()
    records = [make_record(f"task-{i}", sample, ["7", "5"]) for i in range(5000) for sample in range(2)]
    write_jsonl_atomic(eval_dir / "rollouts.jsonl", [record.to_dict() for record in records])
    write_json_atomic(eval_dir / "eval.json", {"turns": 2, "samples": 2, "n_tasks": 5000})
    write_json_atomic(eval_dir / "curves.json", {"k": [1, 2]})
    page = view(eval_dir)
    payload = page.payload
    assert len(payload["tasks"]) == 5000
    assert sum(len(t) for t in payload["evals"][0]["tasks"].values()) == 10_000
    assert all(t["outcomes"] == ["flipped"] for ts in payload["evals"][0]["tasks"].values() for t in ts)
    assert payload["page_size"] == 50
    code = page.scripts[None]
    assert "const PAGE_SIZE = DATA.page_size;" in code
    assert "found.slice((state.page - 1) * PAGE_SIZE, state.page * PAGE_SIZE).map(renderTask)" in code
    assert not any(tag == "section" for tag, _ in page.tags)  # tasks are drawn by the page, a page at a time


def test_two_eval_dirs_side_by_side_into_out(tmp_path: Path) -> None:
    base = write_eval_dir(tmp_path / "base", BASE)
    better = write_eval_dir(tmp_path / "better", BETTER)
    out = tmp_path / "pages" / "both.html"
    out.parent.mkdir()
    payload = view(base, better, out=out).payload
    assert [ev["label"] for ev in payload["evals"]] == ["base", "better"]
    flips = [[t["outcomes"] for t in ev["tasks"]["1"]] for ev in payload["evals"]]
    assert flips == [[["always_right"], ["flipped", "repeated"]], [["always_right"], ["always_right"]]]
    assert not (base / "viewer.html").exists()


def test_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    damaged = hand_evaluated_run(tmp_path)
    finish_eval(damaged, 0, BASE)
    with open(damaged.stage_dir(0, "eval") / "rollouts.jsonl", "a") as handle:
        handle.write("{}\n")
    cases = [
        (tmp_path / "empty", "neither an eval directory (no eval.json) nor a run directory"),
        (damaged.root, "iter_0/eval is damaged"),
    ]
    for path, message in cases:
        result = runner.invoke(app, ["view", str(path)])
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
        assert not (path / "viewer.html").exists()


def test_a_run_without_a_finished_eval_has_nothing_to_view(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path)
    result = runner.invoke(app, ["view", str(run.root)])
    assert result.exit_code == 1
    assert "has no finished eval yet" in result.output and not (run.root / "viewer.html").exists()


def test_the_report_points_to_the_viewer(tmp_path: Path) -> None:
    run = hand_evaluated_run(tmp_path)
    finish_eval(run, 0, BASE)
    result = runner.invoke(app, ["report", str(run.root)])
    assert result.exit_code == 0, result.output
    assert (
        "selfimprove view" in (run.root / "report.md").read_text()
        and "viewer.html" in (run.root / "report.md").read_text()
    )
