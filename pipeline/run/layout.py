"""The run directory: where a run's config, manifest and stage outputs live.

Layout::

    runs/<name>/
      config.yaml          the resolved config the run uses (fixed at the start; see RunDir.amend)
      manifest.json        stage states, timestamps, output digests, the config the run started with
      iter_0/eval/...      the base model's evaluation
      iter_K/rollout/...   iteration K's stages
      iter_K/curate/...
      iter_K/train/...
      iter_K/eval/...
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config.choices import Finetune
from pipeline.config.settings import (
    PipelineConfig,
    apply_overrides,
    check_tasks,
    config_changes,
    config_data,
    dump_config,
    format_changes,
    parse_config,
    read_config_file,
)
from pipeline.run.files import ADAPTER_NAME, CHECKPOINTS_NAME, CONFIG_NAME, MERGED_NAME, MODEL_NAME, TRAIN_SUMMARY_NAME
from pipeline.run.manifest import Manifest, StageState, parse_stage_key, planned_stages
from pipeline.system.atomic import write_text_atomic

TRAIN_STAGE = "train"
FIXED_KEYS = ("run.name", "run.output_dir", "method.name")
"""What names the run and its kind of plan: a change of these is a new run, never an amendment."""


class RunDirError(RuntimeError):
    """A run directory that cannot be created or opened as asked."""


@dataclass
class RunDir:
    root: Path
    config: PipelineConfig
    manifest: Manifest

    @classmethod
    def create(cls, config: PipelineConfig) -> RunDir:
        """Start a new run; refuses to overwrite an existing one (use ``resume`` for that)."""
        root = config.run_dir
        if (root / CONFIG_NAME).exists():
            raise RunDirError(f"{root} already holds a run; continue it with `selfimprove resume {root}`")
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / CONFIG_NAME, dump_config(config))
        manifest = Manifest.create(
            root, config.run.name, config.run.iterations, config.method.name, config=config_data(config)
        )
        return cls(root, config, manifest)

    @classmethod
    def open(cls, root: str | Path, overrides: Sequence[str] = ()) -> RunDir:
        """The run in ``root``; refused when its ``config.yaml`` was edited since the run started.

        ``overrides`` are the ``--set`` items ``resume`` is about to apply
        with :meth:`amend`: ``config.yaml`` may already hold them (edited by
        hand, or by an amendment cut short before the manifest recorded it).
        """
        root = Path(root)
        if not (root / CONFIG_NAME).is_file():
            raise RunDirError(f"{root} is not a run directory (no {CONFIG_NAME})")
        manifest = Manifest.load(root)
        data = fixed_config_data(root, manifest, overrides)
        return cls(root, parse_config(data, source=str(root / CONFIG_NAME)), manifest)

    def amend(self, overrides: list[str]) -> dict[str, str]:
        """Change the run's config by ``--set`` overrides for the rest of the run; returns the changes by key.

        The caller holds the run's lock. The amended config is checked whole
        (task files read) before anything is written. ``config.yaml`` is
        written first, then the manifest records the new config, the
        overrides and the plan it gives (more iterations add pending stages),
        so an amendment cut short between the two completes when it is run
        again. Refused: a change of :data:`FIXED_KEYS`, and a plan that
        drops a finished stage (fewer iterations than the run has done).
        """
        recorded = self.manifest.config
        assert recorded is not None, "create and open record the run's config in the manifest"
        if fixed := [key for key in config_changes(recorded, _overridden(recorded, overrides)) if key in FIXED_KEYS]:
            raise RunDirError(
                f"--set cannot change {', '.join(fixed)} of the run in {self.root}: start a new run instead"
            )
        config = _amended(recorded, overrides)
        check_tasks(config)
        data = config_data(config)
        changes = config_changes(recorded, data)
        plan = planned_stages(config.run.iterations, config.method.name)
        if dropped := _done_outside(self.manifest, plan):
            raise RunDirError(
                f"--set would drop {', '.join(dropped)} of the run in {self.root}, which are done: "
                "a run keeps its finished stages; start a new run instead"
            )
        if changes:
            write_text_atomic(self.root / CONFIG_NAME, dump_config(config))
            self.manifest.amend_config(data, overrides, changes, plan)
        self.config = config
        return changes

    def stage_dir(self, iteration: int, stage: str) -> Path:
        """The stage's directory, created: for the stage that writes there."""
        path = stage_path(self.root, iteration, stage)
        path.mkdir(parents=True, exist_ok=True)
        return path


def fixed_config_data(root: Path, manifest: Manifest, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``root/config.yaml`` as plain data, unvalidated; a :class:`RunDirError` listing the keys it changed when it
    differs from the config the run started with (or, with ``overrides``, from that config amended by them).

    A run's stages, report and exports all read its config, so an edit after
    the start would quietly change what its finished stages mean (fewer
    iterations drop finished ones from the report; more find nothing to
    resume). A run whose manifest predates the recorded config adopts
    ``config.yaml`` as it is: ``manifest.config`` is set here, and the next
    write of the manifest (by a command that holds the run's lock) records it.
    """
    path = root / CONFIG_NAME
    data = read_config_file(path)
    if manifest.config is None:
        manifest.config = data
    if data == manifest.config or (overrides and data == config_data(_amended(manifest.config, overrides))):
        return data
    changes = format_changes(config_changes(manifest.config, data))
    raise RunDirError(
        f"{path} differs from the config the run started with ({changes}); restore it, start a new run under "
        f"another run.name, or change this run with `selfimprove resume {root} --set KEY=VALUE`"
    )


def _done_outside(manifest: Manifest, plan: list[tuple[int, str]]) -> list[str]:
    """The done stages that ``plan`` leaves out, by key."""
    return [
        key
        for key, record in manifest.stages.items()
        if record.state is StageState.DONE and parse_stage_key(key) not in plan
    ]


def _overridden(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of a run's config data with ``--set`` overrides applied, unvalidated."""
    return apply_overrides(copy.deepcopy(data), list(overrides))


def _amended(data: dict[str, Any], overrides: Sequence[str]) -> PipelineConfig:
    """A run's config data with ``--set`` overrides applied, validated."""
    return parse_config(_overridden(data, overrides), source="the run's config with --set")


def stage_path(root: Path, iteration: int, stage: str) -> Path:
    """``root/iter_K/<stage>``, not created: for whoever only reads a stage's files."""
    return Path(root) / f"iter_{iteration}" / stage


def final_dir(run: RunDir, iteration: int) -> Path:
    """Where iteration ``iteration``'s trained adapter (or, for full fine-tuning, model) lands: its model."""
    name = MODEL_NAME if run.config.training.finetune == Finetune.FULL else ADAPTER_NAME
    return stage_path(run.root, iteration, TRAIN_STAGE) / name


def merged_dir(run: RunDir, iteration: int) -> Path | None:
    """Where the adapter merged into the base model lands (``rollout.serve_merged``), None when none is wanted."""
    if not run.config.rollout.serve_merged or run.config.training.finetune == Finetune.FULL:
        return None
    return stage_path(run.root, iteration, TRAIN_STAGE) / MERGED_NAME


def checkpoints_dir(run: RunDir, iteration: int) -> Path:
    return stage_path(run.root, iteration, TRAIN_STAGE) / CHECKPOINTS_NAME


def summary_path(run: RunDir, iteration: int) -> Path:
    return stage_path(run.root, iteration, TRAIN_STAGE) / TRAIN_SUMMARY_NAME
