"""The rollout service for real: vLLM CPU servers on a tiny random-weights model.

Each server here is started and stopped by the code under test. The random
model never answers arithmetic correctly; the LoRA adapter trained by TRL in
``conftest.py`` always answers ``\\boxed{7}``, which makes stop-at-success and
adapter use observable.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.settings import PipelineConfig, dump_config, parse_config
from pipeline.engine.adapters import AdapterError, check_adapter_dir
from pipeline.engine.backends import open_learner
from pipeline.engine.generation import GenerationError, SamplingParams
from pipeline.engine.service_client import Endpoint, ServiceClient
from pipeline.engine.stage_context import StageContext
from pipeline.engine.vllm_server import VLLMServer
from pipeline.methods.rise.stages import collection_spec, run_rollout_stage
from pipeline.rollouts.service import collect, pooled_grading
from pipeline.rollouts.trajectory import RolloutSpec, TrajectoryRunner
from pipeline.run.files import PARTIAL_NAME
from pipeline.run.layout import RunDir
from pipeline.system.atomic import read_jsonl
from pipeline.tasks import Task, load_tasks
from rewards.pool import GradingPool
from tests.helpers.runs import arithmetic_tasks

pytestmark = pytest.mark.slow

TURN_KEYS = {
    "turn",
    "source",
    "messages",
    "candidates",
    "best",
    "response",
    "grade",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "feedback",
}
RECORD_KEYS = {"key", "task_id", "sample", "prompt", "reference", "adapter", "turns", "solved_at_turn", "error"}
GRADE_KEYS = {"score", "correct", "parsed", "feedback", "error", "answer_key"}


def make_config(tmp_path: Path, model: Path, method: dict | None = None, **rollout: object) -> PipelineConfig:
    return parse_config(
        {
            "run": {"name": "rollout-test", "output_dir": str(tmp_path)},
            "model": {"name_or_path": str(model), "max_model_len": 1024},
            "method": {"name": "rise", "turns": 3, "samples_per_turn": 2, **(method or {})},
            "rollout": {
                "max_concurrency": 32,
                "sampling": {"temperature": 0.8, "max_tokens": 24},
                "server": {"cpu_kvcache_space_gib": 1, "max_num_seqs": 64, "startup_timeout_s": 300},
                **rollout,
            },
            "tasks": arithmetic_tasks(seed=0, n_train=16, n_eval=8),
            "grader": {"name": "numeric", "workers": 1},
        }
    )


def assert_well_formed(record: dict, turns: int, samples: int) -> None:
    assert set(record) == RECORD_KEYS
    assert record["error"] is None
    assert 1 <= len(record["turns"]) <= turns
    for index, turn in enumerate(record["turns"], start=1):
        assert set(turn) == TURN_KEYS
        assert turn["turn"] == index
        assert len(turn["candidates"]) == samples
        assert set(turn["grade"]) == GRADE_KEYS
        assert turn["response"] == turn["candidates"][turn["best"]]["response"]
        assert turn["grade"]["score"] == max(c["grade"]["score"] for c in turn["candidates"])
        assert turn["finish_reason"] in {"stop", "length"}
        assert turn["prompt_tokens"] > 0 and turn["completion_tokens"] > 0
        # Turn t's input holds the prompt plus (attempt, feedback) for each earlier turn.
        assert len(turn["messages"]) == 1 + 2 * (index - 1)
        assert turn["messages"][0]["content"] == record["prompt"]
        is_last = index == len(record["turns"])
        assert (turn["feedback"] is None) == (is_last and (index == turns or turn["grade"]["correct"]))


def port_is_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def test_three_turn_rollout_stage_writes_records_and_stops_its_server(tmp_path: Path, tiny_model: Path) -> None:
    config = make_config(tmp_path, tiny_model)
    run = RunDir.create(config)

    path = run_rollout_stage(StageContext(run, 1, progress=False))

    records = read_jsonl(path)
    assert len(records) == 16
    assert len({r["key"] for r in records}) == 16
    for record in records:
        assert_well_formed(record, turns=3, samples=2)
    assert not (path.parent / PARTIAL_NAME).exists()
    assert (path.parent / "vllm_server.log").stat().st_size > 0
    manifest = RunDir.open(run.root).manifest
    assert manifest.is_done(1, "rollout")
    assert list(manifest.record(1, "rollout").outputs) == [
        "iter_1/rollout/rollouts.jsonl",
        "iter_1/rollout/throughput.json",
    ]
    # A rerun of a finished stage does nothing: no server, same file.
    before = path.stat().st_mtime_ns
    assert run_rollout_stage(StageContext(RunDir.open(run.root), 1, progress=False)) == path
    assert path.stat().st_mtime_ns == before


@pytest.fixture(scope="module")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    config = make_config(tmp_path_factory.mktemp("server"), tiny_model)
    server = VLLMServer(
        str(tiny_model), config.model, config.rollout.server, tmp_path_factory.mktemp("log") / "vllm.log"
    )
    with server:
        yield server
    assert not server.is_running()


def test_stage_uses_running_servers_given_by_url(vllm_server: VLLMServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, Path(vllm_server.model_path), urls=[vllm_server.url + "/"])
    config.tasks.train.limit = 4
    run = RunDir.create(config)

    records = read_jsonl(run_rollout_stage(StageContext(run, 1, progress=False)))

    assert len(records) == 4
    for record in records:
        assert_well_formed(record, turns=3, samples=2)
    assert not (run.root / "iter_1" / "rollout" / "vllm_server.log").exists()  # no server of its own
    assert asyncio.run(vllm_server.is_healthy())  # and the given one is left running


def test_adapter_is_loaded_and_changes_greedy_output(vllm_server: VLLMServer, tiny_adapter: Path) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    messages = [{"role": "user", "content": "What is 3 + 4?"}]

    async def scenario() -> tuple[str, str]:
        client = ServiceClient([Endpoint(vllm_server.url)], base_model="base")
        try:
            await client.load_adapter("tiny-iter1", str(tiny_adapter))
            base = (await client.chat(messages, 1, greedy))[0].text
            tuned = (await client.chat(messages, 1, greedy, adapter="tiny-iter1"))[0].text
            with pytest.raises(GenerationError, match="not-loaded"):
                await client.chat(messages, 1, greedy, adapter="not-loaded")
            with pytest.raises(GenerationError, match="could not load adapter"):
                await client.load_adapter("broken", str(tiny_adapter.parent))
            return base, tuned
        finally:
            await client.aclose()

    base, tuned = asyncio.run(scenario())
    assert base != tuned
    assert "7" in tuned


def test_what_is_loaded_is_asked_of_the_server(vllm_server: VLLMServer, tiny_adapter: Path, tmp_path: Path) -> None:
    """/v1/models lists the loaded adapters: loading one again is a no-op, the same name from elsewhere an error."""
    other = tmp_path / "other"
    shutil.copytree(tiny_adapter, other)

    async def scenario() -> dict[str, str]:
        client = ServiceClient([Endpoint(vllm_server.url)], base_model="base")
        try:
            await client.load_adapter("asked", str(tiny_adapter))
            await client.load_adapter("asked", str(tiny_adapter))
            with pytest.raises(GenerationError, match=f"already serves an adapter named 'asked' from {tiny_adapter}"):
                await client.load_adapter("asked", str(other))
            served = await client.served_adapters(client.endpoints[0])
            await client.unload_adapter("asked")
            assert "asked" not in await client.served_adapters(client.endpoints[0])
            return served
        finally:
            await client.aclose()

    assert asyncio.run(scenario())["asked"] == str(tiny_adapter)


def test_bad_adapter_directories_fail_with_the_reason(tmp_path: Path, tiny_adapter: Path) -> None:
    with pytest.raises(AdapterError, match="not found"):
        check_adapter_dir(tmp_path / "missing")
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        check_adapter_dir(tmp_path)
    big = tmp_path / "rank64"
    big.mkdir()
    config = json.loads((tiny_adapter / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    (big / "adapter_model.safetensors").write_bytes((tiny_adapter / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterError, match="rank 64 > rollout.server.max_lora_rank 16"):
        check_adapter_dir(big, max_lora_rank=16)


def run_collection(
    server: VLLMServer, spec: RolloutSpec, tasks: list[Task], out: Path, adapter: Path | None = None
) -> list[dict]:
    """Collect ``tasks`` with ``spec`` on the shared server (``adapter`` loaded under ``spec.adapter``) and read the records."""

    async def scenario() -> Path:
        client = ServiceClient([Endpoint(server.url)], base_model="base")
        try:
            if adapter is not None:
                await client.load_adapter(str(spec.adapter), str(adapter))
            with GradingPool(1, 10.0) as pool:
                runner = TrajectoryRunner(spec, client, pooled_grading(pool, "numeric", {}))
                return await collect(tasks, runner, out, "test", show_progress=False)
        finally:
            await client.aclose()

    return read_jsonl(asyncio.run(scenario()))


def test_collection_stops_at_first_success(vllm_server: VLLMServer, tiny_adapter: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, Path(vllm_server.model_path))
    spec = collection_spec(config, adapter="tiny-iter1")
    tasks = [Task("seven", "What is 3 + 4?", "7"), Task("eight", "What is 4 + 4?", "8")]

    seven, eight = run_collection(vllm_server, spec, tasks, tmp_path / "out", tiny_adapter)
    assert seven["solved_at_turn"] == 1 and len(seven["turns"]) == 1 and seven["adapter"] == "tiny-iter1"
    assert eight["solved_at_turn"] is None and len(eight["turns"]) == 3
    assert eight["turns"][0]["feedback"] == config.rollout.templates.binary_feedback


def test_each_turn_draws_its_scheduled_count(vllm_server: VLLMServer, tmp_path: Path) -> None:
    """RISE's reference schedule: one on-policy answer at turn 1, best-of-N after (the last count repeats)."""
    config = make_config(tmp_path, Path(vllm_server.model_path), {"turns": 4, "samples_per_turn": [1, 3]})
    assert config.method.sample_schedule == (1, 3, 3, 3)
    tasks = [Task("never", "What is 123 + 456?", "-1")]  # the random model never answers -1: all 4 turns run
    (record,) = run_collection(vllm_server, collection_spec(config, adapter=None), tasks, tmp_path / "out")
    assert [len(turn["candidates"]) for turn in record["turns"]] == [1, 3, 3, 3]


