"""The first process of a sandbox run; see :mod:`rewards.sandbox` for the design.

Started by :class:`rewards.sandbox.LocalRunner` as
``python -I -S -B sandbox_boot.py CONFIG`` (a hex-encoded ``marshal`` dump,
parsed without importing anything) in a fresh session, with the
scratch directory as its working directory and a minimal environment. It
imports nothing from this project (it runs before ``sys.path`` holds it) and
does, in order:

1. Enter new network, PID and IPC namespaces (as root directly, with a
   mount namespace too; otherwise through a new user namespace, where the
   kernel allows one). What worked is written to the control pipe, so the
   runner can report the isolation that actually held.
2. In the mount namespace: make every mount private, put a size-limited
   tmpfs on the world-writable directories and on the scratch directory,
   and copy the program into the latter (:func:`private_filesystems`).
3. Fork an init process, PID 1 of the new PID namespace: when it dies, the
   kernel kills everything the program started, even processes that left
   the process group with ``setsid``. It drops to the run's own
   unprivileged uid (when root), arms ``PR_SET_PDEATHSIG`` (it dies with the
   bootstrap), sets ``no_new_privs`` and the resource limits, then forks
   the program, which execs the interpreter. Before that, still root, it
   mounts the PID namespace's own ``/proc`` (a mount made by PID 1 of the
   namespace shows that namespace). A set-up failure is written to the
   control pipe and ends init with :data:`SETUP_FAILED` before the program
   runs.
4. Init reaps orphans until the program ends, then writes the program's exit
   code (negative for a signal) to the control pipe. The program is not PID 1
   itself because PID 1 ignores every signal it has no handler for, SIGXCPU
   of the CPU limit and the program's own ``os.kill(os.getpid(), ...)``
   included. At the deadline the runner kills init (its pid is on the
   control pipe) and waits for this process, which exits only once init's
   namespace is empty.

Why a separate interpreter rather than ``preexec_fn``: ``preexec_fn`` runs
Python in a fork of the (multi-threaded) grading process, which the
``subprocess`` docs warn may deadlock, and it rules out ``vfork``. And a
process that unshares a PID namespace does not enter it itself; only its
children do, hence the fork in step 3.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import sys

SETUP_FAILED = 125
"""Exit code of a child whose sandbox set-up failed (the program never ran)."""

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""The usual world-writable directories, each replaced by a private tmpfs where it exists."""
PROGRAM_FILE = "main.py"
MAX_INODES = 16384
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _call(name: str, *args: object) -> None:
    """Call a libc function that returns 0 on success; raise OSError otherwise."""
    if getattr(_libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def enter_namespaces() -> list[str]:
    """Unshare what the kernel allows; return the names of the new namespaces.

    A mount namespace only as root: in a user namespace without uid maps the
    program could not create files in the tmpfs it would get (and no map is
    written, so that it stays ``nobody``).
    """
    entered = []
    wanted = [(CLONE_NEWNET, "net"), (CLONE_NEWPID, "pid"), (CLONE_NEWIPC, "ipc")]
    if os.geteuid() == 0:
        wanted.append((CLONE_NEWNS, "mnt"))
    else:
        try:
            _call("unshare", CLONE_NEWUSER)
        except OSError:
            return entered  # without a user namespace an unprivileged process can make no other
        entered.append("user")
    for flag, name in wanted:
        try:
            _call("unshare", flag)
            entered.append(name)
        except OSError:
            pass
    return entered


def mount(source: str | None, target: str, fstype: str | None, flags: int, options: str | None = None) -> None:
    """mount(2); OSError on failure."""
    encoded = [None if value is None else value.encode() for value in (source, target, fstype, options)]
    _call("mount", encoded[0], encoded[1], encoded[2], ctypes.c_ulong(flags), encoded[3])


def private_filesystems(config: dict) -> None:
    """In the new mount namespace: a fresh size-limited tmpfs on each of
    :data:`PRIVATE_TMPFS` and on the scratch directory, with the program
    copied into the latter.

    They vanish with the namespace, when the run's last process ends. The
    scratch path is made again after /tmp is replaced (it usually lives in
    /tmp), so the program sees the same path, now on its own tmpfs; the host
    scratch directory keeps only the program file.
    """
    with open(PROGRAM_FILE, "rb") as source:
        program = source.read()
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here may propagate to the host
    limit = f"size={config['tmp_mb']}m,nr_inodes={MAX_INODES}"
    for path in PRIVATE_TMPFS:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"{limit},mode=1777")
    scratch = config["scratch"]
    os.makedirs(scratch, exist_ok=True)
    owner = f",uid={config['uid']},gid={config['uid']}" if config["uid"] is not None else ""
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"{limit},mode=0700{owner}")
    os.chdir(scratch)
    with open(PROGRAM_FILE, "wb") as copy:
        copy.write(program)


