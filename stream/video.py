"""Replace the background of a recording, losing nothing: every frame, the audio, the timing.

    python -m stream.video talk.mp4 -o talk_beach.mp4 --bg beach.jpg
    python -m stream.video talk.mp4 -o talk.mov --bg none          # ProRes 4444 with alpha
    python -m stream.video talk.mp4 -o talk.webm --bg none         # VP9 with alpha
    python -m stream.video talk.mp4 -o frames --bg none            # a folder of RGBA PNGs
    python -m stream.video talk.mp4 -o matte.mp4 --matte-only      # the matte alone, one channel

File mode never drops a frame. Its default model is `compact16-deep-320` (`engines.models.FILE_MODEL`).
Frames go through the network in batches, each with its
mirror image (the two mattes averaged; `--no-mirror` halves the network time), and
smoothing looks one frame ahead as well as behind. Decoding and the matte chain run in one
thread, compositing and encoding in another. Timestamps, time base, frame rate, size and
rotation are kept; audio and subtitle packets are copied unchanged. The output is written
to a partial file and renamed into place at the end; Ctrl-C finishes the file with the
frames done so far.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from engines.cli import StopRequest, add_model_arguments, run_cli
from engines.errors import BadArgument
from engines.models import FILE_MODEL
from engines.segmenter import MirrorAveraged, open_segmenter
from stream.backgrounds import open_background
from stream.ahead import Ahead
from stream.chain import LookAheadChain, Matte, MatteChain, prepare_stages
from stream.composite import compose, matte_picture
from stream.errors import SourceUnavailable
from stream.frames import download
from stream.sinks import Ending, FileSink, PngSequenceSink, check_video_suffix
from stream.smoothing import DEFAULT_STRENGTH

log = logging.getLogger("stream")


@dataclass
class VideoSettings:
    input: Path
    output: Path
    bg: str = "blur"
    matte_only: bool = False
    overwrite: bool = False
    batch: int = 8  # frames per network call
    smooth: float = DEFAULT_STRENGTH
    quality: int = 18  # x264 CRF (VP9: +13)
    backend: str = "auto"
    model: str = FILE_MODEL
    threads: int = 2
    mirror: bool = True  # average each frame's matte with its mirror image's


@dataclass
class VideoSummary:
    path: Path | None  # where the frames went: the output, or beside it when an interrupted run kept the old one
    frames: int  # frames written
    bad_packets: int
    interrupted: bool


def _check_paths(settings: VideoSettings, rgba: bool) -> None:
    source, target = settings.input, settings.output
    if not source.is_file():
        raise SourceUnavailable(f"input {source} not found")
    if target.resolve() == source.resolve():
        raise BadArgument(f"refusing to overwrite the input {source}: choose another output")
    if target.exists() and not settings.overwrite:
        raise BadArgument(f"output {target} exists: add --overwrite to replace it")
    if target.suffix:
        check_video_suffix(target, alpha=rgba, grey=settings.matte_only)


def _open_input(path: Path):
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError):
        raise SourceUnavailable(f"{path} is not a video file FFmpeg can read") from None
    if not container.streams.video:
        container.close()
        raise SourceUnavailable(f"{path} has no video stream")
    return container


class _Output:
    """The output file, opened at the first decoded frame (its size and rotation), with the
    copied streams' packets that arrived before it held back until then."""

    def __init__(self, settings: VideoSettings, video, others: list, background, rgba: bool,
                 on_frame: Callable[[int], None] | None) -> None:
        self.settings, self.video, self.others = settings, video, others
        self.background, self.rgba, self.on_frame = background, rgba, on_frame
        self.writer = None
        self.early_packets: list = []
        self.written = 0
        self.progress = tqdm(total=video.frames or None, unit="frame", desc=settings.output.name)

    def open(self, first_frame) -> None:
        settings, video = self.settings, self.video
        if not settings.output.suffix:
            if self.others:
                log.warning("a folder of PNGs holds no audio: %d other stream(s) not copied", len(self.others))
            self.writer = PngSequenceSink(settings.output)
        else:
            self.writer = FileSink(settings.output, first_frame.width, first_frame.height,
                                   video.average_rate or video.guessed_rate or Fraction(30), settings.quality,
                                   alpha=self.rgba, grey=settings.matte_only, time_base=video.time_base,
                                   rotation=round(first_frame.rotation or 0), templates=self.others)
        for packet in self.early_packets:
            self.mux(packet)
        self.early_packets = []

    def mux(self, packet) -> None:
        """Copy a packet of an audio or subtitle stream (held back until the file is open)."""
        if self.writer is None:
            self.early_packets.append(packet)
        elif packet.stream.index in self.writer.copies:
            self.writer.mux(packet)

    def write(self, frame, matte: Matte) -> None:
        if self.writer is None:
            self.open(frame)
        picture = matte_picture(matte) if self.settings.matte_only else compose(matte, self.background, self.rgba)
        self.writer.write(download(picture), pts=frame.pts)
        self.written += 1
        self.progress.update(1)
        if self.on_frame is not None:
            self.on_frame(self.written)

    def close(self, ending: Ending) -> None:
        self.progress.close()
        if self.writer is not None:
            self.writer.close(ending)