def test_teacher_answers_turns_after_the_first(vllm_server: VLLMServer, tiny_adapter: Path, tmp_path: Path) -> None:
    """Distillation: the learner (the base model) answers turn 1, the teacher (the adapter) the rest."""
    config = make_config(
        tmp_path, Path(vllm_server.model_path), {"samples_per_turn": 1}, sampling={"temperature": 0.0, "max_tokens": 16}
    )
    spec = collection_spec(config, adapter=None)
    greedy = SamplingParams(temperature=0.0, max_tokens=16)

    async def scenario() -> tuple[dict, list[str]]:
        learner = ServiceClient([Endpoint(vllm_server.url)], base_model="base")
        teacher = ServiceClient([Endpoint(vllm_server.url)], base_model="tiny-teacher")
        try:
            await learner.load_adapter("tiny-teacher", str(tiny_adapter))
            with GradingPool(1, 10.0) as pool:
                runner = TrajectoryRunner(spec, learner, pooled_grading(pool, "numeric", {}), teacher)
                path = await collect([Task("eight", "What is 4 + 4?", "8")], runner, tmp_path / "out", "t", False)
            (record,) = read_jsonl(path)
            direct = [
                (await client.chat(turn["messages"], 1, greedy))[0].text
                for client, turn in zip((learner, teacher, teacher), record["turns"])
            ]
            return record, direct
        finally:
            await learner.aclose()
            await teacher.aclose()

    record, direct = asyncio.run(scenario())
    assert record["error"] is None
    assert [t["source"] for t in record["turns"]] == ["learner", "teacher", "teacher"]
    assert [t["response"] for t in record["turns"]] == direct


