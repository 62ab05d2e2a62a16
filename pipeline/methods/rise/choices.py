"""The allowed values of RISE's own keys that its code branches on (see pipeline/config/choices.py)."""

from __future__ import annotations

from pipeline.config.choices import Choice


class Selection(Choice):
    """Which turns of a trajectory become examples (``method.selection``; :func:`~.curation.selected_turns`)."""

    ALL = "all"
    BETTER = "better"
    BEST = "best"
    SUCCESS = "success"


class LossNormalization(Choice):
    """What a batch's weighted loss is divided by (``method.loss_normalization``; :mod:`~.weighted_sft`)."""

    WEIGHTS = "weights"
    MEAN = "mean"
