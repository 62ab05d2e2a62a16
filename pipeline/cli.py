"""``selfimprove``: a thin command line over the pipeline's library API.

Each command maps to one library call; the CLI only parses arguments, prints
with rich and turns library errors into a clear message and a non-zero exit
(``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.config.settings import (
    ConfigError,
    check_tasks,
    config_changes,
    config_data,
    dump_config,
    format_changes,
    load_config,
)
from pipeline.engine.adapters import AdapterError
from pipeline.engine.generation import GenerationError
from pipeline.engine.stage_context import StageContext
from pipeline.engine.vllm_server import ServerError
from pipeline.run.files import BUFFER_NAME, CONFIG_NAME, SUMMARY_NAME
from pipeline.run.layout import RunDir, RunDirError
from pipeline.run.lifecycle import StageError, check_planned
from pipeline.run.lock import RunLockedError, run_held, run_lock
from pipeline.run.manifest import DamagedOutputError, Manifest, StageRecord, StageState, parse_stage_key
from pipeline.system.atomic import CorruptFileError

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
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set method.turns=3 (repeatable).")
]

_STATE_STYLE = {
    StageState.PENDING: "dim",
    StageState.RUNNING: "yellow",
    StageState.DONE: "green",
    StageState.FAILED: "bold red",
}


_OPEN_ERRORS = (RunDirError, ConfigError, FileNotFoundError, CorruptFileError)
_debug = False


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an error, not just its message.")
    ] = False,
) -> None:
    """Turn SIGTERM into the same clean shutdown as Ctrl-C (servers stopped, manifest updated)."""
    global _debug
    _debug = debug
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _locked(root: Path) -> ExitStack:
    """The run directory's lock, held until the returned stack closes; another holder ends this command, naming it."""
    stack = ExitStack()
    try:
        stack.enter_context(run_lock(root))
    except RunLockedError as exc:
        _fail(str(exc))
    return stack


def _fail(message: str, code: int = 1) -> NoReturn:
    """Print the error and exit; under ``--debug``, re-raise the exception being handled, traceback and all."""
    if _debug and sys.exc_info()[1] is not None:
        raise
    err_console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


@app.command()
def run(
    config: ConfigArg,
    overrides: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and print the resolved config, write nothing.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Start a run: eval(0), then rollout -> curate -> train -> eval per iteration.

    Example: selfimprove run configs/quickstart.yaml --set run.name=mine
    """
    try:
        resolved = load_config(config, overrides or [])
        counts = check_tasks(resolved)
    except ConfigError as exc:
        _fail(str(exc))
    if dry_run:
        console.print(dump_config(resolved), markup=False, highlight=False)
        console.print(
            f"[green]config OK[/]: {counts['train']} train and {counts['eval']} eval tasks; "
            f"the run would write to {resolved.run_dir}"
        )
        return
    try:
        run_dir = RunDir.create(resolved)
    except RunDirError as exc:
        _fail(str(exc))
    console.print(f"run directory: {run_dir.root}")
    with _locked(run_dir.root):
        _drive(run_dir, progress)


@app.command()
def resume(run_dir: RunDirArg, overrides: SetOpt = None, progress: ProgressOpt = True) -> None:
    """Continue an interrupted run from its first unfinished stage, redoing damaged stages and those built on them.

    --set changes the run's config from here on (say, more iterations); the manifest records the change.

    Example: selfimprove resume runs/mine
    """
    from pipeline.runner.loop import redo_damaged

    try:
        run = RunDir.open(run_dir, overrides or [])
    except _OPEN_ERRORS as exc:
        _fail(str(exc))
    with _locked(run.root):
        _amend_or_check(run, overrides or [])
        for key, reason in redo_damaged(run).items():
            err_console.print(f"[yellow]redoing {key}[/]: {escape(reason)}")
        nxt = run.manifest.first_unfinished()
        if nxt is None:
            console.print("all stages are done; nothing to resume")
        else:
            console.print(f"resuming {run.root} at iter_{nxt[0]}/{nxt[1]}")
        _drive(run, progress)


def _amend_or_check(run: RunDir, overrides: list[str]) -> None:
    """Apply ``resume --set`` to the run, saying what changed; without it, check the run's tasks as they are."""
    try:
        if overrides:
            for key, change in run.amend(overrides).items():
                console.print(f"[yellow]config changed[/]: {key}: {escape(change)}")
        else:
            check_tasks(run.config)
    except (RunDirError, ConfigError) as exc:
        _fail(str(exc))


def _stage_errors() -> tuple[type[BaseException], ...]:
    """The errors a stage raises for a reason the user can act on (shown as a message, not a traceback)."""
    return (ServerError, AdapterError, GenerationError, StageError, ConfigError, CorruptFileError, DamagedOutputError)


def _drive(run: RunDir, progress: bool) -> None:
    """Run the loop with a header per stage; on failure or Ctrl-C say how to resume, then print the report."""
    from pipeline.runner.loop import run_loop

    def announce(iteration: int, stage: str) -> None:
        console.rule(f"iter {iteration}: {stage}")

    try:
        with _exit_on_interrupt(f"continue with `selfimprove resume {run.root}`"):
            run_loop(run, show_progress=progress, on_stage=announce)
    except _stage_errors() as exc:
        _fail(f"{exc}\nfix the cause, then continue with `selfimprove resume {run.root}`")
    _print_report(run.root)


@contextmanager
def _exit_on_interrupt(how_to_continue: str) -> Iterator[None]:
    """End the command on Ctrl-C (or SIGTERM) with code 130 and a line on how to continue.

    By the time the interrupt gets here, the stage lifecycle has marked a
    run's interrupted stage failed and the servers and training processes
    are stopped (each block that started them has exited), so the run
    resumes from that stage.
    """
    try:
        yield
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]; {how_to_continue}")
        raise typer.Exit(130) from None


