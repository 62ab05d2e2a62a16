"""The names of the files and folders in a run directory, in one place (docs/run-directory.md).

Every stage, the report, ``compare``, the exporters and the viewer find
each other's outputs by these names, so a name is spelled here once and
imported wherever a path is built. The tests keep their literals: they
check the on-disk contract these names make.
"""

from __future__ import annotations

# The run's root.
CONFIG_NAME = "config.yaml"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "run.lock"
REPORT_NAME = "report.md"
ACCURACY_PLOT = "accuracy_by_turn.png"
CURVES_PLOT = "sequential_vs_parallel.png"
TRANSITIONS_PLOT = "transitions.png"
TRACKING_DIR = "tracking"
LEDGER_NAME = "logged.json"
"""Under ``tracking/``: which stages' metrics were already logged."""
TENSORBOARD_DIR = "tensorboard"
"""Under ``tracking/``: TensorBoard's event files."""
RUN_ID_NAME = "run_id"
"""Under ``tracking/``: the W&B run the run continues."""
SUPERSEDED_DIR = "superseded"
"""Where ``resume`` moves a damaged stage and the stages built on it."""

VIEWER_NAME = "viewer.html"
"""``selfimprove view``'s page of the run's last eval."""

# Every stage's directory.
TIMINGS_NAME = "timings.jsonl"


def server_log_name(replica: int) -> str:
    """The log of a stage's managed vLLM server: ``vllm_server.log`` for replica 0, ``vllm_server.i.log`` after."""
    return "vllm_server.log" if replica == 0 else f"vllm_server.{replica}.log"


# A rollout stage (and an eval, which rolls out too).
ROLLOUTS_NAME = "rollouts.jsonl"
PARTIAL_NAME = "rollouts.partial.jsonl"
THROUGHPUT_NAME = "throughput.json"

# RISE's curate stage.
TRAIN_NAME = "train.jsonl"
SUMMARY_NAME = "summary.json"

# A train stage.
LOG_NAME = "train.log"
CHECKPOINTS_NAME = "checkpoints"
ADAPTER_NAME = "adapter"
MODEL_NAME = "model"
"""A full fine-tune's trained model, where a LoRA run has its ``adapter``."""
MERGED_NAME = "merged"
TRAIN_SUMMARY_NAME = "train_summary.json"
PROGRESS_NAME = "progress.jsonl"
"""The optimizer steps the worker's trainer has done, a line each (``training/progress.py``)."""
BUFFER_NAME = "buffer.json"
"""ExIt's learnability buffer."""
GROUPS_NAME = "groups.jsonl"
"""ExIt's groups of improvement steps, one a line."""
SYNC_NAME = "sync"
"""ExIt's adapter synced to the rollout server while it trains."""
SERVERS_NAME = "servers.json"
"""The rollout servers ExIt's worker generates from."""

# An eval stage.
EVAL_NAME = "eval.json"
EVAL_SPEC_NAME = "eval_spec.json"
"""A custom eval's (``selfimprove eval --out``) model, tasks, turns and samples."""
CURVES_NAME = "curves.json"
TASK_METRICS_NAME = "task_metrics.jsonl"
PER_TASK_NAME = "per_task.jsonl"
PARALLEL_DIR = "parallel"
"""The parallel baseline's extra first-turn answers (its own ``rollouts.jsonl``)."""
