"""The train stage's worker: the process ``accelerate launch`` starts (see :mod:`pipeline.training.launch`).

    python -m accelerate.commands.launch [OPTIONS] --module pipeline.training.worker RUN_DIR --iteration K

The launcher dies with the pipeline, but its children are its own: each
worker process ties its life to the launcher's before it imports the
training stack (the run's method imports it, e.g. :mod:`pipeline.methods.rise.training`), so that an
orphaned worker never trains on, writing checkpoints beside a rerun's.
"""

from __future__ import annotations

import argparse
import os

from pipeline.system.processes import die_with_parent

_LAUNCHER_PID = os.getppid()  # read at import, as close to exec as possible: see die_with_parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train one RISE or ExIt iteration (run by the train stage).")
    parser.add_argument("run_dir")
    parser.add_argument("--iteration", type=int, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    die_with_parent(_LAUNCHER_PID)
    args = parse_args(argv)
    from pipeline.run.layout import RunDir

    run = RunDir.open(args.run_dir)
    # The run's method section is its method (pipeline.methods.base.Method), which knows its own training.
    run.config.method.train_iteration(run, args.iteration)


if __name__ == "__main__":
    main()