@app.command()
def status(run_dir: RunDirArg) -> None:
    """Show each stage's state, attempts, finish time and outputs from the run manifest.

    Example: selfimprove status runs/mine
    """
    try:
        manifest = Manifest.load(run_dir)
    except _OPEN_ERRORS as exc:
        _fail(str(exc))
    table = Table(title=f"run {manifest.run_name} ({run_dir})")
    table.add_column("stage", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("finished", no_wrap=True)
    table.add_column("outputs")
    table.add_column("error", overflow="fold")
    damaged = {key: manifest.damage(*parse_stage_key(key)) for key in manifest.stages}
    held = run_held(run_dir)
    for key, record in manifest.stages.items():
        table.add_row(
            key,
            _state_cell(record, bool(damaged[key]), held),
            str(record.attempts),
            _short_time(record.finished_at),
            "\n".join(_shown_outputs(key, record.outputs)),
            escape("\n".join(p.removeprefix(f"{run_dir}/") for p in damaged[key]) or record.error or ""),
        )
    console.print(table)
    nxt = manifest.first_unfinished()
    interrupted = [key for key, record in manifest.stages.items() if record.state is StageState.RUNNING and not held]
    if broken := [key for key, problems in damaged.items() if problems]:
        console.print(
            f"[bold red]damaged[/]: {', '.join(broken)}; `selfimprove resume {escape(str(run_dir))}` "
            "redoes them and the stages built on them"
        )
    elif interrupted:
        console.print(
            f"[bold yellow]interrupted[/]: {', '.join(interrupted)} (no process drives the run); "
            f"`selfimprove resume {escape(str(run_dir))}` continues it"
        )
    else:
        console.print("all stages done" if nxt is None else f"next: iter_{nxt[0]}/{nxt[1]}")
    _print_buffer(run_dir)


def _shown_outputs(key: str, outputs: Iterable[str]) -> list[str]:
    """A stage's recorded outputs as its directory holds them: files by name, a directory once (``merged/``)."""
    depth = len(Path(key).parts)
    return list(
        dict.fromkeys(
            parts[0] + ("/" if len(parts) > 1 else "")
            for parts in (Path(name).parts[depth:] for name in outputs)
            if parts
        )
    )


def _state_cell(record: StageRecord, damaged: bool, held: bool) -> str:
    """A stage's state for the table: ``damaged`` over any state, and ``interrupted`` for a stage the manifest
    says is running while no process holds the run's lock (its process was killed, even by SIGKILL)."""
    if damaged:
        return "[bold red]damaged[/]"
    if record.state is StageState.RUNNING and not held:
        return "[bold yellow]interrupted[/]"
    return f"[{_STATE_STYLE[record.state]}]{record.state.value}[/]"


def _print_buffer(run_dir: Path) -> None:
    """ExIt runs: the newest buffer's size, depth histogram and score quantiles."""
    from pipeline.methods.exit.buffer import BufferError, LearnabilityBuffer

    found = sorted(run_dir.glob(f"iter_*/train/{BUFFER_NAME}"), key=lambda p: int(p.parts[-3].removeprefix("iter_")))
    if not found:
        return
    try:
        stats = LearnabilityBuffer.load(found[-1]).stats()
    except BufferError as exc:
        err_console.print(f"[yellow]{exc}[/]")
        return
    table = Table(title=f"ExIt buffer ({found[-1].relative_to(run_dir)})")
    table.add_column("size", justify="right")
    table.add_column("depth histogram")
    table.add_column("mean depth", justify="right")
    table.add_column("learnability S quantiles (min q25 q50 q75 max; S <= 0.25)")
    quantiles = stats["score_quantiles"]
    table.add_row(
        f"{stats['size']}/{stats['capacity']}",
        "  ".join(f"{depth}: {count}" for depth, count in stats["depth_histogram"].items()) or "-",
        "-" if stats["mean_depth"] is None else f"{stats['mean_depth']:.2f}",
        " ".join(f"{value:.3f}" for value in quantiles.values()) if quantiles else "-",
    )
    console.print(table)


TargetArg = Annotated[Path, typer.Argument(help="Run directory, or a config (YAML) to start a new run from.")]


def _open_or_create_run(target: Path, overrides: list[str] | None) -> RunDir:
    """A run directory as given, or the one a config names (created on first use)."""
    try:
        if target.is_dir():
            return RunDir.open(target)
        config = load_config(target, overrides or [])
        if not (config.run_dir / CONFIG_NAME).exists():
            check_tasks(config)
            return RunDir.create(config)
        run = RunDir.open(config.run_dir)
        if changes := config_changes(run.manifest.config, config_data(config)):
            _fail(
                f"{run.root} holds a run with another config ({format_changes(changes)}); pass the run directory, "
                f"set a new run.name, or change the run with `selfimprove resume {run.root} --set KEY=VALUE`"
            )
        return run
    except _OPEN_ERRORS as exc:
        _fail(str(exc))


def _run_stage(stage: str, run: RunDir, iteration: int, progress: bool) -> Path:
    """Run one stage of ``run``, by its method's function, holding the run's lock; stage errors as messages.

    A stage outside the run's plan is refused before anything is written.
    """
    again = f"run it again, or continue the run with `selfimprove resume {run.root}`"
    with _locked(run.root), _exit_on_interrupt(again):
        try:
            check_planned(run.manifest, iteration, stage)
            return run.config.method.run_stage(stage, StageContext(run, iteration, progress=progress))
        except _stage_errors() as exc:
            _fail(str(exc))


def _short_time(iso: str | None) -> str:
    """``2026-11-23T01:40:12+00:00`` -> ``11-23 01:40:12`` (UTC), to keep the table narrow."""
    return iso[5:19].replace("T", " ") if iso else ""


@app.command()
def rollout(
    target: TargetArg,
    iteration: IterationOpt = 1,
    overrides: SetOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Generate and grade multi-turn revision trajectories with iteration K-1's model.

    Example: selfimprove rollout runs/mine -i 1
    """
    path = _run_stage("rollout", _open_or_create_run(target, overrides), iteration, progress)
    console.print(f"[green]rollouts[/]: {path}")


@app.command()
def curate(run_dir: RunDirArg, iteration: IterationOpt = 1) -> None:
    """Turn iteration K's rollouts into the weighted training set (RISE).

    Example: selfimprove curate runs/mine -i 1
    """
    from pipeline.methods.rise.curation import format_summary

    try:
        run = RunDir.open(run_dir)
    except _OPEN_ERRORS as exc:
        _fail(str(exc))
    path = _run_stage("curate", run, iteration, progress=False)
    console.print(format_summary(json.loads((path.parent / SUMMARY_NAME).read_text())))
    console.print(f"[green]training set[/]: {path}")


@app.command()
def train(
    target: TargetArg,
    iteration: IterationOpt = 1,
    overrides: SetOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Train iteration K's model (launched with accelerate): RISE on its curated data, ExIt by GRPO from its buffer.

    Example: selfimprove train runs/mine -i 1
    """
    path = _run_stage("train", _open_or_create_run(target, overrides), iteration, progress)
    console.print(f"[green]trained[/]: {path}")


@app.command()
def join(
    run_dir: RunDirArg,
    machine_rank: Annotated[int, typer.Option(min=1, help="This machine's rank (machine 0 runs the pipeline).")],
) -> None:
    """On another machine of a multi-machine run: take part in each train stage until training is done.

    Start it once, after `selfimprove run` on machine 0, in the same repository path with the run directory on a
    shared filesystem. Machine 0 writes the run's outputs and manifest; this machine's processes add only their
    own state to the checkpoints.


    Example: selfimprove join /shared/runs/gsm8k-2x8 --machine-rank 1
    """
    from pipeline.training.launch import TrainError, join_training

    def announce(iteration: int, attempt: int) -> None:
        console.rule(f"iter {iteration}: train (attempt {attempt}), machine {machine_rank}")

    try:
        codes = join_training(run_dir, machine_rank, announce)
    except (*_OPEN_ERRORS, TrainError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    failed = sum(code != 0 for code in codes)
    console.print(f"[green]training done[/]: {len(codes)} launch(es) on this machine, {failed} failed")


@app.command(name="eval")
def evaluate(
    run_dir: RunDirArg,
    iteration: IterationOpt = 0,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="Other eval tasks: a .jsonl file, or a task source as in tasks.*.source (a built-in or plugin name, "
            "module:attr, path/to/file.py:attr)."
        ),
    ] = None,
    turns: Annotated[int | None, typer.Option(min=2, help="Turns T (default: evaluation.turns).")] = None,
    samples: Annotated[
        int | None, typer.Option(min=1, help="Samples n per task (default: evaluation.samples).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate only the first N tasks (of --tasks, else of the run's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory; required with --tasks/--turns/--samples.")] = None,
    progress: ProgressOpt = True,
) -> None:
    """Evaluate iteration K's model (0 = base) without oracle feedback: pass@k per turn, m1@tT, p1@tT, mT@t1.

    Example: selfimprove eval runs/mine -i 2 --turns 5 --out runs/mine/eval-t5
    """
    from pipeline.eval.custom import run_custom_eval
    from pipeline.eval.evaluation import format_eval_table

    custom = any(value is not None for value in (tasks, turns, samples, limit))
    if custom and out is None:
        _fail("--tasks, --turns, --samples and --limit evaluate outside the run's plan: name an --out directory")
    try:
        run = RunDir.open(run_dir)
    except _OPEN_ERRORS as exc:
        _fail(str(exc))
    if out is None:
        path = _run_stage("eval", run, iteration, progress)
    else:
        errors: tuple[type[BaseException], ...] = (*_stage_errors(), RunLockedError)
        try:
            with _exit_on_interrupt("run the same command again to finish it"):
                path = run_custom_eval(run, iteration, out, tasks, turns, samples, limit, show_progress=progress)
        except errors as exc:
            _fail(str(exc))
    console.print(format_eval_table(json.loads(path.read_text())))
    console.print(f"[green]eval[/]: {path}")


@app.command()
def serve(
    config: ConfigArg,
    overrides: SetOpt = None,
    port: Annotated[int | None, typer.Option(help="Port (default: rollout.server.port, else a free one).")] = None,
) -> None:
    """Run the vLLM rollout service in the foreground until Ctrl-C: rollout.server.replicas servers, port, port+1, ...

    Point runs at them with `--set rollout.urls=[URL,...]` to keep them up between stages, or to use other hosts.


    Example: selfimprove serve configs/quickstart.yaml --port 8000
    """
    from pipeline.engine.model_store import resolve_model
    from pipeline.engine.vllm_server import replica_servers, start_servers

    try:
        resolved = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    try:
        servers = replica_servers(
            resolve_model(resolved.model.name_or_path), resolved.model, resolved.rollout.server, None, port=port
        )
    except ServerError as exc:
        _fail(str(exc))
    try:
        asyncio.run(start_servers(servers))
        urls = ", ".join(server.url for server in servers)
        console.print(f"[green]serving[/] {resolved.model.name_or_path} as 'base' at {urls} (Ctrl-C stops)")
        while all(server.is_running() for server in servers):
            time.sleep(1.0)
        exited = [f"{server.url} (code {server.exit_code})" for server in servers if not server.is_running()]
        _fail(f"vLLM server exited: {', '.join(exited)}")
    except ServerError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        for server in servers:
            server.stop()


@app.command()
def compare(
    paths: Annotated[list[Path], typer.Argument(help="Eval directories (runs/x/iter_2/eval) or run directories.")],
    iteration: Annotated[
        int | None,
        typer.Option(
            "--iteration", "-i", help="For run directories: this iteration's eval (default: the last finished)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Where compare.md, compare.json and compare.png go.")] = Path(
        "runs/compare"
    ),
) -> None:
    """Headline metrics of several evaluations of the same tasks, each difference from the first with its paired 95 % interval.

    Example: selfimprove compare runs/mine/iter_0/eval runs/mine
    """
    from pipeline.eval.compare import CompareError, compare_evals, comparison_table, resolve_eval, write_comparison

    try:
        comparison = compare_evals([resolve_eval(path, iteration) for path in paths])
        written = write_comparison(comparison, out)
    except (CompareError, DamagedOutputError, *_OPEN_ERRORS) as exc:
        _fail(str(exc))
    console.print(comparison_table(comparison))
    console.print(f"[green]compare[/]: {', '.join(map(str, written))}")


@app.command()
def export(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option(help="The folder to write (new or empty).")],
    iteration: Annotated[
        int | None, typer.Option("--iteration", "-i", help="The iteration whose model to export (1..N).")
    ] = None,
    adapter: Annotated[
        bool, typer.Option("--adapter", help="The PEFT adapter alone instead of merged weights.")
    ] = False,
    data: Annotated[
        bool, typer.Option("--data", help="Every iteration's trajectories and training sets as a dataset.")
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", help="Then upload the folder to this hub repo (private).")
    ] = None,
) -> None:
    """Export iteration K's model as a Hugging Face checkpoint with a model card, or (--data) the run's data as parquet.

    Example: selfimprove export runs/mine -i 2 --out exports/mine-iter2
    """
    import shlex
    import sys

    from pipeline.export.dataset import export_data
    from pipeline.export.model import ExportError, export_model
    from pipeline.export.model import push_to_hub as upload

    if data == (iteration is not None) or (data and adapter):
        _fail("export either a model (--iteration K, optionally --adapter) or the data (--data), one at a time")
    try:
        run = RunDir.open(run_dir)
        if data:
            path = export_data(run, out)
        else:
            command = shlex.join(["selfimprove", *sys.argv[1:]])
            assert iteration is not None, "a model export names its iteration (checked above)"
            path = export_model(run, iteration, out, adapter_only=adapter, command=command)
    except (*_OPEN_ERRORS, ExportError, DamagedOutputError) as exc:
        _fail(str(exc))
    console.print(f"[green]exported[/]: {path}")
    if push_to_hub:
        try:
            url = upload(path, push_to_hub, repo_type="dataset" if data else "model")
        except Exception as exc:  # huggingface_hub's errors (auth, network, names) share no narrower base
            _fail(f"upload to {push_to_hub} failed: {exc}")
        console.print(f"[green]pushed[/]: {url}")


