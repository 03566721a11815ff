"""Device check of the GPU path: export, TensorRT engines against PyTorch, engine timing, loop fps.

    python benchmarks/gpu_check.py                          # → benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --frames 150 --json /tmp/gpu_check.json

Needs a CUDA GPU; without one it prints one line and exits with status 2. It exports the shipped
model to ONNX and checks it in ONNX Runtime, then opens TensorRT where it imports: it builds (or
loads from the cache) an engine per input shape, reopens it to time a load from the cache, and
compares it with float32 PyTorch on demo frames (largest absolute difference, IoU of the mattes
thresholded at 0.5). It times the segmenter alone with CUDA events (p50/p99) at 1×3×144×256 and
1×3×288×512, and the whole loop (demo source → NullSink, every frame, no pacing) at 1280×720 and
1920×1080: fps and per-stage milliseconds. Agreement is measured on the full-resolution mattes of
the user's per-frame chain (`stream.chain.MatteChain`), once with each segmenter. Without TensorRT, or when it fails, the same runs on
the PyTorch CUDA backend (float16) and the JSON says which backend ran and why. Takes well under
five minutes on a bare machine; most of it is the first TensorRT build.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engines.cli import run_cli
from engines.errors import BackendMissing, EngineError
from engines.export import export_onnx, onnx_difference
from engines.metrics import batch_iou
from engines.models import ModelFiles, resolve_model
from engines.segmenter import Segmenter
from engines.tensorrt_backend import TensorRTSegmenter
from engines.tiramisu import Tiramisu, load_weights
from engines.torch_backend import TorchSegmenter
from stream.backgrounds import open_background
from stream.chain import MatteChain
from stream.pipeline import FrameProcessor, LoopSettings, run_loop
from stream.sinks import NullSink
from stream.smoothing import TemporalSmoother
from stream.sources import DemoSource
from stream.timing import STAGES, FrameRecord, percentiles

RESULTS = Path(__file__).parent / "results"
ENGINE_SHAPES = ((1, 3, 144, 256), (1, 3, 288, 512))
LOOP_SIZES = ((1280, 720), (1920, 1080))


@dataclass
class CheckSettings:
    json: Path = RESULTS / "gpu_check.json"
    frames: int = 300  # timed loop frames per size
    iterations: int = 200  # timed segmenter calls per shape
    warmup: int = 30  # untimed calls or frames before each measurement
    background: str = "blur"
    cache_dir: Path | None = None  # engine cache; the usual one (or $TIRAMISU_CACHE) if None


def label(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def parse_args(argv: list[str] | None) -> CheckSettings:
    defaults = CheckSettings()
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=defaults.json, help="output file (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=defaults.frames,
                        help="timed loop frames per size (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help="timed segmenter calls per shape (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed calls or frames first (default: %(default)s)")
    parser.add_argument("--bg", dest="background", default=defaults.background,
                        help="loop background (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=defaults.cache_dir,
                        help="TensorRT engine cache (default: $TIRAMISU_CACHE or ~/.cache/tiramisu-stream/engines)")
    return CheckSettings(**vars(parser.parse_args(argv)))


def demo_frames(count: int = 4) -> list[np.ndarray]:
    """1280×720 demo frames spread over the clip (a person, unlike noise)."""
    source = DemoSource((1280, 720), 30.0, loop=False)
    step = source.frames_per_clip // count
    frames = [source.read().image for _ in range(count * step)]
    return frames[::step]


def check_export(model: Tiramisu) -> dict:
    """Export float32 (dynamic shape) and float16-inside ONNX files; ONNX Runtime against PyTorch."""
    report = {}
    with tempfile.TemporaryDirectory() as directory:
        for precision, half in (("fp32", False), ("fp16", True)):
            started = time.perf_counter()
            path = export_onnx(model, Path(directory) / f"{precision}.onnx", half=half)
            seconds = time.perf_counter() - started
            differences = {label(shape): onnx_difference(model, path, (shape[0], *shape[2:]))
                           for shape in ENGINE_SHAPES}
            report[precision] = {"export_seconds": round(seconds, 2), "largest_difference": differences}
    return report


def open_tensorrt(files: ModelFiles, settings: CheckSettings) -> tuple[Segmenter | None, dict]:
    """TensorRT with an engine per shape ready, how long building or loading each took, and how
    long a second segmenter takes to load them from the cache; or why TensorRT did not run."""
    try:
        segmenter = TensorRTSegmenter.open(files, settings.cache_dir)
        report: dict = {"version": segmenter.trt.__version__, "precision": segmenter.precision,
                        "cache": str(segmenter.cache.directory), "shapes": {}}
        for shape in ENGINE_SHAPES:
            cached = segmenter.cache.read(segmenter.engine_key(shape)).engine is not None
            report["shapes"][label(shape)] = {"was_cached": cached, "first_call_seconds": first_call(segmenter, shape)}
        reopened = TensorRTSegmenter.open(files, settings.cache_dir)
        for shape in ENGINE_SHAPES:
            report["shapes"][label(shape)]["reopen_seconds"] = first_call(reopened, shape)
    except (BackendMissing, EngineError) as error:
        return None, {"skipped": str(error)}
    except Exception as error:  # a device check reports a TensorRT failure and measures the fallback
        return None, {"skipped": f"TensorRT failed: {error!r}", "traceback": traceback.format_exc()}
    return segmenter, report


def first_call(segmenter: Segmenter, shape: tuple[int, ...]) -> float:
    """Seconds for a segmenter's first call at `shape`: building or loading its engine, then running it."""
    started = time.perf_counter()
    segmenter(torch.rand(shape, device="cuda"))
    torch.cuda.synchronize()
    return round(time.perf_counter() - started, 2)


