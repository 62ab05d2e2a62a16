"""The dtype a model runs in, chosen by the device: ``model.dtype: auto``.

bfloat16 halves the memory traffic of serving and training, but only
hardware that computes it natively is faster for it. GPUs do; of CPUs, only
those with AVX512-BF16 or AMX. On an AVX2-only CPU, torch and vLLM emulate
bfloat16 through float32 conversions, and serving a 135M model there is
slower in bfloat16 than in float32 (docs/benchmarks.md, "The CPU, measured").
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags of the x86 CPUs that compute bfloat16 natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The first processor's feature flags in :data:`CPUINFO` (none where it has none: another OS or architecture)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU (``flags``, else this machine's) computes bfloat16 natively."""
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def resolve_dtype(dtype: str, on_cpu: bool, flags: frozenset[str] | None = None) -> str:
    """``model.dtype`` as the device runs it: ``auto`` is bfloat16 on a GPU or a CPU with native bfloat16, else float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if not on_cpu or cpu_has_native_bf16(flags) else "float32"
