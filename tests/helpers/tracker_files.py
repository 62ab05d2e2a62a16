"""Reading a run's tracker files back with the trackers' own readers: TensorBoard events, W&B offline logs."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.run.layout import RunDir
from pipeline.tracking.trackers import tensorboard_dir, tracking_dir


def scalars(run: RunDir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every event of ``tag`` in the run's TensorBoard directory, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tensorboard_dir(run)), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def wandb_history(run: RunDir) -> list[dict[str, Any]]:
    """Every history row of every offline W&B segment of the run (each process writes one), oldest first."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(tracking_dir(run).glob("wandb/offline-run-*/run-*.wandb")):
        for data in wandb_log_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def wandb_log_records(path: Path) -> Iterator[bytes]:
    """The records of a ``.wandb`` transaction log (wandb 0.31 ships no Python reader for its own files).

    The format is LevelDB's log: a 7-byte file header (``:W&B``, magic,
    version), then 32 KiB blocks of records, each with a 7-byte header
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last; 0 pads a block).
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield pending
            pending = b""
