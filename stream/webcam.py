"""Replace the background of a camera (or any source) and send it to a virtual camera.

    python -m stream.webcam --bg beach.jpg
    python -m stream.webcam --source demo --bg blur --sink out.mp4 --frames 90
    python -m stream.webcam --source demo --sink window --sink vcam --stats

This module only parses flags and wires the parts together.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engines.cli import add_model_arguments, parse_size, positive_int, run_cli
from engines.errors import BadArgument
from engines.segmenter import open_segmenter
from stream.backgrounds import open_background
from stream.chain import MatteChain
from stream.pipeline import FrameProcessor, LoopSettings, run_loop
from stream.sinks import Ending, SinkSettings, check_video_suffix, open_sink, sink_kind
from stream.smoothing import DEFAULT_STRENGTH, TemporalSmoother
from stream.sources import SourceSettings, open_source, source_kind
from stream.timing import StatsPrinter

# Pressing b in the preview window cycles from the chosen background through these.
EXTRA_BACKGROUNDS = ("blur", "beach.jpg", "green")
log = logging.getLogger("stream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stream.webcam", description=__doc__.splitlines()[0])
    source_defaults, loop_defaults, sink_defaults = SourceSettings(), LoopSettings(), SinkSettings()

    group = parser.add_argument_group("source")
    group.add_argument("--source", default=source_defaults.source,
                       help="camera index, /dev/videoN, a video or image file, or demo (default: %(default)s)")
    group.add_argument("--size", help="camera and demo size WIDTHxHEIGHT (default: %s)"
                                      % "x".join(map(str, source_defaults.size)))
    group.add_argument("--fps", type=float, help=f"camera, demo and image rate (default: {source_defaults.fps:g})")
    group.add_argument("--loop", action="store_true",
                       help="repeat a video file (the demo and an image repeat by themselves when --frames is given)")

    group = parser.add_argument_group("effect")
    group.add_argument("--bg", default="blur",
                       help="image or video file, blur, a colour (green, #00b140) or none (default: %(default)s)")
    group.add_argument("--smooth", type=float, default=DEFAULT_STRENGTH,
                       help="temporal smoothing strength in [0, 1), 0 turns it off (default: %(default)s)")

    add_model_arguments(parser)
    group = parser.add_argument_group("per-pixel stages")
    group.add_argument("--stage-threads", type=positive_int, default=loop_defaults.stage_threads,
                       help="CPU threads for the per-pixel stages (default: one beside the network's thread, "
                            "which beats two pools fighting over two cores; every core when the loop runs in one thread)")

    group = parser.add_argument_group("output")
    group.add_argument("--sink", action="append",
                       help="vcam, window, null or a video file; repeatable (default: vcam)")
    group.add_argument("--vcam-backend", default=sink_defaults.vcam_backend,
                       help="pyvirtualcam backend (default: v4l2loopback on Linux, obs elsewhere)")
    group.add_argument("--vcam-device", default=sink_defaults.vcam_device, help="for example /dev/video10")
    group.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    group.add_argument("--quality", type=int, default=sink_defaults.quality, help="video file CRF (default: %(default)s)")

    group = parser.add_argument_group("run")
    group.add_argument("--frames", type=int, default=None, help="stop after N output frames")
    group.add_argument("--drop-stale", action=argparse.BooleanOptionalAction, default=None,
                       help="process the newest frame only, dropping those that waited "
                            "(default: on for cameras, vcam and window; off processes every frame)")
    group.add_argument("--stats", action="store_true", help="print fps and per-stage ms every few seconds")
    return parser


def source_settings(args: argparse.Namespace) -> SourceSettings:
    """The source's settings, refusing flags that do not apply to it. With `--frames`, the
    demo and an image repeat until that many frames are out."""
    kind, defaults = source_kind(args.source), SourceSettings()
    if args.size is not None and kind not in ("camera", "demo"):
        raise BadArgument(f"--size applies to a camera or the demo; {args.source} is a {kind} source, which "
                          "plays at its own size")
    if args.fps is not None and kind not in ("camera", "demo", "image"):
        raise BadArgument(f"--fps applies to a camera, the demo or an image; {args.source} is a {kind} source, "
                          "which plays at its own rate")
    if args.fps is not None and not 0 < args.fps <= 240:
        raise BadArgument(f"bad --fps {args.fps:g}: use a rate above 0 and at most 240")
    size = parse_size(args.size) if args.size is not None else defaults.size
    loop = args.loop or (args.frames is not None and kind in ("demo", "image"))
    return SourceSettings(args.source, size, args.fps or defaults.fps, loop)


def check_arguments(args: argparse.Namespace, sinks_named: list[str], keeps_alpha: bool) -> None:
    if not 0 <= args.smooth < 1:
        raise BadArgument(f"bad --smooth {args.smooth}: use a number in [0, 1)")
    if args.frames is not None and args.frames <= 0:
        raise BadArgument(f"bad --frames {args.frames}: use a positive count")
    for name in sinks_named:
        if sink_kind(name) == "file":
            check_video_suffix(Path(name), alpha=keeps_alpha)
            if Path(name).exists() and not args.overwrite:
                raise BadArgument(f"output {name} exists: add --overwrite to replace it")


def run(args: argparse.Namespace) -> int:
    sinks_named = args.sink or ["vcam"]
    settings = source_settings(args)
    backgrounds = [open_background(args.bg)]
    check_arguments(args, sinks_named, backgrounds[0].keeps_alpha)
    sink_settings = SinkSettings(args.vcam_backend, args.vcam_device, args.quality)

    source = open_source(settings)
    sinks, summary = [], None
    try:
        # The segmenter before any sink: a missing backend (or a first TensorRT build) comes before any output exists.
        segmenter = open_segmenter(args.backend, args.model, args.threads)
        drop_stale = (args.drop_stale if args.drop_stale is not None
                      else source.self_paced or bool({"vcam", "window"} & set(sinks_named)))
        if "window" in sinks_named:
            backgrounds += [open_background(spec) for spec in EXTRA_BACKGROUNDS if spec != args.bg]
        processor = FrameProcessor(MatteChain(segmenter, TemporalSmoother(args.smooth)), backgrounds)
        for name in sinks_named:
            sinks.append(open_sink(name, source.width, source.height, source.fps, processor.rgba, sink_settings))
        observers = [StatsPrinter()] if args.stats else []
        log.info("%s %dx%d at %.3g fps → %s (%s)", args.source, source.width, source.height, source.fps,
                 ", ".join(sinks_named), "newest frame only" if drop_stale else "every frame")
        summary = run_loop(source, processor, sinks, LoopSettings(args.frames, drop_stale, args.stage_threads), observers)
        for observer in observers:
            observer.flush()
    finally:
        for sink in sinks:
            sink.close(Ending.FAILED if summary is None else Ending.INTERRUPTED if summary.interrupted else Ending.COMPLETE)
        source.close()
    dropped = f", {summary.dropped} dropped" if drop_stale else ""
    if summary.interrupted:
        log.warning("interrupted after %d frames%s; outputs closed", summary.frames, dropped)
        return 130
    if args.frames is not None and summary.frames < args.frames:
        log.warning("the source ended after %d frames, before the %d asked for (--loop repeats a file)",
                    summary.frames, args.frames)
    log.info("%d frames%s", summary.frames, dropped)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