def test_interrupted_rollout_resumes_to_the_same_trajectories(vllm_server: VLLMServer, tmp_path: Path) -> None:
    config = make_config(tmp_path, Path(vllm_server.model_path), max_concurrency=4)
    tasks = load_tasks(config.tasks.train, "train")
    spec = collection_spec(config, adapter=None)

    async def run(out: Path, stop_after: int | None) -> None:
        client = ServiceClient([Endpoint(vllm_server.url)], base_model="base", max_concurrency=4)
        try:
            with GradingPool(1, 10.0) as pool:
                runner = TrajectoryRunner(spec, client, pooled_grading(pool, "numeric", {}))
                job = asyncio.create_task(collect(tasks, runner, out, "test", show_progress=False))
                while stop_after is not None and not job.done():
                    partial = out / PARTIAL_NAME
                    if partial.exists() and len(read_jsonl(partial)) >= stop_after:
                        job.cancel()
                    await asyncio.sleep(0.05)
                await asyncio.gather(job, return_exceptions=stop_after is not None)
        finally:
            await client.aclose()

    asyncio.run(run(tmp_path / "whole", None))
    asyncio.run(run(tmp_path / "resumed", stop_after=5))
    interrupted = read_jsonl(tmp_path / "resumed" / PARTIAL_NAME)
    assert 5 <= len(interrupted) < 16, "the interruption must leave work to resume"
    asyncio.run(run(tmp_path / "resumed", None))

    whole = read_jsonl(tmp_path / "whole" / "rollouts.jsonl")
    resumed = read_jsonl(tmp_path / "resumed" / "rollouts.jsonl")
    assert [r["key"] for r in resumed] == [r["key"] for r in whole]
    # Trajectories finished before the interruption are kept as they were, not redone.
    by_key = {r["key"]: r for r in resumed}
    assert all(by_key[r["key"]] == r for r in interrupted)


