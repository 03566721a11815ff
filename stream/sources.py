"""Frame sources, named by one string: `0` or `/dev/video0` (camera), a video or image file,
`demo` (the built-in clip) or `synthetic:WxH@FPS` (a generated scene).

    python -c "from stream.sources import open_source, SourceSettings; print(open_source(SourceSettings('demo')).read().image.shape)"

A source's `read()` returns the next `Frame` (H×W×3 uint8 RGB) or None at the end. File,
image and demo sources play once unless `loop` is set; a restart is flagged on the frame so
that temporal state can be reset. `LatestFrameReader` wraps a source for live mode: a
thread keeps only the newest frame, and stale frames are dropped, never queued.
"""
from __future__ import annotations

import glob
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.cli import parse_size
from engines.errors import BadArgument
from engines.imaging import IMAGE_SUFFIXES
from stream.errors import SourceUnavailable

ASSETS = Path(__file__).parent / "assets"


@dataclass
class Frame:
    image: np.ndarray  # H×W×3 uint8 RGB
    index: int  # position in the source, counting from 0 at each (re)start
    captured_at: float  # time.perf_counter() when the frame was taken
    restarted: bool = False  # first frame after the source (re)started


@dataclass
class SourceSettings:
    source: str = "0"
    size: tuple[int, int] = (1280, 720)  # W, H for cameras and the demo
    fps: float = 30.0  # for cameras, the demo and still images
    loop: bool = False  # repeat a file, image or demo source


