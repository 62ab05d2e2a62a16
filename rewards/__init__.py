"""Verifiable graders and the feedback they produce."""

from rewards.base import GradeResult, Grader, get_grader, grader_names, register_grader
from rewards.code import CodeGrader
from rewards.math_equiv import MathGrader
from rewards.numeric import NumericGrader
from rewards.pool import GradingPool, default_pool, grade_batch

__all__ = [
    "CodeGrader",
    "GradeResult",
    "Grader",
    "GradingPool",
    "MathGrader",
    "NumericGrader",
    "default_pool",
    "get_grader",
    "grade_batch",
    "grader_names",
    "register_grader",
]
