"""The dtype ``auto`` picks by device and CPU flags, for serving and for training."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config.settings import PipelineConfig, parse_config
from pipeline.engine import precision
from pipeline.engine.precision import cpu_flags, cpu_has_native_bf16, resolve_dtype
from pipeline.engine.vllm_server import VLLMServer, is_cpu_build
from pipeline.training.trainer import training_precision
from tests.helpers.runs import arithmetic_tasks

AVX2 = "fpu sse sse2 avx avx2 fma"
SAPPHIRE_RAPIDS = AVX2 + " avx512f avx512bw avx512_bf16 amx_bf16 amx_tile"
TASKS = arithmetic_tasks()


def _config(**sections: dict) -> PipelineConfig:
    return parse_config({"tasks": TASKS, **sections})


def _cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str) -> None:
    """Make this machine's /proc/cpuinfo read as a CPU with ``flags`` (two processors, as Linux lists them)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nmodel name\t: test\nflags\t\t: {flags}\n\n" for i in range(2)))
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)


def test_flags_are_read_from_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _cpu(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    assert {"avx2", "amx_bf16", "avx512_bf16"} <= cpu_flags()
    assert cpu_has_native_bf16()
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    assert cpu_flags() == frozenset() and not cpu_has_native_bf16()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(AVX2, False), (AVX2 + " avx512f avx512bw", False), (AVX2 + " avx512_bf16", True), (AVX2 + " amx_bf16", True)],
)
def test_native_bf16_needs_avx512_bf16_or_amx(flags: str, expected: bool) -> None:
    assert cpu_has_native_bf16(frozenset(flags.split())) is expected


def test_auto_dtype_by_device_and_cpu() -> None:
    avx2, amx = frozenset(AVX2.split()), frozenset(SAPPHIRE_RAPIDS.split())
    assert resolve_dtype("auto", on_cpu=True, flags=avx2) == "float32"
    assert resolve_dtype("auto", on_cpu=True, flags=amx) == "bfloat16"
    assert resolve_dtype("auto", on_cpu=False, flags=avx2) == "bfloat16"
    assert resolve_dtype("bfloat16", on_cpu=True, flags=avx2) == "bfloat16"  # an explicit dtype is kept
    assert resolve_dtype("float32", on_cpu=False) == "float32"


@pytest.mark.parametrize(
    ("flags", "dtype", "on_cpu", "expected"),
    [
        (AVX2, "auto", True, "no"),
        (SAPPHIRE_RAPIDS, "auto", True, "bf16"),
        (AVX2, "bfloat16", True, "no"),  # emulated bfloat16 trains slower than float32
        (SAPPHIRE_RAPIDS, "float32", True, "no"),
        (AVX2, "auto", False, "bf16"),
        (AVX2, "float32", False, "no"),
    ],
)
def test_training_precision_by_cpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str, dtype: str, on_cpu: bool, expected: str
) -> None:
    _cpu(monkeypatch, tmp_path, flags)
    config = _config(model={"dtype": dtype})
    assert training_precision(config, on_cpu) == expected
    explicit = _config(model={"dtype": dtype}, training={"mixed_precision": "fp16"})
    assert training_precision(explicit, on_cpu) == "fp16"


@pytest.mark.skipif(not is_cpu_build(), reason="the CPU server's settings: vLLM's CPU build is not installed")
def test_the_cpu_server_is_told_the_resolved_dtype_and_every_core(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The managed server's command line and environment on vLLM's CPU build (make install's)."""
    config = _config()
    server = VLLMServer("model-dir", config.model, config.rollout.server, None, port=8000)
    assert config.model.dtype == "auto"
    assert command_dtype(server) == resolve_dtype("auto", on_cpu=True)
    assert server.environment()["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    _cpu(monkeypatch, tmp_path, AVX2)
    assert command_dtype(server) == "float32"
    _cpu(monkeypatch, tmp_path, SAPPHIRE_RAPIDS)
    assert command_dtype(server) == "bfloat16"

    vllm_default = _config(rollout={"server": {"cpu_reserved_cores": None}}).rollout.server
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in VLLMServer("m", config.model, vllm_default, None).environment()


def command_dtype(server: VLLMServer) -> str:
    command = server.command()
    return command[command.index("--dtype") + 1]
