"""Timing helpers: medians of repeated calls after warm-up, and the machine they ran on."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np


@dataclass
class Timing:
    p50_ms: float
    p95_ms: float
    runs: int

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(seconds: Sequence[float]) -> Timing:
    values = 1000 * np.asarray(seconds, dtype=np.float64)
    return Timing(float(np.median(values)), float(np.percentile(values, 95)), len(values))


def time_calls(fn: Callable, inputs: Sequence, warmup: int = 3) -> Timing:
    """Call ``fn(x)`` for every input after ``warmup`` untimed calls; per-call latency."""
    for x in list(inputs)[:warmup]:
        fn(x)
    seconds = []
    for x in inputs:
        started = time.perf_counter()
        fn(x)
        seconds.append(time.perf_counter() - started)
    return summarise(seconds)


def time_paired(candidate: Callable, reference: Callable, inputs: Sequence, warmup: int = 3) -> tuple[Timing, Timing]:
    """Alternate the two on each input, so that both see the same machine load; -> (candidate, reference)."""
    for x in list(inputs)[:warmup]:
        candidate(x)
        reference(x)
    a, b = [], []
    for x in inputs:
        started = time.perf_counter()
        candidate(x)
        a.append(time.perf_counter() - started)
        started = time.perf_counter()
        reference(x)
        b.append(time.perf_counter() - started)
    return summarise(a), summarise(b)


def rss_bytes(pid: Optional[int] = None) -> int:
    """Resident memory of a process (Linux /proc), 0 when unknown."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict:
    import torch

    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
