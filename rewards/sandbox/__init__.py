"""Run untrusted Python programs under resource limits, one fresh process each (see :mod:`rewards.sandbox.runner`).

The modules: ``runner`` (limits, results, the :class:`Runner` protocol and the local runner), ``hidden``
(which host files a run sees) and ``boot`` (the run's first process, started as a script; it imports nothing
from this project).
"""

from rewards.sandbox.runner import Limits, LocalRunner, Runner, SandboxResult, default_workers, error_result, run_many

__all__ = ["Limits", "LocalRunner", "Runner", "SandboxResult", "default_workers", "error_result", "run_many"]