def agreement(segmenter: Segmenter, reference: Segmenter) -> dict:
    """Largest difference and matte IoU (threshold 0.5, percent) of the chain's full-resolution
    mattes against the same chain with float32 PyTorch (TF32 off), at each network size."""
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report = {}
    try:
        frames = demo_frames()
        for shape in ENGINE_SHAPES:
            spec = replace(segmenter.spec, long_side=shape[3])  # 1280×720 frames: width is the long side
            ours, theirs = MatteChain(segmenter, spec=spec), MatteChain(reference, spec=spec)
            differences, ious = [], []
            for frame in frames:
                actual, expected = ours(frame).alpha, theirs(frame).alpha
                differences.append(float((actual - expected).abs().max()))
                ious.append(float(batch_iou(actual > 0.5, expected > 0.5)[0]))
            report[label(shape)] = {"largest_difference": max(differences), "iou_min": min(ious),
                                    "iou_mean": sum(ious) / len(ious)}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return report


def time_segmenter(segmenter: Segmenter, settings: CheckSettings) -> dict:
    """Milliseconds per call, timed with CUDA events around each call."""
    report = {}
    for shape in ENGINE_SHAPES:
        images = torch.rand(shape, device="cuda")
        for _ in range(settings.warmup):
            segmenter(images)
        times = []
        for _ in range(settings.iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            segmenter(images)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        report[label(shape)] = {**percentiles(times, (50, 95, 99)), "iterations": settings.iterations}
    return report


def time_loop(segmenter: Segmenter, settings: CheckSettings) -> dict:
    """The whole loop per frame size: fps and per-stage milliseconds (capture is the demo's CPU rendering)."""
    report = {}
    for width, height in LOOP_SIZES:
        source = DemoSource((width, height), 30.0, loop=True)
        processor = FrameProcessor(MatteChain(segmenter, TemporalSmoother()), [open_background(settings.background)])
        run_loop(source, processor, [NullSink()], LoopSettings(frames=settings.warmup, drop_stale=False))
        records: list[FrameRecord] = []
        started = time.perf_counter()
        summary = run_loop(source, processor, [NullSink()], LoopSettings(frames=settings.frames, drop_stale=False),
                           [records.append])
        elapsed = time.perf_counter() - started
        processing_ms = [sum(ms for stage, ms in r.stages.items() if stage != "capture") for r in records]
        report[f"{width}x{height}"] = {
            "frames": summary.frames,
            "network_input": list(segmenter.spec.input_size(height, width)),
            "fps": summary.frames / elapsed,
            "fps_without_capture": 1e3 * len(records) / max(sum(processing_ms), 1e-9),
            "stages_ms": {stage: percentiles((r.stages.get(stage, 0.0) for r in records), (50, 95, 99))
                          for stage in STAGES},
            "latency_ms": percentiles((r.latency_ms for r in records), (50, 95, 99)),
        }
    return report


def run(settings: CheckSettings) -> dict:
    started = time.perf_counter()
    files = resolve_model(None)
    model = load_weights(files.safetensors)
    properties = torch.cuda.get_device_properties(0)
    report: dict = {
        "device": {"name": properties.name, "compute_capability": [properties.major, properties.minor],
                   "memory_gib": round(properties.total_memory / 2**30, 1)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda},
        "export": check_export(model),
    }
    segmenter, report["tensorrt"] = open_tensorrt(files, settings)
    if segmenter is None:
        segmenter = TorchSegmenter.open(files, device="cuda")
    report["backend"] = segmenter.name
    reference = TorchSegmenter(load_weights(files.safetensors), torch.device("cuda"), spec=files.spec, half=False)
    report["agreement_with_pytorch_fp32"] = agreement(segmenter, reference)
    report["segmenter_ms"] = time_segmenter(segmenter, settings)
    report["loop"] = time_loop(segmenter, settings)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def summary_lines(report: dict) -> list[str]:
    lines = [f"{report['device']['name']}: backend {report['backend']}"
             + (f" (TensorRT skipped: {report['tensorrt']['skipped']})" if "skipped" in report["tensorrt"] else "")]
    for shape, agree in report["agreement_with_pytorch_fp32"].items():
        timing = report["segmenter_ms"][shape]
        lines.append(f"  {shape}: {timing['p50']:.2f}/{timing['p99']:.2f} ms p50/p99, largest difference "
                     f"{agree['largest_difference']:.3g}, IoU ≥ {agree['iou_min']:.2f}%")
    for size, loop in report["loop"].items():
        stages = ", ".join(f"{stage} {loop['stages_ms'][stage]['p50']:.2f}" for stage in STAGES)
        lines.append(f"  loop {size}: {loop['fps']:.0f} fps ({loop['fps_without_capture']:.0f} without the demo's "
                     f"rendering); p50 ms: {stages}")
    return lines


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    return run_cli(lambda: check(settings))


def check(settings: CheckSettings) -> int:
    if not torch.cuda.is_available():
        raise BackendMissing(f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
                             "run this on a machine with an NVIDIA GPU")
    report = run(settings)
    settings.json.parent.mkdir(parents=True, exist_ok=True)
    settings.json.write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(summary_lines(report)))
    print(f"wrote {settings.json} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
