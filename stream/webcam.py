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
from contextlib import ExitStack

from engines.segmenter import BACKENDS, DEFAULT_MODEL, open_segmenter
from stream.backgrounds import open_background
from stream.errors import BadArgument, run_cli
from stream.pipeline import FrameProcessor, LoopSettings, run_loop
from stream.sinks import SinkSettings, open_sink
from stream.sources import SourceSettings, open_source, parse_size
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
    group.add_argument("--size", default="x".join(map(str, source_defaults.size)),
                       help="camera and demo size WIDTHxHEIGHT (default: %(default)s)")
    group.add_argument("--fps", type=float, default=source_defaults.fps, help="camera and demo rate (default: %(default)s)")
    group.add_argument("--loop", action="store_true", help="repeat a file, image or demo source")

    group = parser.add_argument_group("effect")
    group.add_argument("--bg", default="blur",
                       help="image or video file, blur, a colour (green, #00b140) or none (default: %(default)s)")
    group.add_argument("--smooth", type=float, default=loop_defaults.smooth,
                       help="temporal smoothing strength in [0, 1), 0 turns it off (default: %(default)s)")

    group = parser.add_argument_group("model")
    group.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    group.add_argument("--model", default=DEFAULT_MODEL, help="shipped model name or a .safetensors/.onnx file")
    group.add_argument("--threads", type=int, default=2, help="CPU threads for the network (default: %(default)s)")
    group.add_argument("--stage-threads", type=int, default=loop_defaults.stage_threads,
                       help="CPU threads for the per-pixel stages; one leaves a core to capture and the "
                            "network's other thread, which beats two busy-waiting pools (default: %(default)s)")

    group = parser.add_argument_group("output")
    group.add_argument("--sink", action="append",
                       help="vcam, window, null or a video file; repeatable (default: vcam)")
    group.add_argument("--vcam-backend", default=sink_defaults.vcam_backend,
                       help="pyvirtualcam backend (default: v4l2loopback on Linux, obs elsewhere)")
    group.add_argument("--vcam-device", default=sink_defaults.vcam_device, help="for example /dev/video10")
    group.add_argument("--quality", type=int, default=sink_defaults.quality, help="video file CRF (default: %(default)s)")

    group = parser.add_argument_group("run")
    group.add_argument("--frames", type=int, default=None, help="stop after N output frames")
    group.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                       help="newest frame only, dropping stale ones (default: on for cameras, vcam and window)")
    group.add_argument("--stats", action="store_true", help="print fps and per-stage ms every few seconds")
    return parser


def run(args: argparse.Namespace) -> int:
    sinks_named = args.sink or ["vcam"]
    source_settings = SourceSettings(args.source, parse_size(args.size), args.fps, args.loop)
    if not 0 <= args.smooth < 1:
        raise BadArgument(f"bad --smooth {args.smooth}: use a number in [0, 1)")
    if args.frames is not None and args.frames <= 0:
        raise BadArgument(f"bad --frames {args.frames}: use a positive count")
    backgrounds = [open_background(args.bg)]
    sink_settings = SinkSettings(args.vcam_backend, args.vcam_device, args.quality)

    with ExitStack() as stack:
        source = open_source(source_settings)
        stack.callback(source.close)
        live = args.live if args.live is not None else (source.live or bool({"vcam", "window"} & set(sinks_named)))
        if "window" in sinks_named:
            backgrounds += [open_background(spec) for spec in EXTRA_BACKGROUNDS if spec != args.bg]
        alpha_output = any(background.name == "none" for background in backgrounds)
        sinks = [
            stack.enter_context(open_sink(name, source.width, source.height, source.fps, alpha_output, sink_settings))
            for name in sinks_named
        ]
        segmenter = open_segmenter(args.backend, args.model, args.threads)
        processor = FrameProcessor(segmenter, backgrounds, args.smooth, LoopSettings.long_side)
        observers = [StatsPrinter()] if args.stats else []
        log.info("%s %dx%d at %.3g fps → %s (%s mode)", args.source, source.width, source.height, source.fps,
                 ", ".join(sinks_named), "live" if live else "every-frame")
        loop_settings = LoopSettings(args.frames, args.smooth, live, stage_threads=args.stage_threads)
        summary = run_loop(source, processor, sinks, loop_settings, observers)
        for observer in observers:
            observer.flush()
    dropped = f", {summary.dropped} dropped" if live else ""
    if summary.interrupted:
        log.warning("interrupted after %d frames%s; outputs closed", summary.frames, dropped)
        return 130
    log.info("%d frames%s", summary.frames, dropped)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
