"""The accelerate configs, the launch options built from a run config, and the GPU placement of replicas.

Every file in ``configs/accelerate/`` is read by accelerate's own launcher
code (the options ``accelerate launch`` would run with) and by the run
config's validation. Nothing here starts a process; DeepSpeed is not
installed, and is not needed to check its files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from pipeline.config.launch import LaunchSettings
from pipeline.config.settings import ConfigError, ModelSection, ServerSection, TrainingSection, parse_config
from pipeline.engine.stage_context import StageContext
from pipeline.engine.vllm_server import ServerError, replica_devices, replica_servers
from pipeline.methods.rise.stages import run_train_stage
from pipeline.training.launch import TrainError, cpu_allocator, launch_env, launch_options, summary_line
from tests.helpers.cli_runs import REPO
from tests.helpers.runs import arithmetic_tasks
from tests.helpers.training import finish_curate, training_run

ACCELERATE_DIR = REPO / "configs" / "accelerate"
# file -> (distributed type, processes, machines, on the CPU)
EXPECTED = {
    "cpu.yaml": (DistributedType.NO, 1, 1, True),
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, 1, True),
    "ddp.yaml": (DistributedType.MULTI_GPU, 8, 1, False),
    "fsdp2.yaml": (DistributedType.FSDP, 8, 1, False),
    "zero2.yaml": (DistributedType.DEEPSPEED, 8, 1, False),
    "zero3.yaml": (DistributedType.DEEPSPEED, 8, 1, False),
    "multinode_2x8.yaml": (DistributedType.MULTI_GPU, 16, 2, False),
}
MINIMAL = {"tasks": arithmetic_tasks()}


def accelerate_args(path: Path) -> tuple[Any, Any]:
    """What ``accelerate launch --config_file PATH`` resolves: its arguments and the parsed file (ClusterConfig)."""
    parsed = launch_command_parser().parse_args(["--config_file", str(path), "x.py"])
    args, defaults, _ = _validate_launch_command(parsed)
    return args, defaults


def test_every_accelerate_config_is_covered() -> None:
    assert {path.name for path in ACCELERATE_DIR.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_reads_each_config_as_intended_and_the_run_config_accepts_it(name: str) -> None:
    path = ACCELERATE_DIR / name
    distributed_type, processes, machines, on_cpu = EXPECTED[name]
    args, parsed = accelerate_args(path)  # unknown keys fail here, in accelerate's ClusterConfig
    assert parsed.distributed_type == distributed_type
    assert (args.num_processes, args.num_machines, args.mixed_precision) == (processes, machines, "no")
    # Several processes go through torchrun (the plain launcher would start one, whatever num_processes says).
    assert args.multi_gpu or args.use_fsdp or args.use_deepspeed or processes == 1
    settings = TrainingSection(accelerate_config=path)
    launch = LaunchSettings.of(settings)
    assert (launch.num_processes, launch.num_machines, launch.use_cpu) == (processes, machines, on_cpu)
    assert (launch_env(settings).get("ACCELERATE_USE_CPU") == "true") == on_cpu


def test_fsdp2_config_builds_accelerates_fsdp2_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    args, _ = accelerate_args(ACCELERATE_DIR / "fsdp2.yaml")
    for key, value in prepare_multi_gpu_env(args).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # reads the environment the launcher gives the workers
    assert plugin.fsdp_version == 2
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.reshard_after_forward is True and not plugin.cpu_ram_efficient_loading


@pytest.mark.parametrize(("name", "stage"), [("zero2.yaml", "2"), ("zero3.yaml", "3")])
def test_deepspeed_configs_reach_the_workers_as_their_zero_stage(name: str, stage: str) -> None:
    args, parsed = accelerate_args(ACCELERATE_DIR / name)
    args.deepspeed_fields_from_accelerate_config = ",".join(parsed.deepspeed_config)  # as launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage
    assert (env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"], env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"]) == (
        "none",
        "none",
    )
    # Left to the trainer ("auto"): training.gradient_accumulation_steps and the clipping norm.
    assert "gradient_accumulation_steps" not in parsed.deepspeed_config
    if stage == "3":  # sharded weights are gathered when the adapter or model is saved
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_without_a_file_one_process_runs_on_the_cpu_and_several_under_torchrun() -> None:
    assert launch_options(TrainingSection()) == [
        "--dynamo_backend",
        "no",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--quiet",
    ]
    assert launch_options(TrainingSection(num_processes=4, mixed_precision="bf16")) == [
        "--multi_gpu",
        "--dynamo_backend",
        "no",
        "--num_processes",
        "4",
        "--num_machines",
        "1",
        "--mixed_precision",
        "bf16",
        "--main_process_port",
        "0",
        "--quiet",
    ]


def test_run_config_overrides_the_file_and_each_machine_gets_its_rank() -> None:
    multinode = TrainingSection(accelerate_config=ACCELERATE_DIR / "multinode_2x8.yaml", main_process_ip="192.168.1.5")
    assert launch_options(multinode, machine_rank=1) == [
        "--config_file",
        str(ACCELERATE_DIR / "multinode_2x8.yaml"),
        "--num_processes",
        "16",
        "--num_machines",
        "2",
        "--mixed_precision",
        "no",
        "--machine_rank",
        "1",
        "--main_process_ip",
        "192.168.1.5",
        "--main_process_port",
        "29500",
        "--quiet",
    ]
    beside_vllm = TrainingSection(
        accelerate_config=ACCELERATE_DIR / "ddp.yaml", num_processes=6, gpu_ids=[2, 3, 4, 5, 6, 7]
    )
    options = launch_options(beside_vllm)
    assert options[options.index("--num_processes") + 1] == "6"
    assert options[options.index("--gpu_ids") + 1] == "2,3,4,5,6,7"


@pytest.mark.parametrize(
    ("training", "message"),
    [
        (
            {"accelerate_config": str(ACCELERATE_DIR / "cpu.yaml"), "num_processes": 2},
            "training.num_processes 2 needs an accelerate config whose distributed_type is MULTI_GPU, FSDP or DEEPSPEED",
        ),
        ({"num_processes": 16, "num_machines": 2}, "training.num_machines > 1 needs training.main_process_ip"),
        (
            {"num_processes": 3, "num_machines": 2, "main_process_ip": "10.0.0.1"},
            "training.num_processes (3) must be a multiple of training.num_machines (2)",
        ),
        (
            {"accelerate_config": str(ACCELERATE_DIR / "fsdp2.yaml"), "finetune": "qlora"},
            "training.finetune 'qlora' does not run under FSDP or DeepSpeed ZeRO-3",
        ),
        (
            {"accelerate_config": str(ACCELERATE_DIR / "zero3.yaml"), "finetune": "qlora"},
            "training.finetune 'qlora' does not run under FSDP or DeepSpeed ZeRO-3",
        ),
        (
            {"accelerate_config": str(ACCELERATE_DIR / "ddp.yaml"), "gpu_ids": [0, 1]},
            "training.gpu_ids lists 2 GPU(s), but each machine runs 8 training process(es)",
        ),
        ({"num_processes": 2, "gpu_ids": [1, 1]}, "training.gpu_ids must be distinct GPU indices >= 0"),
        (
            {
                "accelerate_config": str(ACCELERATE_DIR / "zero2.yaml"),
                "num_processes": 16,
                "num_machines": 2,
                "main_process_ip": "10.0.0.1",
            },
            "deepspeed_config.deepspeed_multinode_launcher: standard",
        ),
    ],
)
def test_launch_settings_that_would_go_wrong_are_refused_naming_the_key(training: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="training: ") as info:
        parse_config({**MINIMAL, "training": training})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fsdp_version": 1}, "must set fsdp_config.fsdp_version: 2 (FSDP2)"),
        ({"fsdp_state_dict_type": "SHARDED_STATE_DICT"}, "must set fsdp_config.fsdp_state_dict_type: FULL_STATE_DICT"),
    ],
)
def test_fsdp_files_the_pipeline_cannot_use_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    data = yaml.safe_load((ACCELERATE_DIR / "fsdp2.yaml").read_text())
    data["fsdp_config"].update(changes)
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        parse_config({**MINIMAL, "training": {"accelerate_config": str(path)}})
    assert message in str(info.value)


def test_a_file_that_is_no_accelerate_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- not\n- a mapping\n")
    with pytest.raises(ConfigError, match="expected an accelerate config with a distributed_type"):
        parse_config({**MINIMAL, "training": {"accelerate_config": str(path)}})


def test_deepspeed_missing_fails_the_stage_before_launching(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DeepSpeed is not a dependency; None in sys.modules makes it unimportable even where it is installed.
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    run = training_run(tmp_path, tiny_model, accelerate_config=str(ACCELERATE_DIR / "zero2.yaml"))
    finish_curate(run, 1)
    with pytest.raises(TrainError, match="uses DeepSpeed, which is not installed here: `pip install deepspeed`"):
        run_train_stage(StageContext(run, 1, progress=False))
    assert not (run.root / "iter_1" / "train" / "train.log").exists()


def test_replicas_take_consecutive_gpu_slices_ports_and_logs(tmp_path: Path) -> None:
    two_by_two = ServerSection(replicas=2, tensor_parallel_size=2)
    assert replica_devices(two_by_two, None) == ["0,1", "2,3"]
    assert replica_devices(two_by_two, "4,5,6,7") == ["4,5", "6,7"]  # the pipeline's own CUDA_VISIBLE_DEVICES
    assert replica_devices(ServerSection(replicas=2, gpu_ids=[0, 1]), "6,7") == ["0", "1"]  # explicit ids win
    assert replica_devices(ServerSection(), "3") == [None]  # one replica keeps what the pipeline has
    with pytest.raises(ServerError, match=r"need 4 GPUs, but CUDA_VISIBLE_DEVICES=1,2 shows 2"):
        replica_devices(two_by_two, "1,2")
    servers = replica_servers("model", ModelSection(), ServerSection(replicas=3, port=8000), tmp_path)
    assert [(s.port, s.log_path.name) for s in servers] == [
        (8000, "vllm_server.log"),
        (8001, "vllm_server.1.log"),
        (8002, "vllm_server.2.log"),
    ]
    assert len({s.port for s in replica_servers("model", ModelSection(), ServerSection(replicas=3), None)}) == 3


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            {"replicas": 2, "gpu_ids": [0]},
            "rollout.server.gpu_ids lists 1 GPU(s), but replicas (2) x tensor_parallel_size (1) need 2",
        ),
        ({"replicas": 1, "tensor_parallel_size": 2, "gpu_ids": [3, 3]}, "rollout.server.gpu_ids must be distinct"),
    ],
)
def test_bad_replica_gpu_ids_are_refused(server: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="rollout.server: ") as info:
        parse_config({**MINIMAL, "rollout": {"server": server}})
    assert message in str(info.value)


def test_the_accelerate_file_is_parsed_once_per_version(tmp_path: Path) -> None:
    import os

    from pipeline.config import launch

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_processes": 2}))
    before = launch._parsed_accelerate_config.cache_info().misses
    settings = TrainingSection(accelerate_config=str(path))  # its checks read the launch settings too
    assert [LaunchSettings.of(settings).num_processes for _ in range(3)] == [2, 2, 2]
    assert launch._parsed_accelerate_config.cache_info().misses == before + 1
    path.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_processes": 4}))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))  # a new version
    assert LaunchSettings.of(settings).num_processes == 4
    assert launch._parsed_accelerate_config.cache_info().misses == before + 2


def test_cpu_training_preloads_tcmalloc_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """make install adds Debian's libtcmalloc-minimal4 where it can; the launcher preloads it for CPU workers only."""
    import torch

    monkeypatch.setenv("LD_PRELOAD", "libexisting.so")
    allocator = cpu_allocator()
    cpu_env = launch_env(TrainingSection(accelerate_config=ACCELERATE_DIR / "cpu.yaml"))
    if allocator is None:
        assert "LD_PRELOAD" not in cpu_env
    else:
        assert "tcmalloc" in allocator
        assert cpu_env["LD_PRELOAD"] == f"{allocator}:libexisting.so"
    if torch.cuda.is_available():
        assert "LD_PRELOAD" not in launch_env(TrainingSection(accelerate_config=ACCELERATE_DIR / "ddp.yaml"))


def test_the_stage_prints_the_workers_peak_memory() -> None:
    rise = {"examples": 283, "steps": 36, "train_tokens_per_s": 197.4, "peak_rss_gb": 3.25}
    assert summary_line(1, rise) == "training iter 1: 36 steps, 197 trained tokens/s, peak RSS 3.2 GB (main worker)"
    exit_summary = {"steps": 5, "steps_per_minute": 0.42, "peak_rss_gb": 2.0}
    assert summary_line(2, exit_summary) == "training iter 2: 5 steps, 0.4 steps/min, peak RSS 2.0 GB (main worker)"
