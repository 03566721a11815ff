"""The loop: source → matte chain → compositor → sinks, timed stage by stage.

It owns the frame-drop policy: with `drop_stale` a capture thread keeps only the newest frame
and stale frames are dropped; otherwise every frame is processed. The per-frame work is
`stream.chain.MatteChain` and `stream.composite.compose`, which run the same on CPU tensors
and, with a GPU segmenter, entirely on the GPU (one upload, one download per frame).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engines.cli import StopRequest
from stream.backgrounds import Background
from stream.chain import MatteChain, prepare_stages
from stream.composite import compose
from stream.frames import download
from stream.sinks import Command, Sink
from stream.sources import Frame, LatestFrameReader, Source
from stream.timing import FrameRecord, StageClock


@dataclass
class LoopSettings:
    frames: int | None = None  # stop after this many output frames
    drop_stale: bool = True  # process the newest frame only, dropping those that waited
    stage_threads: int = 1  # torch threads for the per-pixel CPU stages


@dataclass
class RunSummary:
    frames: int
    dropped: int
    interrupted: bool = False


class FrameProcessor:
    """One frame through the matte chain and the compositor, to a host array.

    State: the chain's smoother (reset when the source restarts or the frame size changes),
    the current background, and whether the matte itself is shown instead of the composite.
    """

    def __init__(self, chain: MatteChain, backgrounds: list[Background]) -> None:
        self.chain = chain
        self.device = chain.segmenter.device
        self.backgrounds = backgrounds
        self.background_index = 0
        self.show_matte = False
        self.rgba = any(background.keeps_alpha for background in backgrounds)
        self.frame_shape: tuple[int, ...] | None = None

    @property
    def background(self) -> Background:
        return self.backgrounds[self.background_index]

    def handle(self, command: Command) -> None:
        if command is Command.NEXT_BACKGROUND:
            self.background_index = (self.background_index + 1) % len(self.backgrounds)
        elif command is Command.TOGGLE_MATTE:
            self.show_matte = not self.show_matte

    def __call__(self, frame: Frame, clock: StageClock) -> np.ndarray:
        if frame.restarted or frame.image.shape != self.frame_shape:
            self.chain.reset()
            self.frame_shape = frame.image.shape
        matte = self.chain(frame.image, clock.mark)
        output = compose(matte, self.background, self.rgba, self.show_matte)
        clock.mark("composite")
        return download(output)


def run_loop(
    source: Source,
    processor: FrameProcessor,
    sinks: list[Sink],
    settings: LoopSettings,
    observers: list[Callable[[FrameRecord], None]] = (),
) -> RunSummary:
    """Run until the source ends, `settings.frames` frames are out, or a sink asks to quit.

    Ctrl-C ends the loop between two frames, with `interrupted` set: every frame counted is
    in every sink. The caller closes the sinks.
    """
    prepare_stages(processor.device, settings.stage_threads)
    reader = LatestFrameReader(source) if settings.drop_stale else source
    clock = StageClock(processor.device)
    count, interrupted = 0, False
    try:
        with StopRequest() as stop:
            while (settings.frames is None or count < settings.frames) and not stop.requested:
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
            interrupted = stop.requested
    except KeyboardInterrupt:  # a second Ctrl-C, while a frame was in hand
        interrupted = True
    finally:
        if settings.drop_stale:
            reader.close()
    return RunSummary(count, reader.dropped if settings.drop_stale else 0, interrupted)
