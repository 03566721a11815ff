"""Latency and FPS harness: the real loop (`stream.pipeline`), timed stage by stage.

    python benchmarks/run_fps.py --source demo --size 640x480 --frames 300 --json cpu.json
    python benchmarks/run_fps.py --matrix --backends onnxruntime,torch-cpu --sizes 640x480,1280x720 --json m.json
    python benchmarks/run_fps.py --engine-only --json engines.json
    python benchmarks/run_fps.py --source synthetic:1280x720@30 --min-fps 30 --max-latency-ms 50
    python benchmarks/run_fps.py --source demo --size 1280x720 --no-pace --reference

Sources are paced at their frame rate through the live loop's capture thread, the way a
camera delivers frames, so `dropped` counts what a camera would lose (`--no-pace` measures
the most the loop can do). Warm-up frames are not counted. The JSON holds every number and
the machine; a PNG beside it plots each stage's latency CDF and fps over time. With
`--min-fps` or `--max-latency-ms` the exit code says whether the loop kept up. `--reference`
also runs, on the same source and sizes, the MediaPipe selfie loop that the popular Linux
tools use (`reference_loop`), just before and just after ours at each size, and reports our
fps and latency as ratios to the mean of the two.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from engines.cli import add_model_arguments, parse_size, run_cli
from engines.errors import BackendMissing, EngineError
from engines.models import DEFAULT_MODEL
from engines.segmenter import BACKENDS, open_segmenter
from stream.backgrounds import open_background
from stream.chain import MatteChain
from stream.pipeline import FrameProcessor, LoopSettings, run_loop
from stream.sinks import SinkSettings, open_sink
from stream.smoothing import DEFAULT_STRENGTH, TemporalSmoother
from stream.sources import SourceSettings, open_source
from stream.timing import STAGES, FrameRecord, percentiles


@dataclass
class BenchSettings:
    source: str = "demo"
    size: str = "640x480"
    fps: float = 30.0
    frames: int = 300
    warmup: int = 30
    backend: str = "auto"
    model: str = DEFAULT_MODEL
    bg: str = "blur"
    sink: str = "null"
    smooth: float = DEFAULT_STRENGTH
    threads: int = 2
    pace: bool = True
    overlap: bool = True


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("onnxruntime", "cv2", "av", "numpy", "tensorrt", "pyvirtualcam"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            continue
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform(), "versions": versions}


def fps_over_time(records: list[FrameRecord], window: float = 1.0) -> list[tuple[float, float]]:
    """(seconds since start, fps over the preceding `window` seconds), one point per frame."""
    if not records:
        return []
    start = records[0].done_at
    times = np.array([r.done_at - start for r in records])
    return [(float(t), float(((times > t - window) & (times <= t)).sum() / window)) for t in times if t >= window]


def run_once(settings: BenchSettings) -> dict:
    """One source → loop → sink run; returns its numbers."""
    width, height = parse_size(settings.size)
    source = open_source(SourceSettings(settings.source, (width, height), settings.fps, loop=True))
    try:
        segmenter = open_segmenter(settings.backend, settings.model, settings.threads)
        background = open_background(settings.bg)
        processor = FrameProcessor(MatteChain(segmenter, TemporalSmoother(settings.smooth)), [background])
        with open_sink(settings.sink, source.width, source.height, source.fps, processor.rgba, SinkSettings()) as sink:
            loop = LoopSettings(settings.warmup, drop_stale=settings.pace, overlap=settings.overlap)
            run_loop(source, processor, [sink], loop)
            records: list[FrameRecord] = []
            cpu_before, started = time.process_time(), time.perf_counter()
            summary = run_loop(source, processor, [sink], replace(loop, frames=settings.frames), [records.append])
            wall = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_before
    finally:
        source.close()
    return {
        "source": settings.source,
        "size": f"{source.width}x{source.height}",
        "network_size": "x".join(map(str, reversed(segmenter.spec.input_size(source.height, source.width)))),
        "backend": segmenter.name,
        "model": settings.model,
        "background": settings.bg,
        "sink": settings.sink,
        "paced": settings.pace,
        "overlap": settings.overlap,
        "frames": summary.frames,
        "seconds": round(wall, 3),
        "fps": round(summary.frames / wall, 2),
        "source_fps": round(source.fps, 3),
        "dropped": summary.dropped,
        "cpu_percent": round(100 * cpu_seconds / wall, 1),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "latency_ms": _rounded(percentiles(r.latency_ms for r in records)),
        "stages": {stage: _rounded(percentiles(r.stages.get(stage, 0.0) for r in records)) for stage in STAGES},
        "fps_over_time": [(round(t, 3), round(f, 2)) for t, f in fps_over_time(records)],
        "stage_samples": {stage: [round(r.stages.get(stage, 0.0), 3) for r in records] for stage in STAGES}
        | {"end_to_end": [round(r.latency_ms, 3) for r in records]},
    }


def engine_only(models: list[str], size: str, iterations: int = 200, threads: int = 2) -> list[dict]:
    """The network alone, per installed backend and model, at its input size for `size` frames."""
    width, height = parse_size(size)
    results = []
    for model in models:
        for backend in BACKENDS:
            try:
                segmenter = open_segmenter(backend, model, threads)
            except (BackendMissing, EngineError) as error:
                results.append({"backend": backend, "model": model, "skipped": str(error)})
                continue
            input_h, input_w = segmenter.spec.input_size(height, width)
            images = torch.rand(1, 3, input_h, input_w, device=segmenter.device)
            for _ in range(max(3, iterations // 10)):
                segmenter(images)
            times = []
            for _ in range(iterations):
                started = time.perf_counter()
                segmenter(images)
                if segmenter.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - started) * 1e3)
            results.append({"backend": segmenter.name, "model": model, "input": f"{input_w}x{input_h}",
                            "ms": _rounded(percentiles(times))})
    return results


REFERENCE_MODEL = "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite"
GET_REFERENCE = "pip download --no-deps mediapipe==0.10.21 -d teacher && pip install ai-edge-litert"


def reference_loop(source: str, size: str, frames: int, warmup: int, wheel: Path | None) -> dict:
    """The loop of the popular Linux tools, on the same source, size and frame count, unpaced:
    MediaPipe's landscape selfie model (256×144, from the mediapipe 0.10.21 wheel) through
    ai-edge-litert with 2 threads, an EMA of 0.5 on its mask, the frame blurred by a 21×21
    Gaussian as background, and float compositing in numpy. Its fps, latency and stage p50s."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise BackendMissing(f"--reference needs ai-edge-litert and the mediapipe 0.10.21 wheel: {GET_REFERENCE}") from None
    if wheel is None or not wheel.is_file():
        raise BackendMissing(f"--reference needs the mediapipe 0.10.21 wheel (--mediapipe PATH): {GET_REFERENCE}")
    with zipfile.ZipFile(wheel) as archive:
        interpreter = Interpreter(model_content=archive.read(REFERENCE_MODEL), num_threads=2)
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    model_height, model_width = (int(side) for side in given["shape"][1:3])
    width, height = parse_size(size)
    frames_source = open_source(SourceSettings(source, (width, height), 30.0, loop=True))
    mask, records = None, []
    try:
        for index in range(warmup + frames):
            started = time.perf_counter()
            frame = frames_source.read().image
            stamps = [time.perf_counter()]
            small = cv2.resize(frame, (model_width, model_height), interpolation=cv2.INTER_AREA)
            interpreter.set_tensor(given["index"], (small.astype(np.float32) / 255)[None])
            interpreter.invoke()
            current = interpreter.get_tensor(taken["index"])[0, :, :, 0]
            stamps.append(time.perf_counter())
            mask = current if mask is None else 0.5 * mask + 0.5 * current
            stamps.append(time.perf_counter())
            alpha = cv2.resize(mask, (frame.shape[1], frame.shape[0]))[..., None]
            background = cv2.GaussianBlur(frame, (21, 21), 0)
            output = (frame * alpha + background * (1 - alpha)).astype(np.uint8)
            stamps.append(time.perf_counter())
            if index >= warmup and output.size:
                records.append((started, stamps))
    finally:
        frames_source.close()
    wall = records[-1][1][-1] - records[0][0]
    stages = {name: _rounded(percentiles(1e3 * (stamps[i] - (stamps[i - 1] if i else start)) for start, stamps in records))
              for i, name in enumerate(("capture", "infer", "smooth", "composite"))}
    return {"size": f"{frames_source.width}x{frames_source.height}", "frames": len(records),
            "fps": round(len(records) / wall, 2),
            "latency_ms": _rounded(percentiles(1e3 * (stamps[-1] - stamps[0]) for _, stamps in records)),
            "stages": stages}


