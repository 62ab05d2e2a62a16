"""``selfimprove``: a thin command line over the pipeline's library API.

Each command maps to one library call; the CLI only parses arguments, prints
with rich and turns library errors into a clear message and a non-zero exit.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.adapters import AdapterError
from pipeline.config import ConfigError, dump_config, load_config
from pipeline.generation import GenerationError
from pipeline.manifest import Manifest, StageState
from pipeline.run_dir import RunDir, RunDirError
from pipeline.vllm_server import ServerError

app = typer.Typer(
    name="selfimprove",
    help="Teach a language model to improve its own answers over turns (RISE, ExIt).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", exists=False)]
RunDirArg = Annotated[Path, typer.Argument(help="Run directory, e.g. runs/quickstart.")]
IterationOpt = Annotated[int, typer.Option("--iteration", "-i", help="Iteration number K.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config key: --set rollout.turns=3 (repeatable).")
]

_STATE_STYLE = {
    StageState.PENDING: "dim",
    StageState.RUNNING: "yellow",
    StageState.DONE: "green",
    StageState.FAILED: "bold red",
}


@app.callback()
def _main() -> None:
    """Turn SIGTERM into the same clean shutdown as Ctrl-C (servers stopped, manifest updated)."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _not_yet(command: str, issue: str) -> None:
    """Commands whose implementation has not landed say so instead of faking output."""
    err_console.print(f"[yellow]`selfimprove {command}` is not available yet: it arrives with {issue}.[/]")
    raise typer.Exit(2)


@app.command()
def run(
    config: ConfigArg,
    overrides: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and print the resolved config, write nothing.")] = False,
) -> None:
    """Start a run: eval(0), then rollout -> curate -> train -> eval per iteration."""
    try:
        resolved = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    if dry_run:
        console.print(dump_config(resolved), markup=False, highlight=False)
        console.print(f"[green]config OK[/]: the run would write to {resolved.run_dir}")
        return
    _not_yet("run", "the RISE issue (#4)")


@app.command()
def resume(run_dir: RunDirArg) -> None:
    """Continue an interrupted run from its first unfinished stage."""
    _not_yet("resume", "the RISE issue (#4)")


@app.command()
def status(run_dir: RunDirArg) -> None:
    """Show each stage's state, attempts, finish time and outputs from the run manifest."""
    try:
        manifest = Manifest.load(run_dir)
    except (FileNotFoundError, RunDirError) as exc:
        _fail(str(exc))
    table = Table(title=f"run {manifest.run_name} ({run_dir})")
    table.add_column("stage", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("finished", no_wrap=True)
    table.add_column("outputs")
    table.add_column("error", overflow="fold")
    for key, record in manifest.stages.items():
        table.add_row(
            key,
            f"[{_STATE_STYLE[record.state]}]{record.state.value}[/]",
            str(record.attempts),
            _short_time(record.finished_at),
            "\n".join(Path(name).name for name in record.outputs),
            record.error or "",
        )
    console.print(table)
    nxt = manifest.first_unfinished()
    console.print("all stages done" if nxt is None else f"next: iter_{nxt[0]}/{nxt[1]}")


TargetArg = Annotated[Path, typer.Argument(help="Run directory, or a config (YAML) to start a new run from.")]


def _open_or_create_run(target: Path, overrides: list[str] | None) -> RunDir:
    """A run directory as given, or the one a config names (created on first use)."""
    try:
        if target.is_dir():
            return RunDir.open(target)
        config = load_config(target, overrides or [])
        if not (config.run_dir / "config.yaml").exists():
            return RunDir.create(config)
        run = RunDir.open(config.run_dir)
        if run.config != config:
            _fail(f"{run.root} holds a run with another config; pass the run directory, or set a new run.name")
        return run
    except (ConfigError, RunDirError, FileNotFoundError) as exc:
        _fail(str(exc))


def _short_time(iso: str | None) -> str:
    """``2026-11-23T01:40:12+00:00`` -> ``11-23 01:40:12`` (UTC), to keep the table narrow."""
    return iso[5:19].replace("T", " ") if iso else ""


@app.command()
def rollout(
    target: TargetArg,
    iteration: IterationOpt = 1,
    overrides: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Generate and grade multi-turn revision trajectories with iteration K-1's model."""
    from pipeline.rollout_stage import run_rollout_stage

    run_dir = _open_or_create_run(target, overrides)
    try:
        path = run_rollout_stage(run_dir, iteration, show_progress=progress)
    except (ServerError, AdapterError, GenerationError) as exc:
        _fail(str(exc))
    console.print(f"[green]rollouts[/]: {path}")


@app.command()
def curate(run_dir: RunDirArg, iteration: IterationOpt = 1) -> None:
    """Turn iteration K's rollouts into the weighted training set (RISE)."""
    from pipeline.curate_stage import CurateError, run_curate_stage
    from pipeline.curation import format_summary

    try:
        path = run_curate_stage(RunDir.open(run_dir), iteration)
    except (RunDirError, CurateError) as exc:
        _fail(str(exc))
    console.print(format_summary(json.loads((path.parent / "summary.json").read_text())))
    console.print(f"[green]training set[/]: {path}")


@app.command()
def train(run_dir: RunDirArg, iteration: IterationOpt) -> None:
    """Fine-tune iteration K's adapter with TRL + PEFT under accelerate."""
    _not_yet("train", "the RISE issue (#4)")


@app.command(name="eval")
def evaluate(run_dir: RunDirArg, iteration: IterationOpt) -> None:
    """Evaluate iteration K's model: pass@k per turn without oracle feedback."""
    _not_yet("eval", "the RISE issue (#4)")


@app.command()
def serve(
    config: ConfigArg,
    overrides: SetOpt = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: rollout.server.port, else a free one).")] = None,
) -> None:
    """Run the vLLM rollout service in the foreground until Ctrl-C.

    Point runs at it with `--set rollout.urls=[URL]` to keep one server up between stages.
    """
    from pipeline.model_store import resolve_model
    from pipeline.vllm_server import VLLMServer

    try:
        resolved = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    server = VLLMServer(
        model_path=resolve_model(resolved.model.name_or_path),
        model=resolved.model,
        settings=resolved.rollout.server,
        log_path=None,
        port=port or resolved.rollout.server.port,
    )
    try:
        with server:
            console.print(f"[green]serving[/] {resolved.model.name_or_path} as 'base' at {server.url} (Ctrl-C stops)")
            while server.is_running():
                time.sleep(1.0)
            _fail(f"the vLLM server exited with code {server.exit_code}")
    except ServerError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("stopped")


@app.command()
def report(run_dir: RunDirArg) -> None:
    """Write report.md and plots for a run."""
    _not_yet("report", "the RISE issue (#4)")


if __name__ == "__main__":
    app()
