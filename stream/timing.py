"""Per-frame stage timing: stamps at each stage boundary, percentiles, and the `--stats` line."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

STAGES = ("capture", "preprocess", "infer", "smooth", "upsample", "composite", "sink")


@dataclass
class FrameRecord:
    index: int  # output frame number
    captured_at: float  # time.perf_counter() when the source took the frame
    done_at: float  # when the last sink took it
    stages: dict[str, float] = field(default_factory=dict)  # milliseconds per stage

    @property
    def latency_ms(self) -> float:
        return (self.done_at - self.captured_at) * 1e3


class StageClock:
    """Stamps the end of each stage. On a GPU it synchronises first, so that queued kernels
    are counted in the stage that launched them."""

    def __init__(self, device: torch.device) -> None:
        self.sync = device.type == "cuda"
        self.last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def start(self) -> None:
        self.last = time.perf_counter()
        self.stages = {}

    def resume(self) -> None:
        """Restart the running stage's clock, leaving out the time the frame waited (for the
        other thread, with overlap); the end-to-end latency still counts it."""
        self.last = time.perf_counter()

    def mark(self, stage: str) -> float:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.stages[stage] = (now - self.last) * 1e3
        self.last = now
        return now


def percentiles(values, points=(50, 95, 99)) -> dict[str, float]:
    """{'p50': …, 'p95': …, 'p99': …} of a sequence of numbers (NaN when empty)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return {f"p{p}": float("nan") for p in points}
    return {f"p{p}": float(np.percentile(array, p)) for p in points}


class StatsPrinter:
    """Prints fps and each stage's p50/p95 milliseconds every `interval` seconds (`--stats`)."""

    def __init__(self, interval: float = 3.0, stream=sys.stderr) -> None:
        self.interval, self.stream = interval, stream
        self.window: list[FrameRecord] = []
        self.window_start = time.perf_counter()

    def __call__(self, record: FrameRecord) -> None:
        self.window.append(record)
        elapsed = record.done_at - self.window_start
        if elapsed >= self.interval:
            self.flush(elapsed)

    def flush(self, elapsed: float | None = None) -> None:
        if not self.window:
            return
        elapsed = elapsed or (self.window[-1].done_at - self.window_start)
        parts = [f"fps {len(self.window) / max(elapsed, 1e-9):5.1f}"]
        for stage in STAGES:
            stats = percentiles((r.stages.get(stage, 0.0) for r in self.window), (50, 95))
            parts.append(f"{stage} {stats['p50']:.1f}/{stats['p95']:.1f}")
        latency = percentiles((r.latency_ms for r in self.window), (50, 95))
        parts.append(f"latency {latency['p50']:.1f}/{latency['p95']:.1f} ms (p50/p95)")
        print(" | ".join(parts), file=self.stream, flush=True)
        self.window = []
        self.window_start = time.perf_counter()