def bracketed_reference(before: dict, after: dict) -> dict:
    """One size's reference from its runs before and after ours: the mean fps and p95
    latency, with both runs kept (their spread shows how steady the machine was)."""
    return {"size": before["size"], "fps": round((before["fps"] + after["fps"]) / 2, 2),
            "latency_ms": {"p95": round((before["latency_ms"]["p95"] + after["latency_ms"]["p95"]) / 2, 3)},
            "before": before, "after": after}


def _mode(run: dict) -> str:
    return ("paced" if run["paced"] else "unpaced") + (", overlap" if run["overlap"] else "")


def compare(runs: list[dict], reference: dict) -> None:
    """Print the reference and write our fps and p95 latency as ratios to it into `runs`."""
    before, after = reference["before"], reference["after"]
    print(f"reference    {reference['size']:>9} {reference['fps']:>6.1f} fps (before ours {before['fps']:.1f}, "
          f"after {after['fps']:.1f}), p95 {reference['latency_ms']['p95']:.1f} ms; stage p50 "
          + " ".join(f"{name[:5]} {value['p50']:.1f}" for name, value in before["stages"].items()))
    for run in runs:
        run["reference"] = {"fps_ratio": round(run["fps"] / reference["fps"], 2),
                            "p95_latency_ratio": round(run["latency_ms"]["p95"] / reference["latency_ms"]["p95"], 2)}
        mode = _mode(run)
        print(f"  ours ({run['model']}, {mode}): {run['reference']['fps_ratio']:.2f}× its fps, "
              f"{run['reference']['p95_latency_ratio']:.2f}× its p95 latency")


