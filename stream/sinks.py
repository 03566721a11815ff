"""Outputs, named by one string: `vcam` (virtual camera), `window` (preview), `null`, or a video
file path. Each has `write(frame)` and `close()` and works in a `with` block.

Frames are H×W×3 uint8 RGB, or H×W×4 RGBA when the background keeps alpha. The virtual
camera and the window show such frames over black; a file format that cannot carry alpha is
refused. `write` returns a `Command` when the user asked for something (the preview window's
keys), else None. `close(Ending.INTERRUPTED)` or `close(Ending.FAILED)` ends a run that did
not finish.

Files are written so that nothing is lost: into a hidden partial file, flushed as they go
(fragmented MP4/MOV, Matroska clusters of a second) so that a killed run leaves a file that
plays up to its last second or so; renamed into place by `close`. An interrupted run never
replaces an existing file: its frames are kept beside it as `NAME.interrupted.EXT`; a failed
run's as `NAME.failed.EXT`. A partial file left by a killed run is found by the next run, kept
as `NAME.recovered.EXT`, and reported.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from engines.errors import BadArgument
from stream.errors import SinkUnavailable

log = logging.getLogger("stream")

VCAM_NAME = "Tiramisu Camera"


class Ending(enum.Enum):
    """How a run ended, which decides where a file sink's frames go."""

    COMPLETE = "complete"  # into place, replacing what was there
    INTERRUPTED = "interrupted"  # into place if nothing is there, else beside it
    FAILED = "failed"  # beside it


class Command(enum.Enum):
    QUIT = "quit"
    NEXT_BACKGROUND = "next background"
    TOGGLE_MATTE = "toggle matte"


@dataclass
class SinkSettings:
    vcam_backend: str | None = None  # pyvirtualcam backend; the platform's usual one if None
    vcam_device: str | None = None
    quality: int = 18  # x264/VP9 CRF: lower is better and larger