def test_server_killed_mid_rollout_is_restarted_and_the_rollout_completes(tiny_model: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, tiny_model, max_concurrency=8)
    tasks = load_tasks(config.tasks.train, "train")
    spec = collection_spec(config, adapter=None)
    out = tmp_path / "out"
    server = VLLMServer(str(tiny_model), config.model, config.rollout.server, tmp_path / "vllm.log")

    async def scenario() -> tuple[Path, int]:
        endpoint = Endpoint(server.url, server)
        client = ServiceClient([endpoint], base_model="base", max_concurrency=8, max_restarts=2)
        try:
            with GradingPool(1, 10.0) as pool:
                runner = TrajectoryRunner(spec, client, pooled_grading(pool, "numeric", {}))
                job = asyncio.create_task(collect(tasks, runner, out, "test", show_progress=False))
                while not ((out / PARTIAL_NAME).exists() and len(read_jsonl(out / PARTIAL_NAME)) >= 2):
                    await asyncio.sleep(0.02)
                os.kill(server.pid, signal.SIGKILL)  # the API server process, mid-rollout
                return await job, endpoint.restarts
        finally:
            await client.aclose()

    with server:
        path, restarts = asyncio.run(scenario())
    records = read_jsonl(path)
    assert restarts == 1
    assert sorted(r["key"] for r in records) == sorted(f"{t.task_id}#0" for t in tasks)
    for record in records:
        assert_well_formed(record, turns=3, samples=2)
    assert not port_is_open(server.url)


def finished_requests(url: str) -> float:
    """Requests a server has finished, from its Prometheus counter (summed over finish reasons)."""
    metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("vllm:request_success_total")
    )