def own_proc() -> bool:
    """Mount a /proc of the new PID namespace (called as its PID 1); False if the kernel refuses.

    Without it /proc would still list the host's processes, whose command
    lines are readable, though the PID namespace stops any signal to them.
    """
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        return False
    return True


def drop_privileges(uid: int, gid: int, keep_read_search: bool) -> None:
    """Become ``uid``/``gid`` with no supplementary groups.

    ``keep_read_search`` keeps CAP_DAC_READ_SEARCH, as an ambient capability
    so that it survives the exec: the runner asks for it when the interpreter
    itself is not readable by other users (a pyenv Python under a 0700
    ``/root``). The program can then read every file, but still write only
    where its uid may.
    """
    if keep_read_search:
        _call("prctl", PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if keep_read_search:
        bit = 1 << CAP_DAC_READ_SEARCH
        data = (_CapData * 2)()
        data[0].effective = data[0].permitted = data[0].inheritable = bit
        _call("capset", ctypes.byref(_CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data)
        _call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0)


def report(control: int, key: str, value: object) -> None:
    """One control message: a line ``key value`` (no newline inside the value)."""
    os.write(control, f"{key} {value}".replace("\n", " ").encode() + b"\n")


def confine(config: dict) -> None:
    """Everything the program inherits: uid, parent-death signal, no_new_privs, limits."""
    if config["uid"] is not None:
        drop_privileges(config["uid"], config["uid"], config["keep_read_search"])
    _call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    _call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    for name, soft, hard in config["rlimits"]:
        resource.setrlimit(getattr(resource, name), (soft, hard))


def run_init(config: dict, control: int, namespaces: list[str]) -> None:
    """PID 1 of the new namespace: confine, start the program, reap, report its exit; never returns."""
    try:
        if "mnt" in namespaces and "pid" in namespaces and own_proc():
            report(control, "procfs", 1)
        confine(config)
        # Not dumpable: the program (same uid) cannot open /proc/<init>/fd and
        # write to the control pipe. The exec below makes the program dumpable again.
        _call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
        program = os.fork()
        if program == 0:
            _call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # not inherited through fork
            os.set_inheritable(control, False)  # closed by a successful exec, open to report a failed one
            os.execv(config["argv"][0], config["argv"])
    except BaseException as exc:  # noqa: BLE001 - report any set-up failure, never run unconfined
        try:
            report(control, "error", f"sandbox set-up failed: {exc}")
        finally:
            os._exit(SETUP_FAILED)
    while True:  # as PID 1, also reap whatever the program orphans
        finished, status = os.wait()
        if finished == program:
            report(control, "exit", os.waitstatus_to_exitcode(status))
            os._exit(0)


def main() -> None:
    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    control = config["control_fd"]
    namespaces = enter_namespaces()
    report(control, "namespaces", ",".join(namespaces))
    if "mnt" in namespaces:
        try:
            private_filesystems(config)
        except OSError as exc:
            report(control, "error", f"sandbox set-up failed: {exc}")
            os._exit(SETUP_FAILED)
        report(control, "tmpfs", 1)
    init = os.fork()
    if init == 0:
        run_init(config, control, namespaces)
    report(control, "init", init)  # the runner kills init, not us, at the deadline
    os.close(control)
    _, status = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
