"""Measuring: latency statistics, timed calls on a device, peak memory between sections."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, List, Sequence

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class LatencyStats:
    """Summary of repeated timings in milliseconds."""

    n: int
    median_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, milliseconds: Sequence[float]) -> 'LatencyStats':
        """Summarise a non-empty sequence of timings (ms); p95 by linear interpolation."""
        values = np.asarray(list(milliseconds), dtype=np.float64)
        if values.size == 0:
            raise ValueError('no timings to summarise (iterations must be >= 1)')
        return cls(n=int(values.size), median_ms=float(np.median(values)),
                   p95_ms=float(np.percentile(values, 95)), mean_ms=float(values.mean()),
                   min_ms=float(values.min()), max_ms=float(values.max()))

    @property
    def per_second(self) -> float:
        """Calls per second at the median latency."""
        return 1000.0 / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict:
        """Plain-JSON form, rounded to microseconds."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` so a wall clock reading covers it (CUDA only)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], iterations: int, warmup: int, device: torch.device,
               desc: str = '', min_seconds: float = 0.0, max_seconds: float = math.inf,
               ) -> List[float]:
    """Call `fn` `warmup` times untimed, then time up to `iterations` calls (ms each).

    Stops early once `max_seconds` of timed calls have passed (at least one call is
    timed), and keeps going past `iterations` while less than `min_seconds` have passed.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    started = time.perf_counter()
    with tqdm(total=iterations, desc=desc, file=sys.stderr, leave=False,
              disable=not desc) as bar:
        while True:
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append((time.perf_counter() - t0) * 1000.0)
            bar.update(1)
            elapsed = time.perf_counter() - started
            if elapsed >= max_seconds:
                break
            if len(times) >= iterations and elapsed >= min_seconds:
                break
    return times


class PeakMemory:
    """Peak CPU resident memory and CUDA allocation since the last `reset()`.

    CPU: Linux's VmHWM, reset by writing 5 to /proc/self/clear_refs; where that is not
    possible the process-lifetime peak (`ru_maxrss`) is reported and `cpu_scope` says so.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_scope = 'since reset'

    def reset(self) -> None:
        """Start a new measuring window."""
        try:
            with open('/proc/self/clear_refs', 'w') as handle:
                handle.write('5')
            self.cpu_scope = 'since reset'
        except OSError:
            self.cpu_scope = 'process lifetime'
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    @staticmethod
    def cpu_peak_mib() -> float:
        """Peak resident set size in MiB (VmHWM, else ru_maxrss)."""
        try:
            with open('/proc/self/status') as handle:
                for line in handle:
                    if line.startswith('VmHWM:'):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == 'darwin' else peak / 1024.0

    def read(self) -> dict:
        """Return {'cpu_peak_rss_mib', 'cpu_scope', 'cuda_max_allocated_mib' (None on CPU)}."""
        out = {'cpu_peak_rss_mib': round(self.cpu_peak_mib(), 1), 'cpu_scope': self.cpu_scope,
               'cuda_max_allocated_mib': None}
        if self.device.type == 'cuda':
            out['cuda_max_allocated_mib'] = round(
                torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
        return out


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to `dtype` on CUDA; elsewhere (and for fp32) a context that does nothing."""
    if device.type == 'cuda' and dtype != torch.float32:
        return torch.autocast(device_type='cuda', dtype=dtype)
    return contextlib.nullcontext()


def release_memory(device: torch.device) -> None:
    """Release freed models' memory, so the next section's peak RSS is its own."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    if sys.platform.startswith('linux'):
        try:  # glibc keeps freed heap pages mapped; hand them back to the OS
            ctypes.CDLL('libc.so.6').malloc_trim(0)
        except (OSError, AttributeError):
            pass
