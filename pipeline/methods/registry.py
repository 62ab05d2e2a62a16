"""The run's method, found through the registry (:mod:`pipeline.config.methods`).

Each method's package holds a ``stages`` module whose ``METHOD``
(:class:`pipeline.methods.base.Method`) maps every stage of its plan to the
function that runs it. The run loop, the CLI and the exporter reach a
method through here, so they never ask which method a run uses.
"""

from __future__ import annotations

import importlib

from pipeline.config.methods import METHOD_PACKAGES
from pipeline.config.settings import PipelineConfig
from pipeline.methods.base import Method


def method_of(config: PipelineConfig) -> Method:
    """The method of ``config`` (its stages module is imported here: stages pull in heavy libraries)."""
    return importlib.import_module(f"{METHOD_PACKAGES[config.method.name]}.stages").METHOD