@app.command()
def report(run_dir: RunDirArg) -> None:
    """Write report.md and the plots (accuracy by turn; sequential vs parallel) for a run, and print the table.

    Example: selfimprove report runs/mine
    """
    _print_report(run_dir)


@app.command()
def view(
    paths: Annotated[list[Path], typer.Argument(help="Run directories (every finished eval) or eval directories.")],
    out: Annotated[
        Path | None, typer.Option(help="The HTML file to write (default: viewer.html in the first path).")
    ] = None,
) -> None:
    """Every eval trajectory turn by turn, in one HTML file to open in a browser: filters by outcome, search, two evals side by side.

    Example: selfimprove view runs/quickstart
    """
    from pipeline.eval.viewer import ViewerError, write_viewer

    try:
        path = write_viewer(paths, out)
    except (ViewerError, DamagedOutputError, OSError, *_OPEN_ERRORS) as exc:
        _fail(str(exc))
    console.print(f"[green]viewer[/]: {path} (open it in a browser)")


@app.command()
def plugins() -> None:
    """List the graders and task sources a config can name: the built-in ones and those installed as plugins.

    Your own code needs no installing: name it as module:attr or path/to/file.py:attr (docs/your-own-task.md).

    Example: selfimprove plugins
    """
    from pipeline.tasks import task_source_names
    from rewards import grader_names
    from rewards.plugins import GRADER, TASK_SOURCE, installed_plugins

    table = Table("kind", "name", "from")
    for kind, builtins in ((GRADER, grader_names()), (TASK_SOURCE, task_source_names())):
        for name in builtins:
            table.add_row(kind.noun, name, "built-in")
        for plugin in installed_plugins(kind.group):
            shadowed = " [yellow](unused: a built-in has this name)[/]" if plugin.name in builtins else ""
            table.add_row(kind.noun, plugin.name, escape(plugin.origin) + shadowed)
    console.print(table)
    console.print(
        "your own, not installed: grader.name or tasks.*.source as module:attr or path/to/file.py:attr "
        "(docs/your-own-task.md)",
        markup=False,
    )


def _print_report(run_dir: Path) -> None:
    """Write and print the report; a done stage it reads whose files were damaged is refused, named."""
    from pipeline.eval.report import ReportError, collect_evals, report_table, write_report

    try:
        evals = collect_evals(run_dir)
        path = write_report(run_dir, evals)
        table = report_table(evals)
    except (ReportError, FileNotFoundError, CorruptFileError, DamagedOutputError) as exc:
        _fail(str(exc))
    console.print(table)
    console.print(f"[green]report[/]: {path}")


if __name__ == "__main__":
    app()
