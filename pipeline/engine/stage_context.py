"""What a stage runs with: the run, the iteration, the servers it may share, whether it shows progress."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.engine.server_keeper import ServerKeeper
from pipeline.run.layout import RunDir


@dataclass(frozen=True)
class StageContext:
    """One stage attempt's arguments, passed by the run loop (or the CLI, for one stage) to the stage's function."""

    run: RunDir
    iteration: int
    servers: ServerKeeper | None = None
    """The run loop's servers, kept between stages that serve the same model; None: the stage starts its own."""
    progress: bool = True
    """Show progress bars on the terminal."""
