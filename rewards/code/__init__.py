"""The ``code`` grader (:mod:`rewards.code.grader`) and its parts.

``extract`` finds the program in a response, ``suite`` turns the reference into tests, ``examples`` finds the
inputs the answer key observes, ``session`` runs one grade's two processes: the sandboxed ``candidate`` and
the trusted ``checker``, which exchange plain data over ``wire``. Layering: the graders import this package,
this package imports :mod:`rewards.sandbox`, never the other way.
"""

from rewards.code.grader import CodeGrader

__all__ = ["CodeGrader"]