class DemoSource:
    """The built-in clip: the astronaut portrait (public domain, NASA) filmed by a moving camera."""

    frames_per_clip = 300
    self_paced = False  # frames come as fast as they are read; live mode paces them

    def __init__(self, size: tuple[int, int], fps: float, loop: bool) -> None:
        self.width, self.height = size
        self.fps, self.loop = fps, loop
        self.photo = cv2.cvtColor(cv2.imread(str(ASSETS / "astronaut.jpg")), cv2.COLOR_BGR2RGB)
        self.count = 0

    def read(self) -> Frame | None:
        index = self.count % self.frames_per_clip
        if self.count and index == 0 and not self.loop:
            return None
        self.count += 1
        t = 2 * math.pi * index / self.frames_per_clip
        photo_h, photo_w = self.photo.shape[:2]
        # Fit the photo's width to the frame, then sway, bob, zoom and tilt a little.
        zoom = self.width / photo_w * (1.03 + 0.05 * math.sin(2 * t))
        angle = 4 * math.sin(3 * t)
        centre = (photo_w / 2 + 25 * math.sin(t), photo_h * 0.36 + 12 * math.sin(4 * t))
        matrix = cv2.getRotationMatrix2D(centre, angle, zoom)
        matrix[:, 2] += (self.width / 2 - centre[0], self.height / 2 - centre[1])
        image = cv2.warpAffine(self.photo, matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        return Frame(image, index, time.perf_counter(), restarted=index == 0)

    def close(self) -> None:
        pass


class SyntheticSource:
    """`synthetic:WxH@FPS`: a generated scene (a textured wall and a figure swaying across
    it) for benchmarks that need an exact size and rate without a camera or a file."""

    self_paced = False  # frames come as fast as they are read; live mode paces them

    def __init__(self, size: tuple[int, int], fps: float, frames: int = 300, loop: bool = True) -> None:
        self.width, self.height = size
        self.fps, self.frames, self.loop, self.count = fps, frames, loop, 0
        rng = np.random.default_rng(0)
        wall = cv2.resize(rng.integers(60, 200, (9, 16, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        self.wall = cv2.GaussianBlur(wall, (0, 0), 3)

    def read(self) -> Frame | None:
        index = self.count % self.frames
        if self.count and index == 0 and not self.loop:
            return None
        self.count += 1
        image = self.wall.copy()
        centre_x = int(self.width * (0.5 + 0.2 * math.sin(2 * math.pi * index / self.frames)))
        head = max(4, self.height // 8)
        cv2.circle(image, (centre_x, self.height // 3), head, (205, 160, 130), -1)
        cv2.ellipse(image, (centre_x, self.height), (head * 2, self.height // 2), 0, 180, 360, (40, 60, 120), -1)
        return Frame(image, index, time.perf_counter(), restarted=index == 0)

    def close(self) -> None:
        pass


def parse_synthetic(spec: str) -> tuple[tuple[int, int], float]:
    """`synthetic:1280x720@30` → ((1280, 720), 30.0)."""
    try:
        size, fps = spec.split(":", 1)[1].split("@")
        return parse_size(size), float(fps)
    except (ValueError, IndexError):
        raise BadArgument(f"bad source {spec!r}: use synthetic:WIDTHxHEIGHT@FPS, for example synthetic:1280x720@30") from None


class ImageSource:
    """A still image: one frame, or the same frame at `fps` forever when looping."""

    self_paced = False  # frames come as fast as they are read; live mode paces them

    def __init__(self, path: Path, fps: float, loop: bool) -> None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SourceUnavailable(f"cannot read image {path}: not an image file OpenCV can decode")
        self.image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self.height, self.width = self.image.shape[:2]
        self.fps, self.loop, self.count = fps, loop, 0

    def read(self) -> Frame | None:
        if self.count and not self.loop:
            return None
        self.count += 1
        return Frame(self.image, self.count - 1, time.perf_counter(), restarted=self.count == 1)

    def close(self) -> None:
        pass


class VideoFileSource:
    """A video file decoded with PyAV, at its own size and frame rate."""

    self_paced = False  # frames come as fast as they are read; live mode paces them

    def __init__(self, path: Path, loop: bool) -> None:
        import av

        self.path, self.loop = path, loop
        try:
            self.container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as error:
            raise SourceUnavailable(f"cannot open video {path}: {error}") from None
        if not self.container.streams.video:
            self.container.close()
            raise SourceUnavailable(f"{path} has no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        self.fps = float(stream.average_rate or stream.guessed_rate or 30)
        self.frames = self.container.decode(stream)
        self.index = 0

    def read(self) -> Frame | None:
        import av

        try:
            frame = next(self.frames)
        except StopIteration:
            if not self.loop or self.index == 0:
                return None
            self.container.seek(0)
            self.frames = self.container.decode(self.container.streams.video[0])
            self.index = 0
            return self.read()
        except av.error.FFmpegError as error:
            raise SourceUnavailable(f"cannot decode {self.path}: {error}") from None
        image = frame.to_ndarray(format="rgb24")
        self.index += 1
        return Frame(image, self.index - 1, time.perf_counter(), restarted=self.index == 1)

    def close(self) -> None:
        self.container.close()


def _quietly(function, *args):
    """Call an OpenCV function without its log lines (camera probing warns loudly)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return function(*args)
    finally:
        cv2.utils.logging.setLogLevel(level)


def list_cameras() -> list[str]:
    """Cameras this machine shows: `/dev/videoN (name)` on Linux, else indices that open."""
    if sys.platform.startswith("linux"):
        found = []
        for device in sorted(glob.glob("/dev/video*"), key=lambda p: int(p[10:] or 0)):
            name_file = Path("/sys/class/video4linux") / Path(device).name / "name"
            name = name_file.read_text().strip() if name_file.exists() else "camera"
            found.append(f"{device} ({name})")
        return found
    found = []
    for index in range(5):
        capture = _quietly(cv2.VideoCapture, index)
        if capture.isOpened():
            found.append(str(index))
        capture.release()
    return found


class CameraSource:
    """A camera opened with OpenCV at the requested size and rate, MJPG where offered."""

    self_paced = True  # the device delivers frames at its own rate

    def __init__(self, device: int | str, size: tuple[int, int], fps: float) -> None:
        path = f"/dev/video{device}" if isinstance(device, int) else device
        missing = sys.platform.startswith("linux") and not Path(path).exists()
        capture = None if missing else _quietly(cv2.VideoCapture, device)
        if capture is None or not capture.isOpened():
            cameras = list_cameras()
            listing = ", ".join(cameras) if cameras else "none"
            raise SourceUnavailable(f"no camera at {device!r}; cameras found: {listing} (use --source demo to try without one)")
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        capture.set(cv2.CAP_PROP_FPS, fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.capture, self.device = capture, device
        self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.fps = capture.get(cv2.CAP_PROP_FPS) or fps
        self.index = 0

    def read(self) -> Frame | None:
        ok, bgr = self.capture.read()
        captured_at = time.perf_counter()
        if not ok:
            raise SourceUnavailable(f"camera {self.device!r} stopped delivering frames")
        self.index += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.index - 1, captured_at, restarted=self.index == 1)

    def close(self) -> None:
        self.capture.release()


Source = DemoSource | SyntheticSource | ImageSource | VideoFileSource | CameraSource


def source_kind(spec: str) -> str:
    """`demo`, `synthetic`, `camera`, `image` or `video`: what a source string names."""
    if spec == "demo" or spec.startswith("synthetic:"):
        return spec.split(":")[0]
    if spec.isdigit() or spec.startswith("/dev/video"):
        return "camera"
    return "image" if Path(spec).suffix.lower() in IMAGE_SUFFIXES else "video"


def open_source(settings: SourceSettings) -> Source:
    """The source named by `settings.source`."""
    spec, kind = settings.source, source_kind(settings.source)
    if kind == "demo":
        return DemoSource(settings.size, settings.fps, settings.loop)
    if kind == "synthetic":
        size, fps = parse_synthetic(spec)
        return SyntheticSource(size, fps, loop=settings.loop)
    if kind == "camera":
        return CameraSource(int(spec) if spec.isdigit() else spec, settings.size, settings.fps)
    path = Path(spec)
    if not path.exists():
        raise SourceUnavailable(f"source {spec!r} not found: give a camera index, /dev/videoN, a video or image file, or demo")
    if kind == "image":
        return ImageSource(path, settings.fps, settings.loop)
    return VideoFileSource(path, settings.loop)


class LatestFrameReader:
    """Live mode: a thread reads the source and keeps only the newest frame.

    Sources that are not cameras are paced at their frame rate, the way a camera delivers
    frames. `read()` waits for a frame newer than the last one returned; frames that were
    replaced before anyone read them are counted in `dropped`.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.width, self.height, self.fps = source.width, source.height, source.fps
        self.dropped = 0
        self._latest: Frame | None = None
        self._finished = False
        self._error: Exception | None = None
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = 0.0 if self.source.self_paced else 1.0 / self.fps
        next_time = time.perf_counter()
        try:
            while not self._stop.is_set():
                if period:
                    next_time += period
                    time.sleep(max(0.0, next_time - time.perf_counter()))
                frame = self.source.read()
                with self._condition:
                    if frame is None:
                        self._finished = True
                    else:
                        if self._latest is not None:  # nobody took it: drop it
                            self.dropped += 1
                            frame.restarted |= self._latest.restarted  # keep a restart visible
                        self._latest = frame
                    self._condition.notify_all()
                if frame is None:
                    return
        except Exception as error:  # handed to the reading thread, which raises it
            with self._condition:
                self._error, self._finished = error, True
                self._condition.notify_all()

    def read(self) -> Frame | None:
        with self._condition:
            while self._latest is None and not self._finished:
                self._condition.wait()
            if self._error is not None:
                raise self._error
            frame, self._latest = self._latest, None
            return frame

    def close(self) -> None:
        """Stop the capture thread; a `read()` waiting for a frame returns None. The source
        itself stays open for its owner to close."""
        self._stop.set()
        self._thread.join(timeout=2)
        with self._condition:
            self._finished = True
            self._condition.notify_all()

