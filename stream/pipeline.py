"""The loop: source → segmenter → smoother → compositor → sinks, timed stage by stage.

It owns the frame-drop policy: in live mode a capture thread keeps only the newest frame
and stale frames are dropped; otherwise every frame is processed. The per-frame stages are
the device-agnostic functions of `stream.frames`, so the same loop runs on CPU tensors and,
with a GPU segmenter, entirely on the GPU (one upload, one download per frame).
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engines.segmenter import Segmenter
from stream.backgrounds import Background
from stream.frames import composite, download, guided_upsample, network_size, preprocess, upload
from stream.sinks import Command, Sink
from stream.smoothing import TemporalSmoother
from stream.sources import Frame, LatestFrameReader, Source
from stream.timing import FrameRecord, StageClock


@dataclass
class LoopSettings:
    frames: int | None = None  # stop after this many output frames
    smooth: float = 0.7  # temporal smoothing strength, 0 turns it off
    live: bool = True  # newest frame only (drop stale ones) instead of every frame
    long_side: int = 256  # the network input's long side
    stage_threads: int = 1  # torch threads for the per-pixel CPU stages


@dataclass
class RunSummary:
    frames: int
    dropped: int
    interrupted: bool = False


def prepare_stages(device: torch.device, threads: int = 1) -> None:
    """Set the process up for the per-pixel stages on `device` (the live loop and file mode).

    On the CPU: `threads` torch threads (the network keeps its own), and glibc is stopped
    from handing each freed frame-sized buffer back to the system. Every full-resolution
    tensor is allocated anew each frame; by default glibc maps such large blocks fresh and
    unmaps them on free, so each one costs page faults. Keeping them halves the compositing
    time at 1280x720. Without glibc that part does nothing.
    """
    if device.type != "cpu":
        return
    torch.set_num_threads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mallopt_trim_threshold, mallopt_mmap_threshold = -1, -3
    libc.mallopt(mallopt_trim_threshold, 1 << 30)
    libc.mallopt(mallopt_mmap_threshold, 1 << 30)


class FrameProcessor:
    """One frame through preprocess, infer, smooth, upsample and composite.

    State: the smoother's previous matte, the current background, and whether the matte
    itself is shown instead of the composite.
    """

    def __init__(self, segmenter: Segmenter, backgrounds: list[Background], smooth: float, long_side: int) -> None:
        self.segmenter = segmenter
        self.device = segmenter.device
        self.backgrounds = backgrounds
        self.background_index = 0
        self.show_matte = False
        self.smoother = TemporalSmoother(smooth)
        self.long_side = long_side
        self.frame_shape: tuple[int, ...] | None = None

    @property
    def background(self) -> Background:
        return self.backgrounds[self.background_index]

    @property
    def alpha_output(self) -> bool:
        """Whether output frames are RGBA (the `none` background)."""
        return any(b.name == "none" for b in self.backgrounds)

    def handle(self, command: Command) -> None:
        if command is Command.NEXT_BACKGROUND:
            self.background_index = (self.background_index + 1) % len(self.backgrounds)
        elif command is Command.TOGGLE_MATTE:
            self.show_matte = not self.show_matte

    def __call__(self, frame: Frame, clock: StageClock) -> np.ndarray:
        if frame.restarted or frame.image.shape != self.frame_shape:
            self.smoother.reset()
            self.frame_shape = frame.image.shape
        image = upload(frame.image, self.device)
        small = preprocess(image, network_size(*image.shape[:2], long_side=self.long_side))
        clock.mark("preprocess")
        small_alpha = self.segmenter(small)
        clock.mark("infer")
        small_alpha = self.smoother(small_alpha, small)
        clock.mark("smooth")
        pixels = image.to(torch.float32)  # one conversion shared by upsampling and blending
        alpha = guided_upsample(small_alpha, small, pixels)
        clock.mark("upsample")
        output = self._compose(image, pixels, small, small_alpha, alpha)
        clock.mark("composite")
        return download(output)

    def _compose(
        self, image: torch.Tensor, pixels: torch.Tensor, small: torch.Tensor, small_alpha: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        if self.show_matte:
            matte = (alpha * 255).round_().to(torch.uint8).expand(-1, -1, 3)
            return _opaque(matte) if self.alpha_output else matte
        return compose(image, pixels, small, small_alpha, alpha, self.background, self.alpha_output)


def compose(image: torch.Tensor, pixels: torch.Tensor, small: torch.Tensor, small_alpha: torch.Tensor,
            alpha: torch.Tensor, background: Background, rgba: bool) -> torch.Tensor:
    """The output frame: the person over `background` (H×W×3 uint8), or with `rgba` H×W×4,
    whose alpha is the matte for the `none` background and opaque otherwise.

    image: H×W×3 uint8 frame, pixels: the same as float32, small/small_alpha: the network's
    input and (smoothed) matte, alpha: the full-resolution matte H×W×1.
    """
    backdrop = background.render(image, small, small_alpha)
    if backdrop is None:
        return torch.cat([image, (alpha * 255).round_().to(torch.uint8)], dim=2)
    output = composite(pixels, alpha, backdrop)
    return _opaque(output) if rgba else output


def _opaque(frame: torch.Tensor) -> torch.Tensor:
    """H×W×3 uint8 → H×W×4 with an opaque alpha channel."""
    return torch.cat([frame, torch.full_like(frame[:, :, :1], 255)], dim=2)


def run_loop(
    source: Source,
    processor: FrameProcessor,
    sinks: list[Sink],
    settings: LoopSettings,
    observers: list[Callable[[FrameRecord], None]] = (),
) -> RunSummary:
    """Run until the source ends, `settings.frames` frames are out, or a sink asks to quit.

    Ctrl-C ends the loop with `interrupted` set; the caller closes the sinks.
    """
    prepare_stages(processor.device, settings.stage_threads)
    reader = LatestFrameReader(source) if settings.live else source
    clock = StageClock(processor.device)
    count = 0
    try:
        while settings.frames is None or count < settings.frames:
            clock.start()
            frame = reader.read()
            if frame is None:
                break
            clock.mark("capture")
            output = processor(frame, clock)
            commands = [sink.write(output) for sink in sinks]
            done_at = clock.mark("sink")
            record = FrameRecord(count, frame.captured_at, done_at, dict(clock.stages))
            for observer in observers:
                observer(record)
            count += 1
            if Command.QUIT in commands:
                break
            for command in commands:
                if command is not None:
                    processor.handle(command)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if settings.live:
            reader.close()
    return RunSummary(count, reader.dropped if settings.live else 0, interrupted)
