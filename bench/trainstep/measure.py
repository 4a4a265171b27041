"""Timing, the measured matmul peak, peak memory, and the summary statistics."""
from __future__ import annotations

import contextlib
import gc
import math
import statistics
import sys
import time
from typing import Callable

from .archs import MIB, SEED


def timed(fn: Callable[[], object], device: str) -> tuple[object, float]:
    """fn() and its seconds: CUDA events (synchronised) on a GPU, perf_counter on the CPU."""
    import torch

    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def matmul_peak(device: str, dtype: str) -> dict:
    """The device's achievable matmul rate in ``dtype``: best of several n x n @ n x n products."""
    import torch

    n, trials = (8192, 20) if device.startswith("cuda") else (1024, 5)
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n, n, generator=g).to(device, getattr(torch, dtype))
    y, out = torch.randn(n, n, generator=g).to(device, getattr(torch, dtype)), torch.empty_like(x)
    for _ in range(3 if trials == 5 else 10):  # clocks up, kernels chosen
        torch.matmul(x, y, out=out)
    best = min(timed(lambda: torch.matmul(x, y, out=out), device)[1] for _ in range(trials))
    del x, y, out
    return {"n": n, "dtype": dtype, "best_s": best, "tflops": 2 * n**3 / best / 1e12}


class MemoryMeter:
    """Peak memory since ``start`` (taken before a mode builds its model), read after each ``reset``.

    CUDA: ``max_memory_allocated`` (absolute: weights, optimizer state, activations). CPU: peak RSS minus
    the RSS at ``start``: ``ru_maxrss`` when the process set a new high-water mark since ``reset``, else the
    maximum of a 5 ms psutil sampler (a rough figure; allocators keep freed memory)."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        else:
            import threading

            import psutil

            self.proc, self.stop = psutil.Process(), threading.Event()
            self.rss0 = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
        self.reset()
        if not self.cuda:
            self.thread.start()

    def _sample(self):
        while not self.stop.is_set():
            self.sampled = max(self.sampled, self.proc.memory_info().rss)
            time.sleep(0.005)

    @staticmethod
    def _maxrss() -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    def reset(self):
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.maxrss0, self.sampled = self._maxrss(), self.proc.memory_info().rss

    def peak(self) -> tuple[float, str]:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / MIB, "cuda max_memory_allocated"
        maxrss = self._maxrss()
        if maxrss > self.maxrss0:
            return (maxrss - self.rss0) / MIB, "cpu peak RSS delta (ru_maxrss)"
        return (max(self.sampled, self.proc.memory_info().rss) - self.rss0) / MIB, "cpu peak RSS delta (5 ms sampler)"

    def close(self):
        if not self.cuda:
            self.stop.set()
            self.thread.join()


def _free(device: str):
    """Release what the last mode held, so that the next one starts from a clean slate."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed heap pages: hand them back
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times: list[float], tokens: list[int], samples: list[int], flops: list[int], peak_tflops: float,
              per: float = 1.0) -> dict:
    """Medians of the per-step rates; step time as median/p10/p90 (``per``: steps a timed unit holds)."""
    med = lambda xs: statistics.median(xs)
    achieved = med([f / t for f, t in zip(flops, times)]) / 1e12
    return {
        "tokens_per_s": med([n / t for n, t in zip(tokens, times)]),
        "samples_per_s": med([n / t for n, t in zip(samples, times)]),
        "step_ms_median": med(times) / per * 1e3,
        "step_ms_p10": _quantile(times, 0.1) / per * 1e3,
        "step_ms_p90": _quantile(times, 0.9) / per * 1e3,
        "model_tflop_per_step": statistics.mean(flops) / per / 1e12,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "mfu": achieved / peak_tflops,
        "tokens_per_s_overall": sum(tokens) / sum(times),  # totals, for reference
    }


def _is_oom(e: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", MemoryError))
    return isinstance(e, oom) or "out of memory" in str(e).lower()
