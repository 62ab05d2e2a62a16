"""Concurrent client of one or more OpenAI-compatible vLLM servers.

Requests are bounded by a semaphore, spread over the endpoints by fewest
requests in flight (data-parallel rollouts), retried with exponential backoff
on transient errors, and re-sent after a managed server that crashed has been
restarted and had its adapters loaded again.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import httpx

from pipeline.engine.generation import Completion, GenerationError, Message, SamplingParams
from pipeline.engine.vllm_server import ServerError, VLLMServer

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class Endpoint:
    """A server URL, and the managed server behind it when the pipeline started it."""

    url: str
    server: VLLMServer | None = None
    in_flight: int = 0
    restarts: int = 0
    generation: int = 0  # bumped on each restart, so waiters know recovery happened
    adapters: dict[str, str] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ServiceClient:
    """A :class:`~pipeline.engine.generation.GenerationBackend` over vLLM servers."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        base_model: str,
        max_concurrency: int = 64,
        request_timeout_s: float = 300.0,
        max_retries: int = 3,
        max_restarts: int = 2,
        api_key: str | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("ServiceClient needs at least one endpoint")
        self.endpoints = endpoints
        self.base_model = base_model
        self.max_retries = max_retries
        self.max_restarts = max_restarts
        self._semaphore = asyncio.Semaphore(max_concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=max_concurrency + 8, max_keepalive_connections=max_concurrency),
            headers=headers,
        )

    async def chat(
        self,
        messages: list[Message],
        n: int,
        params: SamplingParams,
        seed: int | None = None,
        adapter: str | None = None,
    ) -> list[Completion]:
        payload = {
            "model": adapter or self.base_model,
            "messages": messages,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "return_token_ids": True,
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        if seed is not None:
            payload["seed"] = seed
        async with self._semaphore:
            data = await self._post_with_recovery("/v1/chat/completions", payload)
        return _parse_completions(data, n)

    async def _post_with_recovery(self, path: str, payload: dict) -> dict:
        attempt = 0
        last_error = ""
        while attempt <= self.max_retries:
            endpoint = min(self.endpoints, key=lambda e: e.in_flight)
            generation = endpoint.generation
            endpoint.in_flight += 1
            try:
                response = await self._http.post(endpoint.url + path, json=payload)
            except httpx.TransportError as exc:
                last_error = f"{endpoint.url}: {type(exc).__name__}: {exc}"
                response = None
            finally:
                endpoint.in_flight -= 1
            if response is not None and response.status_code == 200:
                return response.json()
            if response is not None and response.status_code not in TRANSIENT_STATUS:
                raise GenerationError(f"{endpoint.url}{path}: HTTP {response.status_code}: {_error_text(response)}")
            if response is not None:
                last_error = f"{endpoint.url}: HTTP {response.status_code}: {_error_text(response)}"
            if await self._recover(endpoint, generation):
                continue  # the server was restarted: re-send without spending a retry
            attempt += 1
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise GenerationError(f"request failed after {self.max_retries} retries: {last_error}")

    async def _recover(self, endpoint: Endpoint, seen_generation: int) -> bool:
        """Restart a managed server that died; True when a restart happened since the request was sent."""
        if endpoint.server is None:
            return False
        async with endpoint.lock:
            if endpoint.generation != seen_generation:
                return True  # another request already restarted it
            server = endpoint.server
            if server.is_running() and await server.is_healthy():
                return False
            if endpoint.restarts >= self.max_restarts:
                raise ServerError(
                    f"vLLM server at {endpoint.url} died again after {endpoint.restarts} restart(s); "
                    f"see {server.log_path}"
                )
            endpoint.restarts += 1
            await asyncio.to_thread(server.restart)
            for name, adapter_path in endpoint.adapters.items():
                await self._load_adapter_on(endpoint, name, adapter_path)
            endpoint.generation += 1
            return True

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter into every endpoint under ``name`` (remembered for restarts)."""
        for endpoint in self.endpoints:
            await self._load_adapter_on(endpoint, name, path)
            endpoint.adapters[name] = path

    async def _load_adapter_on(self, endpoint: Endpoint, name: str, path: str) -> None:
        """Load adapter ``name`` from ``path`` unless the server already serves it from there.

        What is loaded is asked of the server (``/v1/models``), not read from
        the text of a refusal; a server that serves ``name`` from another
        path is an error, since requests for ``name`` would get that adapter.
        """
        served = await self.served_adapters(endpoint)
        if name in served:
            if served[name] == str(path):
                return
            raise GenerationError(
                f"{endpoint.url} already serves an adapter named {name!r} from {served[name]}, not {path}: "
                "unload it there, or give this run another run.name"
            )
        response = await self._http.post(
            f"{endpoint.url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
        )
        if response.status_code != 200:
            raise GenerationError(
                f"{endpoint.url} could not load adapter {name!r} from {path}: "
                f"HTTP {response.status_code}: {_error_text(response)}"
            )

    async def served_adapters(self, endpoint: Endpoint) -> dict[str, str]:
        """The LoRA adapters ``endpoint`` serves, name -> path: the ``/v1/models`` entries that have a parent model."""
        response = await self._http.get(f"{endpoint.url}/v1/models")
        if response.status_code != 200:
            raise GenerationError(f"{endpoint.url}/v1/models: HTTP {response.status_code}: {_error_text(response)}")
        try:
            return {card["id"]: str(card.get("root")) for card in response.json()["data"] if card.get("parent")}
        except (ValueError, KeyError, TypeError) as exc:
            raise GenerationError(f"{endpoint.url}/v1/models: not a model list ({type(exc).__name__}: {exc})") from None

    async def unload_adapter(self, name: str) -> None:
        """Unload adapter ``name`` from every endpoint, freeing its slot (ExIt syncs a new one each few steps)."""
        for endpoint in self.endpoints:
            endpoint.adapters.pop(name, None)
            response = await self._http.post(f"{endpoint.url}/v1/unload_lora_adapter", json={"lora_name": name})
            if response.status_code != 200:
                raise GenerationError(
                    f"{endpoint.url} could not unload adapter {name!r}: HTTP {response.status_code}: "
                    f"{_error_text(response)}"
                )

    async def aclose(self) -> None:
        await self._http.aclose()


async def discover_model_name(url: str, timeout_s: float = 10.0) -> str:
    """The first model a running server lists: the base model of servers given by URL."""
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        try:
            response = await http.get(f"{url}/v1/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError) as exc:
            raise ServerError(f"no usable model list at {url}/v1/models: {exc}") from None


def _parse_completions(data: dict, n: int) -> list[Completion]:
    choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
    if len(choices) != n:
        raise GenerationError(f"asked for {n} completions, got {len(choices)}")
    usage = data.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens", 0))
    prompt_token_ids = tuple(data.get("prompt_token_ids") or ())
    even_share = int(usage.get("completion_tokens", 0)) // max(n, 1)
    completions = []
    for choice in choices:
        token_ids = choice.get("token_ids")
        completions.append(
            Completion(
                text=(choice.get("message") or {}).get("content") or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=prompt_tokens,
                completion_tokens=len(token_ids) if token_ids is not None else even_share,
                prompt_token_ids=prompt_token_ids,
                token_ids=tuple(token_ids or ()),
            )
        )
    return completions


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", {}).get("message", response.text))[:500]
    except ValueError:
        return response.text[:500]
