"""A rich progress bar for rollout stages: trajectories, tokens/s, accuracy per turn."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.rollouts.records import TrajectoryRecord


class RolloutProgress:
    """Tracks finished trajectories; shows running accuracy of each turn's chosen action."""

    def __init__(self, description: str, total: int, already_done: int = 0, enabled: bool = True) -> None:
        self.description = description
        self.total = total
        self.already_done = already_done
        self.tokens = 0
        self.correct: dict[int, int] = {}
        self.seen: dict[int, int] = {}
        self._started = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total, completed=already_done, stats="")

    def __enter__(self) -> RolloutProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, record: TrajectoryRecord) -> None:
        for turn in record.turns:
            self.tokens += turn.completion_tokens
            t = turn.turn
            self.seen[t] = self.seen.get(t, 0) + 1
            self.correct[t] = self.correct.get(t, 0) + int(turn.grade.correct)
        self._progress.update(self._task, advance=1, stats=self.stats_text())

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(time.monotonic() - self._started, 1e-9)

    def throughput(self) -> dict[str, float | int]:
        """This attempt's trajectories, completion tokens and tokens/s (a resumed stage counts only its own)."""
        return {
            "trajectories": self.total - self.already_done,
            "completion_tokens": self.tokens,
            "tokens_per_s": self.tokens_per_second,
        }

    def stats_text(self) -> str:
        accuracy = " ".join(f"t{t}:{self.correct[t] / self.seen[t]:.0%}" for t in sorted(self.seen))
        return f"{self.tokens_per_second:,.0f} tok/s  acc {accuracy}"
