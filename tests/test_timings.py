"""Stage phases (pipeline.run.timings): recorded into the current stage's file, summed against the manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.run.files import TIMINGS_NAME
from pipeline.run.manifest import Manifest, StageState
from pipeline.run.timings import phase, recording_into, stage_times, timings_env


def test_phases_go_to_the_current_stage_file_and_nowhere_outside_a_stage(tmp_path: Path) -> None:
    with phase("generation"):  # no stage: nothing recorded, nothing raised
        pass
    path = tmp_path / TIMINGS_NAME
    with recording_into(path):
        with pytest.raises(RuntimeError), phase("training"):
            raise RuntimeError("a failed phase still took its time")
        with phase("merge"):
            pass
    assert [json.loads(line)["phase"] for line in path.read_text().splitlines()] == ["training", "merge"]
    with pytest.raises(ValueError, match="unknown phase 'sleeping'"):
        with recording_into(path), phase("sleeping"):
            pass


def test_a_launched_process_records_into_the_stage_file(tmp_path: Path) -> None:
    path = tmp_path / TIMINGS_NAME
    with recording_into(path):
        env = {**os.environ, **timings_env()}
    code = "from pipeline.run.timings import phase\nwith phase('merge'):\n    pass\n"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).resolve().parents[1])
    (line,) = [json.loads(text) for text in path.read_text().splitlines()]
    assert line["phase"] == "merge" and line["pid"] != os.getpid()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def test_stage_times_count_the_last_attempt_and_take_the_merge_out_of_training(tmp_path: Path) -> None:
    manifest = Manifest.create(tmp_path, "timed", iterations=1)
    start = 1_800_000_000.0
    for key, (begin, end) in {"iter_0/eval": (0, 100), "iter_1/train": (200, 300)}.items():
        record = manifest.stages[key]
        record.state, record.started_at, record.finished_at = StageState.DONE, _iso(start + begin), _iso(start + end)
    manifest.save()
    lines = {
        "iter_0/eval": [("server_start", 0, 20), ("generation", 20, 70)],
        # An earlier, failed attempt's phase (before this attempt's start) does not count.
        "iter_1/train": [("training", 150, 40), ("training", 200, 90), ("merge", 280, 10)],
    }
    for key, phases in lines.items():
        (tmp_path / key).mkdir(parents=True, exist_ok=True)
        (tmp_path / key / TIMINGS_NAME).write_text(
            "".join(
                json.dumps({"phase": name, "start": start + at, "seconds": seconds, "pid": 1}) + "\n"
                for name, at, seconds in phases
            )
        )

    times = {t.stage: t for t in stage_times(tmp_path)}
    assert set(times) == {"iter_0/eval", "iter_1/train"}  # the pending stages have no times
    assert times["iter_0/eval"].phases == {"server_start": 20, "generation": 70}
    assert times["iter_0/eval"].server_starts == 1 and times["iter_0/eval"].rest == 10
    assert times["iter_1/train"].phases == {"training": 80, "merge": 10}
    assert times["iter_1/train"].wall == 100 and times["iter_1/train"].rest == 10
