"""``model.dtype: auto`` and ``train.precision: auto``: bf16 where the device computes it natively, else fp32.

Measured on a 2-core AMD EPYC with AVX2 and no bf16 instructions (docs/BENCHMARKS.md): one SmolLM2-135M
stage-1 update of 8 windows took 16 s in fp32 and did not finish 3 steps in 15 min in bf16, which such a CPU
emulates; on the Xeon with AMX of the earlier figures bf16 ran about 2x fp32. So neither fixed choice suits
every machine a CPU recipe runs on; GPU recipes name bfloat16 themselves.
"""
from __future__ import annotations

import functools

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 instructions that compute bf16 natively


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device_type: str) -> tuple[bool, str]:
    """Whether ``device_type`` (cuda | cpu) computes bf16 natively, and why, in a few words for the log."""
    import torch

    if device_type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "GPU with bf16" if ok else "GPU without bf16"
    found = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
    return bool(found), f"CPU with {'+'.join(found)}" if found else "CPU without bf16 instructions (emulated: slow)"


def resolve_precision(model, train, device_type: str) -> str | None:
    """Replace ``auto`` in ``model.dtype`` / ``train.precision`` (ModelSettings, TrainSettings) with what this
    device runs fast; ``train.precision: auto`` follows the model's dtype. Returns a log line, or None when
    neither said auto. Resolved before the recipe is saved, so the run directory records what ran."""
    said = []
    if model.dtype == "auto":
        ok, why = native_bf16(device_type)
        model.dtype = "bfloat16" if ok else "float32"
        said.append(f"model.dtype auto -> {model.dtype} ({why})")
    if train.precision == "auto":
        train.precision = "bf16" if model.dtype == "bfloat16" else "fp32"
        said.append(f"train.precision auto -> {train.precision}")
    return "; ".join(said) or None