def rgb(frame: np.ndarray) -> np.ndarray:
    """An RGB view of a frame; RGBA frames are shown over black."""
    if frame.shape[2] == 3:
        return frame
    alpha = frame[:, :, 3:].astype(np.uint16)
    return ((frame[:, :, :3] * alpha + 127) // 255).astype(np.uint8)


class SinkBase:
    """`with` support: leaving the block closes the sink (and flushes a file)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullSink(SinkBase):
    def write(self, frame: np.ndarray) -> None:
        return None

    def close(self, ending: Ending = Ending.COMPLETE) -> None:
        pass


# Video codecs by file extension: (codec, pixel format, (codec, pixel format) with alpha or None).
VIDEO_FORMATS = {
    ".mp4": ("libx264", "yuv420p", None),
    ".m4v": ("libx264", "yuv420p", None),
    ".mkv": ("libx264", "yuv420p", None),
    ".mov": ("libx264", "yuv420p", ("prores_ks", "yuva444p10le")),
    ".webm": ("libvpx-vp9", "yuv420p", ("libvpx-vp9", "yuva420p")),
}
# One-channel mattes: lossless FFV1 in .mkv; H.264 4:0:0 in .mp4 (FFmpeg decodes it as yuv420p).
GREY_CODECS = {".mkv": "ffv1", ".mp4": "libx264", ".m4v": "libx264"}
# Written as they go: fragments of a second (MP4/MOV), clusters of a second (Matroska), and
# every packet flushed to the file.
# (delay_moov lets the header hold the edit list that starts the first frame at time 0.)
FRAGMENTED_MP4 = {"movflags": "+frag_keyframe+empty_moov+delay_moov+default_base_moof", "frag_duration": "1000000"}
MUXER_OPTIONS = {".mp4": FRAGMENTED_MP4, ".m4v": FRAGMENTED_MP4, ".mov": FRAGMENTED_MP4,
                 ".mkv": {"cluster_time_limit": "1000"}, ".webm": {"cluster_time_limit": "1000"}}
ENCODER_OPTIONS = {
    "libx264": lambda quality: {"crf": str(quality), "preset": "veryfast"},
    "libvpx-vp9": lambda quality: {"crf": str(quality + 13), "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
    "prores_ks": lambda quality: {"profile": "4444"},
    "ffv1": lambda quality: {},
}


def check_video_suffix(path: Path, alpha: bool = False, grey: bool = False) -> str:
    """The lower-case suffix of a video output path, or BadArgument saying what is accepted."""
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise BadArgument(f"unsupported output extension {suffix or path.name!r}: use {', '.join(VIDEO_FORMATS)} or a folder for PNGs")
    if alpha and VIDEO_FORMATS[suffix][2] is None:
        raise BadArgument(f"{suffix} cannot carry alpha: use .mov (ProRes 4444), .webm (VP9) or a folder for PNGs")
    if grey and suffix not in GREY_CODECS:
        raise BadArgument(f"a matte-only video needs {', '.join(sorted(GREY_CODECS))} or a folder for PNGs")
    return suffix


def partial_path(path: Path) -> Path:
    """Where an output is written before it is renamed into place (same folder, same suffix)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def beside(path: Path, word: str) -> Path:
    """`NAME.WORD.EXT` beside `path`, numbered where that exists (`NAME.WORD-2.EXT`)."""
    candidate, number = path.with_name(f"{path.stem}.{word}{path.suffix}"), 2
    while candidate.exists():
        candidate, number = path.with_name(f"{path.stem}.{word}-{number}{path.suffix}"), number + 1
    return candidate


def video_frames(path: Path) -> int | None:
    """How many video frames a file holds (its packets, read to the end), or None if unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.error.FFmpegError, OSError, IndexError):
        return None


def recover_partial(path: Path) -> None:
    """Keep what a killed run left at `path`'s partial file as `NAME.recovered.EXT`, and say so."""
    partial = partial_path(path)
    if not partial.exists():
        return
    frames = video_frames(partial) if partial.is_file() else len(list(partial.glob("*.png")))
    kept = beside(path, "recovered")
    os.replace(partial, kept)
    held = f"it holds {frames} frames" if frames else "nothing in it could be read"
    log.warning("found %s, left by a run that did not finish: %s; kept as %s", partial.name, held, kept)


def finish(partial: Path, target: Path, frames: int, ending: Ending) -> Path:
    """Rename a partial output into place as `ending` says (see `Ending`). Returns where it went."""
    if ending is Ending.COMPLETE or (ending is Ending.INTERRUPTED and not target.exists()):
        if partial.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(partial, target)
        return target
    kept = beside(target, ending.value)
    os.replace(partial, kept)
    log.warning("%s: %s is left as it was; the %d frames written are in %s", ending.value, target, frames, kept)
    return kept


class FileSink(SinkBase):
    """A video file written with PyAV, into a partial file renamed into place on close, so
    that the target is never half-written.

    Frames get consecutive timestamps at `rate` unless `write` is given a `pts` in
    `time_base`. `templates` are input streams (audio, subtitles) whose packets `mux` copies
    unchanged. `alpha` keeps RGBA frames' alpha where the format can; `grey` writes
    one-channel frames.
    """

    def __init__(self, path: Path, width: int, height: int, rate: Fraction, quality: int, *, alpha: bool = False,
                 grey: bool = False, time_base: Fraction | None = None, rotation: int = 0, templates=()) -> None:
        import av

        suffix = check_video_suffix(path, grey=grey)
        self.path, self.partial = path, partial_path(path)
        if not path.parent.is_dir():
            raise SinkUnavailable(f"cannot write {path}: folder {path.parent} does not exist")
        recover_partial(path)
        self.alpha = alpha and VIDEO_FORMATS[suffix][2] is not None
        self.grey = grey
        try:
            self.container = av.open(str(self.partial), "w", options=MUXER_OPTIONS[suffix] | {"flush_packets": "1"})
        except (av.error.FFmpegError, OSError) as error:
            raise SinkUnavailable(f"cannot write {path}: {error}") from None
        codec, pixel_format, alpha_format = VIDEO_FORMATS[suffix]
        if self.alpha:
            codec, pixel_format = alpha_format
        if grey:
            codec, pixel_format = GREY_CODECS[suffix], "gray"
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pixel_format
        self.stream.options = ENCODER_OPTIONS[codec](quality)
        self.stream.thread_type = "AUTO"
        self.rate = Fraction(rate)
        self.time_base = time_base or 1 / self.rate
        self.stream.time_base = self.time_base
        if rotation:
            self.stream.set_display_rotation(rotation)
        self.copies = {}  # input stream index → output stream, for the streams this container holds
        for template in templates:
            if template.codec_context.name in self.container.supported_codecs:
                self.copies[template.index] = self.container.add_stream_from_template(template)
            else:
                log.warning("%s cannot hold the %s stream %d: not copied", suffix, template.codec_context.name, template.index)
        self.frames = 0

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        import av

        if self.grey:
            video_frame = av.VideoFrame.from_ndarray(frame[:, :, 0] if frame.ndim == 3 else frame, format="gray")
        else:
            picture = frame if self.alpha else rgb(frame)
            video_frame = av.VideoFrame.from_ndarray(picture, format="rgba" if picture.shape[2] == 4 else "rgb24")
        video_frame.pts = round(self.frames / self.rate / self.time_base) if pts is None else pts
        video_frame.time_base = self.time_base
        with self._ffmpeg_errors():
            for packet in self.stream.encode(video_frame):
                self.container.mux(packet)
        self.frames += 1
        return None

    def mux(self, packet) -> None:
        """Copy a packet of one of the template streams, unchanged."""
        packet.stream = self.copies[packet.stream.index]
        with self._ffmpeg_errors():
            self.container.mux(packet)

    @contextlib.contextmanager
    def _ffmpeg_errors(self):
        """FFmpeg's refusals (an odd size for 4:2:0, timestamps that go back) as SinkUnavailable."""
        import av

        try:
            yield
        except av.error.FFmpegError as error:
            raise SinkUnavailable(f"cannot write {self.path}: {error}") from None

    def close(self, ending: Ending = Ending.COMPLETE) -> None:
        if self.container is None:
            return
        container, self.container = self.container, None
        try:
            with self._ffmpeg_errors():
                for packet in self.stream.encode():
                    container.mux(packet)
        except SinkUnavailable:
            if ending is Ending.COMPLETE:
                raise  # else the run already failed or stopped, and that error is the one to tell
        finally:
            container.close()
            if self.partial.exists():  # FFmpeg writes nothing when the encoder never opened
                self.path = finish(self.partial, self.path, self.frames, ending)


class PngSequenceSink(SinkBase):
    """Numbered PNGs (RGB, RGBA or grey) in a folder, written into a partial folder that is
    renamed into place on close."""

    def __init__(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise SinkUnavailable(f"cannot write {path}: folder {path.parent} does not exist")
        self.path, self.partial = path, partial_path(path)
        recover_partial(path)
        self.partial.mkdir()
        self.copies: dict = {}  # PNGs hold no other streams
        self.frames = 0

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        if frame.ndim == 3 and frame.shape[2] == 4:
            picture = cv2.cvtColor(frame, cv2.COLOR_RGBA2BGRA)
        elif frame.ndim == 3 and frame.shape[2] == 3:
            picture = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        else:
            picture = frame.reshape(frame.shape[:2])
        path = self.partial / f"frame_{self.frames:06d}.png"
        if not cv2.imwrite(str(path), picture):
            raise SinkUnavailable(f"cannot write {path}")
        self.frames += 1
        return None

    def close(self, ending: Ending = Ending.COMPLETE) -> None:
        if self.partial.exists():
            self.path = finish(self.partial, self.path, self.frames, ending)


def default_vcam_backend() -> str:
    if sys.platform.startswith("linux"):
        return "v4l2loopback"
    return "obs"


LOOPBACK_HELP = (
    "no v4l2loopback device: run `sudo modprobe v4l2loopback devices=1 exclusive_caps=1 "
    f'card_label="{VCAM_NAME}"` (install it with `sudo apt install v4l2loopback-dkms`), '
    "and `sudo usermod -aG video $USER` then log in again if /dev/videoN is not writable"
)


class VirtualCameraSink(SinkBase):
    """pyvirtualcam, always with an explicit backend (registration is global in pyvirtualcam)."""

    def __init__(self, width: int, height: int, fps: float, settings: SinkSettings) -> None:
        import pyvirtualcam

        backend = settings.vcam_backend or default_vcam_backend()
        if backend not in pyvirtualcam.camera.BACKENDS:
            available = ", ".join(sorted(pyvirtualcam.camera.BACKENDS)) or "none"
            raise SinkUnavailable(f"no virtual camera backend {backend!r} on {sys.platform} (available: {available})")
        try:
            self.camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB,
                                              backend=backend, device=settings.vcam_device, print_fps=False)
        except RuntimeError as error:
            message = str(error)
            if backend == "v4l2loopback" and "loopback device" in message:
                raise SinkUnavailable(LOOPBACK_HELP) from None
            if backend == "obs":
                raise SinkUnavailable(f"virtual camera unavailable: {message.splitlines()[0]} (install OBS Studio 26+ and start its virtual camera once)") from None
            raise SinkUnavailable(f"virtual camera unavailable ({backend}): {message.splitlines()[0]}") from None
        except ValueError as error:
            raise SinkUnavailable(f"virtual camera unavailable: {error}") from None

    def write(self, frame: np.ndarray) -> None:
        self.camera.send(rgb(frame))
        return None

    def close(self, ending: Ending = Ending.COMPLETE) -> None:
        self.camera.close()


class WindowSink(SinkBase):
    """An OpenCV preview. Keys: q or Esc quits, b cycles backgrounds, m shows the matte."""

    KEYS = {ord("q"): Command.QUIT, 27: Command.QUIT, ord("b"): Command.NEXT_BACKGROUND, ord("m"): Command.TOGGLE_MATTE}

    def __init__(self, title: str = VCAM_NAME) -> None:
        self.title = title
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise SinkUnavailable("--sink window needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set "
                                  "(use --sink vcam, null or a video file)")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as error:
            raise SinkUnavailable(f"cannot open a preview window (no display?): {str(error).strip().splitlines()[-1]}") from None

    def write(self, frame: np.ndarray) -> Command | None:
        cv2.imshow(self.title, cv2.cvtColor(rgb(frame), cv2.COLOR_RGB2BGR))
        return self.KEYS.get(cv2.waitKey(1) & 0xFF)

    def close(self, ending: Ending = Ending.COMPLETE) -> None:
        cv2.destroyWindow(self.title)


Sink = NullSink | FileSink | PngSequenceSink | VirtualCameraSink | WindowSink


def sink_kind(spec: str) -> str:
    """`null`, `vcam`, `window` or `file`: what `spec` names, or BadArgument saying what is accepted."""
    if spec in ("null", "vcam", "window"):
        return spec
    if Path(spec).suffix.lower() not in VIDEO_FORMATS:
        raise BadArgument(f"unknown sink {spec!r}: use vcam, window, null, or a video file ({', '.join(VIDEO_FORMATS)})")
    return "file"


def open_sink(spec: str, width: int, height: int, fps: float, alpha: bool, settings: SinkSettings) -> Sink:
    """The sink named by `spec`, for frames of width×height at `fps`."""
    kind = sink_kind(spec)
    if kind == "null":
        return NullSink()
    if kind == "vcam":
        return VirtualCameraSink(width, height, fps, settings)
    if kind == "window":
        return WindowSink()
    return FileSink(Path(spec), width, height, Fraction(fps).limit_denominator(1001), settings.quality, alpha=alpha)
