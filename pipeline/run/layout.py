"""The run directory: where a run's config, manifest and stage outputs live.

Layout::

    runs/<name>/
      config.yaml          the resolved config the run uses (written once)
      manifest.json        stage states, timestamps, output digests
      iter_0/eval/...      the base model's evaluation
      iter_K/rollout/...   iteration K's stages
      iter_K/curate/...
      iter_K/train/...
      iter_K/eval/...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.system.atomic import write_text_atomic
from pipeline.config.settings import PipelineConfig, dump_config, load_config
from pipeline.run.manifest import Manifest

CONFIG_NAME = "config.yaml"
TRAIN_STAGE = "train"
TRAIN_SUMMARY_NAME = "train_summary.json"
CHECKPOINTS_NAME = "checkpoints"
MERGED_NAME = "merged"


class RunDirError(RuntimeError):
    """A run directory that cannot be created or opened as asked."""


@dataclass
class RunDir:
    root: Path
    config: PipelineConfig
    manifest: Manifest

    @classmethod
    def create(cls, config: PipelineConfig) -> "RunDir":
        """Start a new run; refuses to overwrite an existing one (use ``resume`` for that)."""
        root = config.run_dir
        if (root / CONFIG_NAME).exists():
            raise RunDirError(f"{root} already holds a run; continue it with `selfimprove resume {root}`")
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / CONFIG_NAME, dump_config(config))
        manifest = Manifest.create(root, config.run.name, config.run.iterations, config.method.name)
        return cls(root, config, manifest)

    @classmethod
    def open(cls, root: str | Path) -> "RunDir":
        root = Path(root)
        if not (root / CONFIG_NAME).is_file():
            raise RunDirError(f"{root} is not a run directory (no {CONFIG_NAME})")
        return cls(root, load_config(root / CONFIG_NAME), Manifest.load(root))

    def stage_dir(self, iteration: int, stage: str) -> Path:
        """The stage's directory, created: for the stage that writes there."""
        path = stage_path(self.root, iteration, stage)
        path.mkdir(parents=True, exist_ok=True)
        return path


def stage_path(root: Path, iteration: int, stage: str) -> Path:
    """``root/iter_K/<stage>``, not created: for whoever only reads a stage's files."""
    return Path(root) / f"iter_{iteration}" / stage


def final_dir(run: RunDir, iteration: int) -> Path:
    """Where iteration ``iteration``'s trained adapter (or, for full fine-tuning, model) lands: its model."""
    name = "model" if run.config.training.finetune == "full" else "adapter"
    return stage_path(run.root, iteration, TRAIN_STAGE) / name


def merged_dir(run: RunDir, iteration: int) -> Path | None:
    """Where the adapter merged into the base model lands (``rollout.serve_merged``), None when none is wanted."""
    if not run.config.rollout.serve_merged or run.config.training.finetune == "full":
        return None
    return stage_path(run.root, iteration, TRAIN_STAGE) / MERGED_NAME


def checkpoints_dir(run: RunDir, iteration: int) -> Path:
    return stage_path(run.root, iteration, TRAIN_STAGE) / CHECKPOINTS_NAME


def summary_path(run: RunDir, iteration: int) -> Path:
    return stage_path(run.root, iteration, TRAIN_STAGE) / TRAIN_SUMMARY_NAME
