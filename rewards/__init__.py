"""Verifiable graders and the feedback they produce."""

from rewards.base import Grader, GradeResult, Placement, grader_names, register_grader
from rewards.code import CodeGrader
from rewards.math_equiv import MathGrader
from rewards.numeric import NumericGrader
from rewards.plugin_grader import get_grader
from rewards.pool import GradingPool, default_pool
from rewards.reasoning_gym import ReasoningGymGrader

__all__ = [
    "CodeGrader",
    "GradeResult",
    "Grader",
    "GradingPool",
    "MathGrader",
    "NumericGrader",
    "Placement",
    "ReasoningGymGrader",
    "default_pool",
    "get_grader",
    "grader_names",
    "register_grader",
]