def test_two_replicas_share_a_rollout_and_both_serve_the_adapter(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path
) -> None:
    config = make_config(tmp_path, tiny_model)
    config.rollout.server.replicas = 2
    tasks = load_tasks(config.tasks.train, "train")[:8]
    spec = collection_spec(config, adapter="tiny-iter1")

    async def scenario() -> tuple[list[str], Path, dict[str, float], dict[str, set[str]]]:
        async with open_learner(config, tmp_path / "logs") as learner:
            await learner.load_adapter("tiny-iter1", str(tiny_adapter))
            with GradingPool(1, 10.0) as pool:
                runner = TrajectoryRunner(spec, learner, pooled_grading(pool, "numeric", {}))
                path = await collect(tasks, runner, tmp_path / "out", "test", show_progress=False)
            urls = [endpoint.url for endpoint in learner.endpoints]
            served = {url: {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]} for url in urls}
            return urls, path, {url: finished_requests(url) for url in urls}, served

    urls, path, finished, served = asyncio.run(scenario())

    assert len(set(urls)) == 2
    records = read_jsonl(path)
    assert len(records) == 8 and all(r["adapter"] == "tiny-iter1" and r["error"] is None for r in records)
    requests = sum(len(r["turns"]) for r in records)
    # Both replicas answered, and every request exactly once (vLLM counts each of a request's n samples).
    assert all(count > 0 for count in finished.values()), finished
    assert sum(finished.values()) == requests * config.method.samples_per_turn
    assert all(names == {"base", "tiny-iter1"} for names in served.values()), served
    assert (tmp_path / "logs" / "vllm_server.log").stat().st_size > 0
    assert (tmp_path / "logs" / "vllm_server.1.log").stat().st_size > 0
    assert not any(port_is_open(url) for url in urls)  # both stopped with the block


def test_hf_backend_rollout_through_the_cli_has_the_same_schema(tmp_path: Path, tiny_model: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(dump_config(make_config(tmp_path, tiny_model, backend="hf", hf_batch_size=8)))
    command = ["rollout", str(config_file), "--set", "tasks.train.limit=4", "--no-progress"]

    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    records = read_jsonl(tmp_path / "rollout-test" / "iter_1" / "rollout" / "rollouts.jsonl")
    assert len(records) == 4
    for record in records:
        assert_well_formed(record, turns=3, samples=2)
    # The same command again reuses the finished run; another config for it is refused.
    assert CliRunner().invoke(app, command).exit_code == 0
    other = CliRunner().invoke(app, [*command, "--set", "method.turns=2"])
    assert other.exit_code == 1 and "holds a run with another config" in other.output


def test_a_turn_no_answer_solved_gets_a_hinted_rationale(
    vllm_server: VLLMServer, hint_following_adapter: Path, tmp_path: Path
) -> None:
    """STaR's rationalization, served for real: the adapter answers 3 to "Hello" and 7 to "Hello" under the
    default hint template with reference 7, so the turn is wrong and its hinted sample right."""
    greedy = {"temperature": 0.0, "max_tokens": 16}
    config = make_config(tmp_path, Path(vllm_server.model_path), {"samples_per_turn": 1}, sampling=greedy)
    spec = replace(collection_spec(config, adapter="hint-iter1"), rationalize=1)
    tasks = [Task("seven", "Hello", "7")]
    (record,) = run_collection(vllm_server, spec, tasks, tmp_path / "out", hint_following_adapter)
    first = record["turns"][0]
    assert not first["grade"]["correct"] and first["rationale"]["grade"]["correct"]
    assert "7" in first["rationale"]["response"]
    for turn in record["turns"]:  # a rationale only where no answer was right, and only a right one
        assert "rationale" not in turn or (not turn["grade"]["correct"] and turn["rationale"]["grade"]["correct"])
    assert first["messages"] == [{"role": "user", "content": "Hello"}]  # the hint stays out of the history
    if len(record["turns"]) > 1:
        assert record["turns"][1]["messages"][1]["content"] == first["response"]  # so does the rationale

    plain = run_collection(vllm_server, replace(spec, rationalize=0), tasks, tmp_path / "plain", hint_following_adapter)
    assert all("rationale" not in turn for turn in plain[0]["turns"])