@dataclass
class _Decoding:
    """What the decoding thread tells the writer besides the frames."""

    bad_packets: int = 0


def _mattes(container, video, others: list, batcher: LookAheadChain, decoding: _Decoding,
            stopped: Callable[[], bool]) -> Iterator:
    """The file in order: (decoded frame, Matte) pairs and the other streams' packets. Once
    `stopped()` (the first Ctrl-C), no more packets are read; the frames read are finished."""
    import av

    for packet in container.demux(video, *others):
        if stopped():
            break
        if packet.stream.index != video.index:
            if packet.dts is not None:
                yield packet
            continue
        try:
            decoded = packet.decode()
        except av.error.FFmpegError:
            decoding.bad_packets += 1
            continue
        for frame in decoded:
            yield from batcher.add(frame, frame.to_ndarray(format="rgb24"))
    yield from batcher.finish()  # after a Ctrl-C too: the frames decoded so far


def process_video(settings: VideoSettings, on_frame: Callable[[int], None] | None = None) -> VideoSummary:
    """Run the whole file through the network and write the output. `on_frame(count)` is
    called after each frame is written (progress; tests inject interrupts through it).

    Two threads: one decodes and runs the matte chain, the other (this one) composites,
    encodes and copies the other streams' packets, in file order."""
    background = None if settings.matte_only else open_background(settings.bg)
    rgba = background is not None and background.keeps_alpha
    _check_paths(settings, rgba)
    container = _open_input(settings.input)
    try:
        segmenter = open_segmenter(settings.backend, settings.model, settings.threads)
    except BaseException:
        container.close()
        raise
    prepare_stages(segmenter.device)
    video = container.streams.video[0]
    video.thread_type = "AUTO"
    others = [s for s in container.streams if s.type in ("audio", "subtitle")]
    output = _Output(settings, video, others, background, rgba, on_frame)
    decoding = _Decoding()
    batcher = LookAheadChain(MatteChain(MirrorAveraged(segmenter) if settings.mirror else segmenter), settings.batch,
                             settings.smooth)
    items, ending = None, Ending.FAILED
    try:
        with StopRequest() as stop:
            items = Ahead(_mattes(container, video, others, batcher, decoding, lambda: stop.requested),
                          depth=settings.batch, name="decode")
            for item in items:
                if isinstance(item, tuple):
                    output.write(*item)
                else:
                    output.mux(item)
            ending = Ending.INTERRUPTED if stop.requested else Ending.COMPLETE
    except KeyboardInterrupt:  # a second Ctrl-C
        ending = Ending.INTERRUPTED
    finally:
        with StopRequest():  # one more Ctrl-C while the file is closed is noted, not acted on
            if items is not None:
                items.close()
            output.close(ending)
            container.close()
    if output.writer is None and ending is Ending.COMPLETE:
        raise SourceUnavailable(f"no frame of {settings.input} could be decoded: nothing written")
    return VideoSummary(output.writer.path if output.writer else None, output.written, decoding.bad_packets,
                        ending is Ending.INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    defaults = VideoSettings(Path(), Path())
    parser = argparse.ArgumentParser(prog="python -m stream.video", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help=".mp4/.mkv (H.264), .mov (ProRes 4444 with --bg none), .webm (VP9), or a folder for PNGs")
    parser.add_argument("--bg", default=defaults.bg, help="image or video file, blur, a colour or none (default: %(default)s)")
    parser.add_argument("--matte-only", action="store_true", help="write the matte alone (one channel)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="frames per network call (default: %(default)s)")
    parser.add_argument("--smooth", type=float, default=defaults.smooth, help="temporal smoothing in [0, 1) (default: %(default)s)")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="run the network on each frame once, not also on its mirror image (half the "
                             "network's time, a little less accurate)")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="CRF, lower is better (default: %(default)s)")
    add_model_arguments(parser, defaults.model)
    return parser


def run(settings: VideoSettings) -> int:
    if settings.batch <= 0 or not 0 <= settings.smooth < 1:
        raise BadArgument("--batch must be positive and --smooth in [0, 1)")
    summary = process_video(settings)
    if summary.bad_packets:
        log.warning("%d bad video packet(s) skipped: the output is shorter than the input (%d frames)",
                    summary.bad_packets, summary.frames)
    if summary.interrupted:
        held = f"{summary.path} holds the first {summary.frames} frames" if summary.path else "nothing was written"
        print(f"interrupted: {held}", file=sys.stderr)
        return 130
    log.info("wrote %s: %d frames", settings.output, summary.frames)
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = VideoSettings(**vars(build_parser().parse_args(argv)))
    return run_cli(lambda: run(settings))


if __name__ == "__main__":
    sys.exit(main())
