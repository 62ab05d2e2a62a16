"""Checkpoints of a training attempt: find the newest complete one, resume from it, publish the final weights.

An interrupted train stage resumes from its newest complete checkpoint and
ends with the weights of an uninterrupted one; the final directory appears
whole or not at all.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from accelerate.utils import broadcast_object_list
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from pipeline.system.atomic import publish_dir

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest completely written checkpoint in ``output_dir``, or None.

    Trainer writes a checkpoint in place and its ``trainer_state.json``
    last, so one cut short by a kill lacks that file (or holds a torn one)
    and must not be resumed from.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = {int(m.group(1)): path for path in output_dir.iterdir() if (m := _CHECKPOINT.match(path.name))}
    for step in sorted(steps, reverse=True):
        if _is_complete(steps[step]):
            return str(steps[step])
    return None


def checkpoint_step(checkpoint: str | Path | None) -> int:
    """The step a checkpoint directory holds (0 for None: training starts at the beginning)."""
    if not checkpoint:
        return 0
    if (match := _CHECKPOINT.match(Path(checkpoint).name)) is None:
        raise ValueError(f"{checkpoint} is not a checkpoint directory ({PREFIX_CHECKPOINT_DIR}-<step>)")
    return int(match.group(1))


def _is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def train(trainer: Trainer, final_dir: str | Path, *, resume: bool = True) -> Path:
    """Train, continuing from the newest checkpoint in the output dir when ``resume``; save the model or adapter.

    Resuming restores optimizer, scheduler, RNG and data order, so an
    interrupted training stage ends with the same weights as a whole one.
    The final directory appears complete or not at all (:func:`save_final`).
    """
    checkpoint = agreed_checkpoint(trainer) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    return save_final(trainer, Path(final_dir))


def agreed_checkpoint(trainer: Trainer) -> str | None:
    """The newest complete checkpoint as the main process sees it, sent to every process.

    All processes must resume from the same step, or their collectives no
    longer match; a process on another machine could see the shared
    directory a moment out of date, so it does not look for itself.
    """
    output_dir = trainer.args.output_dir
    found = [last_checkpoint(output_dir) if output_dir and trainer.accelerator.is_main_process else None]
    if trainer.accelerator.num_processes > 1:
        broadcast_object_list(found)
    return found[0]


def save_final(trainer: Trainer, final_dir: Path) -> Path:
    """Save the model or adapter to a scratch directory beside ``final_dir``, then rename it into place.

    Every process takes part in saving (sharded weights are gathered
    collectively); only the main one writes files and renames.
    """
    partial = final_dir.with_name(f".{final_dir.name}.partial")
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by an attempt killed while saving
    accelerator.wait_for_everyone()
    trainer.save_model(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_dir(partial, final_dir)
    return final_dir
