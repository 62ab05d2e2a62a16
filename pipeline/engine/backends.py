"""Open the generation backend a config asks for, and close it whatever happens.

``rollout.backend: vllm`` with no ``rollout.urls`` starts managed vLLM
servers, ``rollout.server.replicas`` of them side by side, each on its own
port and GPUs (all stopped when the block exits, also on errors and Ctrl-C),
unless the stage is given the run loop's keeper of servers
(:mod:`pipeline.engine.server_keeper`): then the servers of the stage before
are reused when they serve the same model, and stay up for the next stage.
With URLs it uses those servers; either way requests are spread across them.
``rollout.backend: hf`` loads the model in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pipeline.config.choices import Backend
from pipeline.config.sections import TeacherSection
from pipeline.config.settings import PipelineConfig, RolloutSection
from pipeline.engine.generation import GenerationBackend
from pipeline.engine.model_store import resolve_model
from pipeline.engine.server_keeper import ServerKeeper
from pipeline.engine.service_client import Endpoint, ServiceClient, discover_model_name
from pipeline.engine.vllm_server import VLLMServer, replica_servers, start_servers

SERVED_BASE_NAME = "base"


@asynccontextmanager
async def open_learner(
    config: PipelineConfig, log_dir: Path, keeper: ServerKeeper | None = None
) -> AsyncIterator[GenerationBackend]:
    rollout = config.rollout
    if rollout.backend == Backend.HF:
        from pipeline.engine.hf_backend import HFBackend

        backend = await asyncio.to_thread(
            HFBackend, resolve_model(config.model.name_or_path), config.model.dtype, rollout.hf_batch_size
        )
        try:
            yield backend
        finally:
            await backend.aclose()
        return

    owned: list[VLLMServer] = []  # the servers this block starts and stops (none when a keeper holds them)
    try:
        if rollout.urls:
            endpoints = [Endpoint(url.rstrip("/")) for url in rollout.urls]
            base_model = await discover_model_name(endpoints[0].url)
        else:
            model_path = resolve_model(config.model.name_or_path)
            if keeper is not None:
                # Started from this (the main) thread, not a worker thread: a server dies with the thread
                # that started it (pipeline.system.processes), and these must outlive this stage's event loop.
                servers = await keeper.servers(model_path, config.model, rollout.server, log_dir, SERVED_BASE_NAME)
            else:
                servers = owned = replica_servers(model_path, config.model, rollout.server, log_dir, SERVED_BASE_NAME)
                await start_servers(servers)
            endpoints = [Endpoint(server.url, server) for server in servers]
            base_model = SERVED_BASE_NAME
        client = ServiceClient(
            endpoints,
            base_model=base_model,
            max_concurrency=rollout.max_concurrency,
            request_timeout_s=rollout.request_timeout_s,
            max_retries=rollout.max_retries,
            max_restarts=rollout.server.max_restarts,
        )
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        for server in owned:
            server.stop()


@asynccontextmanager
async def open_teacher(
    teacher: TeacherSection | None, rollout: RolloutSection
) -> AsyncIterator[GenerationBackend | None]:
    """A client of ``teacher``'s server, asked as ``rollout`` asks the learner's; None without a teacher."""
    if teacher is None:
        yield None
        return
    client = ServiceClient(
        [Endpoint(teacher.url.rstrip("/"))],
        base_model=teacher.model,
        max_concurrency=rollout.max_concurrency,
        request_timeout_s=rollout.request_timeout_s,
        max_retries=rollout.max_retries,
        api_key=teacher.api_key,
    )
    try:
        yield client
    finally:
        await client.aclose()
