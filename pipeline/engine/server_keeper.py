"""Managed vLLM servers kept running between consecutive stages that serve the same model.

A run's stages serve models one after another: iteration K's eval and
iteration K+1's rollout both serve iteration K's model, ExIt's train and eval
stages both serve the base model with adapters loaded into it. Starting a
server costs tens of seconds (more on CPU), so the run loop holds a
:class:`ServerKeeper` while it walks the plan: a stage that opens a learner
(:func:`pipeline.engine.backends.open_learner`) asks the keeper, which hands
back the running servers when they serve the same model with the same
settings and otherwise stops them and starts new ones. The keeper reaches a
stage in its :class:`pipeline.engine.stage_context.StageContext`. The loop
releases the servers before a stage that serves nothing (training needs the
devices and the memory back). Outside the loop (a single ``selfimprove eval``
or ``rollout``) a stage has no keeper and starts and stops its own.

Only the servers are kept, never an HTTP client: a client belongs to the
event loop of the stage that made it. Kept servers are started from the main
thread (the thread of the stages' event loops), since a managed server
receives SIGTERM when the thread that started it ends
(:mod:`pipeline.system.processes`); one that a stage's client restarted from
a worker thread ends with that stage, and the next stage that asks for it
finds it stopped and starts a new one.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from pipeline.config.settings import ModelSection, ServerSection
from pipeline.engine.vllm_server import VLLMServer, replica_servers, start_servers


def serving_key(model_path: str, model: ModelSection, settings: ServerSection, served_name: str) -> str:
    """Everything a managed server is started with: two stages with equal keys can share its servers."""
    return "\n".join((model_path, model.model_dump_json(), settings.model_dump_json(), served_name))


class ServerKeeper:
    """Holds at most one set of replica servers (one model) between stages; they stop when its block ends."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._servers: list[VLLMServer] = []
        self.starts = 0

    async def servers(
        self, model_path: str, model: ModelSection, settings: ServerSection, log_dir: Path, served_name: str
    ) -> list[VLLMServer]:
        """Running servers of this model: the held ones if they match and still run, else new ones.

        New servers log into ``log_dir`` (the stage that started them); a
        stage that reuses them writes no server log of its own.
        """
        key = serving_key(model_path, model, settings, served_name)
        if key == self._key and all(server.is_running() for server in self._servers):
            return self._servers
        self.release()
        servers = replica_servers(model_path, model, settings, log_dir, served_name)
        try:
            await start_servers(servers)
        except BaseException:
            for server in servers:
                server.stop()
            raise
        self._key, self._servers = key, servers
        self.starts += 1
        return servers

    def release(self) -> None:
        """Stop the held servers (if any)."""
        servers, self._key, self._servers = self._servers, None, []
        for server in servers:
            server.stop()

    def __enter__(self) -> ServerKeeper:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()