def _rounded(values: dict) -> dict:
    return {key: round(value, 3) for key, value in values.items()}


def print_table(runs: list[dict]) -> None:
    header = f"{'backend':<12} {'mode':<14} {'size':>9} {'fps':>6} {'src':>5} {'drop':>5} {'cpu%':>5} {'p50':>6} {'p95':>6} {'p99':>6}  stage p50 ms"
    print(header)
    for run in runs:
        latency = run["latency_ms"]
        stages = " ".join(f"{name[:5]} {run['stages'][name]['p50']:.1f}" for name in STAGES)
        mode = _mode(run)
        print(f"{run['backend']:<12} {mode:<14} {run['size']:>9} {run['fps']:>6.1f} {run['source_fps']:>5.0f} {run['dropped']:>5} "
              f"{run['cpu_percent']:>5.0f} {latency['p50']:>6.1f} {latency['p95']:>6.1f} {latency['p99']:>6.1f}  {stages}")


def plot(runs: list[dict], path: Path) -> bool:
    """Latency CDF per stage (and end to end) and fps over time, one row per run. Without
    matplotlib (the `bench` extra), says so in one line and returns False."""
    try:
        import matplotlib
    except ImportError:
        print(f"no plot {path}: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(runs), 2, figsize=(12, 3.6 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        title = f"{run['backend']} {run['size']}"
        for name, samples in run["stage_samples"].items():
            values = np.sort(samples)
            row[0].plot(values, np.linspace(0, 1, len(values)), label=name, linewidth=2 if name == "end_to_end" else 1)
        row[0].set_xscale("log")
        row[0].set_xlabel("milliseconds")
        row[0].set_ylabel("fraction of frames")
        row[0].set_title(f"latency CDF, {title}")
        row[0].legend(fontsize=7)
        points = np.array(run["fps_over_time"]) if run["fps_over_time"] else np.zeros((0, 2))
        row[1].plot(points[:, 0], points[:, 1], label="achieved")
        row[1].axhline(run["source_fps"], color="grey", linestyle="--", label="source")
        row[1].set_xlabel("seconds")
        row[1].set_ylabel("fps (1 s window)")
        row[1].set_title(f"fps over time, {title}")
        row[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def build_parser() -> argparse.ArgumentParser:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=defaults.source, help="demo, a video file, synthetic:WxH@FPS or a camera")
    parser.add_argument("--size", default=defaults.size, help="demo and camera size (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=defaults.fps, help="demo and camera rate (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=defaults.frames)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    add_model_arguments(parser)
    parser.add_argument("--bg", default=defaults.bg)
    parser.add_argument("--sink", default=defaults.sink, help="null, vcam, window or a video file (default: null)")
    parser.add_argument("--pace", action=argparse.BooleanOptionalAction, default=True,
                        help="deliver frames at the source rate like a camera (default: on)")
    parser.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=True,
                        help="segment the next frame while this one is composited (default: on)")
    parser.add_argument("--matrix", action="store_true", help="run every backend × model × size below, paced and unpaced")
    parser.add_argument("--backends", default="onnxruntime,torch-cpu", help="for --matrix")
    parser.add_argument("--models", default=DEFAULT_MODEL, help="for --matrix and --engine-only")
    parser.add_argument("--sizes", default="640x480,1280x720,1920x1080", help="for --matrix")
    parser.add_argument("--engine-only", action="store_true", help="time the network alone per backend and model")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per engine in --engine-only")
    parser.add_argument("--json", type=Path, help="write every number here, and a PNG beside it")
    parser.add_argument("--reference", action="store_true",
                        help="also run the MediaPipe selfie loop of the popular Linux tools on the same source and "
                             "sizes, unpaced, and report our fps and latency as ratios to it")
    parser.add_argument("--mediapipe", type=Path, default=next(Path("teacher").glob("mediapipe-0.10.21-*.whl"), None),
                        help="the mediapipe 0.10.21 wheel, for --reference (default: teacher/mediapipe-0.10.21-*.whl)")
    parser.add_argument("--min-fps", type=float, help="exit 1 if any run is slower")
    parser.add_argument("--max-latency-ms", type=float, help="exit 1 if any run's p95 end-to-end latency is higher")
    return parser


def run(args: argparse.Namespace) -> int:

    report: dict = {"machine": machine()}
    if args.engine_only:
        report["engines"] = engine_only(args.models.split(","), args.size, args.iterations, args.threads)
        for entry in report["engines"]:
            if "skipped" in entry:
                print(f"{entry['backend']:<12} {entry['model']}: skipped ({entry['skipped']})")
            else:
                ms = entry["ms"]
                print(f"{entry['backend']:<12} {entry['model']} {entry['input']}: p50 {ms['p50']:.2f} p95 {ms['p95']:.2f} p99 {ms['p99']:.2f} ms")
        runs = []
    else:
        base = {k: v for k, v in vars(args).items() if k in BenchSettings.__dataclass_fields__}
        if args.matrix:
            combos = [(b, m, s, p) for b in args.backends.split(",") for m in args.models.split(",")
                      for s in args.sizes.split(",") for p in (True, False)]
        else:
            combos = [(args.backend, args.model, args.size, args.pace)]
        runs, references = [], []
        for size in dict.fromkeys(size for _, _, size, _ in combos):
            # The reference runs just before and just after ours at each size, so that a
            # machine whose speed drifts during the run shows in the spread, not in the ratio.
            before = reference_loop(args.source, size, args.frames, args.warmup, args.mediapipe) if args.reference else None
            sized = []
            for backend, model, _, pace in (combo for combo in combos if combo[2] == size):
                try:
                    sized.append(run_once(BenchSettings(**base | {"backend": backend, "model": model, "size": size,
                                                                   "pace": pace})))
                except (BackendMissing, EngineError) as error:
                    print(f"{backend} {model} {size}: skipped ({error})", file=sys.stderr)
            if args.reference:
                after = reference_loop(args.source, size, args.frames, args.warmup, args.mediapipe)
                references.append(bracketed_reference(before, after))
            runs += sized
        print_table(runs)
        for reference in references:
            compare([run for run in runs if run["size"] == reference["size"]], reference)
        if args.reference:
            report["reference"] = references
        if len(runs) == 1:
            report |= {k: v for k, v in runs[0].items()}
        else:
            report["runs"] = runs
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        plotted = bool(runs) and plot(runs, args.json.with_suffix(".png"))
        print(f"wrote {args.json}" + (f" and {args.json.with_suffix('.png')}" if plotted else ""))

    failures = []
    for run in runs:
        if args.min_fps is not None and run["fps"] < args.min_fps:
            failures.append(f"{run['backend']} {run['size']}: {run['fps']} fps < {args.min_fps}")
        if args.max_latency_ms is not None and run["latency_ms"]["p95"] > args.max_latency_ms:
            failures.append(f"{run['backend']} {run['size']}: p95 latency {run['latency_ms']['p95']} ms > {args.max_latency_ms}")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
