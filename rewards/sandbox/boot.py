"""The first process of a sandbox run; see :mod:`rewards.sandbox.runner` for the design.

Started by :class:`rewards.sandbox.runner.LocalRunner` as
``python -I -S -B boot.py CONFIG`` (a hex-encoded ``marshal`` dump,
parsed without importing anything) in a fresh session, with the
scratch directory as its working directory and a minimal environment. It
imports nothing from this project (it runs before ``sys.path`` holds it) and
does, in order:

1. Enter new network, PID and IPC namespaces (as root directly, with a
   mount namespace too; otherwise through a new user namespace, where the
   kernel allows one). What worked is written to the control pipe, so the
   runner can report the isolation that actually held.
2. In the mount namespace: make every mount private, hide the host's data
   (:func:`hide_host_files`: an empty read-only tmpfs on each directory the
   runner names, then the interpreter's own files bound back, read-only, at
   their paths), put a size-limited tmpfs on the world-writable directories
   and on the scratch directory, and copy the program into the latter
   (:func:`private_filesystems`). This script is already loaded by then, and
   the program is read before anything is hidden, so both may live in a
   hidden directory.
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
import stat
import sys

SETUP_FAILED = 125
"""Exit code of a child whose sandbox set-up failed (the program never ran)."""

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PRIVATE_TMPFS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""The usual world-writable directories, each replaced by a private tmpfs where it exists."""
PROGRAM_FILE = "main.py"
MAX_INODES = 16384
MASK_OPTIONS = "size=64k,nr_inodes=1024,mode=0755"
"""A mask holds only the directories and mount points of what is bound back; 0755 so the run's uid can pass."""
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
    entered: list[str] = []
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
    """In the new mount namespace: the host's data hidden (:func:`hide_host_files`),
    a fresh size-limited tmpfs on each of :data:`PRIVATE_TMPFS` and on the
    scratch directory, with the program copied into the latter.

    They vanish with the namespace, when the run's last process ends. The
    scratch path is made again after /tmp is replaced (it usually lives in
    /tmp), so the program sees the same path, now on its own tmpfs; the host
    scratch directory keeps only the program file. A scratch path inside a
    hidden directory is made in the mask before the mask turns read-only.
    """
    with open(PROGRAM_FILE, "rb") as source:
        program = source.read()
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here may propagate to the host
    scratch = config["scratch"]
    masks = hide_host_files(config["hide"], config["expose"])
    os.makedirs(scratch, exist_ok=True)
    for path in masks:
        mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    limit = f"size={config['tmp_mb']}m,nr_inodes={MAX_INODES}"
    for path in PRIVATE_TMPFS:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"{limit},mode=1777")
    os.makedirs(scratch, exist_ok=True)
    owner = f",uid={config['uid']},gid={config['uid']}" if config["uid"] is not None else ""
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"{limit},mode=0700{owner}")
    os.chdir(scratch)
    with open(PROGRAM_FILE, "wb") as copy:
        copy.write(program)


def hide_host_files(hidden: list[str], exposed: list[str]) -> list[str]:
    """Mask each directory of ``hidden`` with an empty tmpfs, then put each
    path of ``exposed`` (the interpreter's files) back where a mask covers it;
    return the masks, still writable (the caller makes them read-only).

    Both lists come from the runner, canonical and sorted (parents first): a
    directory under one already masked is gone and needs no mask of its own.
    What is exposed is opened (or, for a symlink, read) before anything is
    hidden, and bound back from that handle: its path no longer leads to it.
    A hidden directory inside what was bound back (the site-packages of the
    standard library's directory) is masked again.
    """
    kept = [(path, _hold(path)) for path in exposed if os.path.lexists(path)]
    umask = os.umask(0o022)  # the directories made in a mask must be passable by the run's uid
    try:
        masks = [path for path in hidden if _mask(path)]
        bound = [path for path, handle in kept if _restore(path, handle)]
        masks += [path for path in hidden if any(_inside(path, top) for top in bound) and _mask(path)]
    finally:
        os.umask(umask)
        for _, handle in kept:
            if isinstance(handle, int):
                os.close(handle)
    return masks


def _hold(path: str) -> int | str:
    """A handle on ``path`` that outlives its masking: a symlink's target, else an O_PATH descriptor."""
    if os.path.islink(path):
        return os.readlink(path)
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


def _mask(path: str) -> bool:
    """An empty tmpfs on ``path`` if it is a directory we can still see; whether one was mounted."""
    if not os.path.isdir(path):
        return False
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, MASK_OPTIONS)
    return True


def _restore(path: str, handle: int | str) -> bool:
    """Put ``path`` back inside a mask from its handle (read-only); whether it was bound
    (False for a path still visible, and for a symlink, which is made again instead)."""
    if os.path.lexists(path):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(handle, str):
        os.symlink(handle, path)
        return False
    if stat.S_ISDIR(os.fstat(handle).st_mode):
        os.mkdir(path)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    mount(f"/proc/self/fd/{handle}", path, None, MS_BIND)
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    return True


def _inside(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it (both canonical)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


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
    ``/root``) and nothing is hidden: the masks of :func:`hide_host_files`
    make it reachable, and the capability would get past them. The program
    can then read every file, but still write only where its uid may.
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
        report(control, "hidden", 1)
        # Through the masks' 0755 directories the interpreter is reachable without the
        # capability, which would get past them (open_by_handle_at reaches any file of
        # a filesystem): kept only where the runner found its own files unreadable.
        config["keep_read_search"] = config["read_search_hidden"]
    if config["keep_read_search"]:
        report(control, "read_search", 1)
    init = os.fork()
    if init == 0:
        run_init(config, control, namespaces)
    report(control, "init", init)  # the runner kills init, not us, at the deadline
    os.close(control)
    _, status = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


if __name__ == "__main__":
    main()
