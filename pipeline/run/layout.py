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
        path = self.root / f"iter_{iteration}" / stage
        path.mkdir(parents=True, exist_ok=True)
        return path
