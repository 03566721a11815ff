"""The live path: the capture thread that keeps only the newest frame, drop counting, and the
preview window's commands on the frame processor."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from engines.tiramisu import InferenceSpec
from stream.backgrounds import open_background
from stream.chain import MatteChain
from stream.pipeline import FrameProcessor, LoopSettings, run_loop
from stream.sinks import Command, NullSink
from stream.smoothing import TemporalSmoother
from stream.sources import Frame, LatestFrameReader
from stream.timing import StageClock


class CountingCamera:
    """A self-paced source: frame i holds the value i, made on demand; it can fail or end."""

    self_paced = True
    width, height, fps = 32, 24, 30.0

    def __init__(self, frames: int = 10_000, fail_at: int | None = None, restart_at: int | None = None,
                 period: float = 0.0) -> None:
        self.frames, self.fail_at, self.restart_at, self.period = frames, fail_at, restart_at, period
        self.made = 0

    def read(self) -> Frame | None:
        if self.made == self.fail_at:
            raise OSError("camera unplugged")
        if self.made >= self.frames:
            return None
        time.sleep(self.period)
        image = np.full((self.height, self.width, 3), self.made % 256, np.uint8)
        frame = Frame(image, self.made, time.perf_counter(), restarted=self.made == self.restart_at)
        self.made += 1
        return frame

    def close(self) -> None:
        pass


class LeftHalfPerson:
    """A stand-in network: the left half of every frame is the person."""

    name, device, spec = "left-half", torch.device("cpu"), InferenceSpec(long_side=32, multiple=8)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        alpha = torch.zeros(images.shape[0], 1, *images.shape[2:])
        alpha[..., : images.shape[-1] // 2] = 1.0
        return alpha


def test_a_slow_reader_gets_newer_frames_and_the_rest_are_counted_as_dropped():
    camera = CountingCamera(frames=200, period=0.001)
    reader = LatestFrameReader(camera)
    seen = []
    while (frame := reader.read()) is not None:
        seen.append(frame.index)
        time.sleep(0.01)
    reader.close()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert reader.dropped > 0
    assert len(seen) + reader.dropped == camera.made == 200


def test_a_restart_stays_visible_when_its_frame_is_dropped():
    camera = CountingCamera(frames=6, restart_at=3)
    reader = LatestFrameReader(camera)
    while not reader._finished:  # the thread runs to the end unread: frames 0–4 are dropped
        time.sleep(0.001)
    frame = reader.read()
    reader.close()
    assert frame.index == 5 and frame.restarted


def test_an_error_in_the_capture_thread_reaches_the_reader():
    reader = LatestFrameReader(CountingCamera(fail_at=3))
    with pytest.raises(OSError, match="camera unplugged"):
        while reader.read() is not None:
            pass
    reader.close()


def test_close_stops_the_capture_thread():
    reader = LatestFrameReader(CountingCamera(period=0.001))
    assert reader.read() is not None
    reader.close()
    assert not reader._thread.is_alive()
    assert not any(thread.name == "capture" for thread in threading.enumerate())


def test_the_live_loop_drops_stale_frames_and_counts_them():
    chain = MatteChain(LeftHalfPerson())
    processor = FrameProcessor(chain, [open_background("green")])

    class SlowSink(NullSink):
        def write(self, frame):
            time.sleep(0.005)

    camera = CountingCamera(frames=300, period=0.0005)
    summary = run_loop(camera, processor, [SlowSink()], LoopSettings(drop_stale=True))
    assert summary.dropped > 0 and summary.frames + summary.dropped == 300
    every = run_loop(CountingCamera(frames=30), processor, [SlowSink()], LoopSettings(drop_stale=False))
    assert (every.frames, every.dropped) == (30, 0)


def test_window_commands_cycle_backgrounds_and_show_the_matte():
    processor = FrameProcessor(MatteChain(LeftHalfPerson()), [open_background("green"), open_background("#ff0000")])
    frame = CountingCamera().read()
    frame.image[:] = 200
    clock = StageClock(torch.device("cpu"))
    green = processor(frame, clock)
    assert tuple(green[12, 30]) == (0, 177, 64) and tuple(green[12, 1]) == (200, 200, 200)
    processor.handle(Command.NEXT_BACKGROUND)
    assert tuple(processor(frame, clock)[12, 30]) == (255, 0, 0)
    processor.handle(Command.NEXT_BACKGROUND)
    assert tuple(processor(frame, clock)[12, 30]) == (0, 177, 64)  # back to the first
    processor.handle(Command.TOGGLE_MATTE)
    matte = processor(frame, clock)
    assert matte.shape == (24, 32, 3) and tuple(matte[12, 1]) == (255, 255, 255) and tuple(matte[12, 30]) == (0, 0, 0)
    processor.handle(Command.TOGGLE_MATTE)
    assert tuple(processor(frame, clock)[12, 30]) == (0, 177, 64)


def test_the_matte_view_keeps_an_opaque_alpha_when_the_output_is_rgba():
    processor = FrameProcessor(MatteChain(LeftHalfPerson()), [open_background("none")])
    processor.handle(Command.TOGGLE_MATTE)
    matte = processor(CountingCamera().read(), StageClock(torch.device("cpu")))
    assert matte.shape == (24, 32, 4) and (matte[..., 3] == 255).all()


class ConstantPerson:
    """A stand-in network whose person probability is `value` everywhere."""

    name, device, spec = "constant", torch.device("cpu"), InferenceSpec(long_side=32, multiple=8)

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0], 1, *images.shape[2:]), self.value)


@pytest.mark.parametrize("change", ["restart", "size"])
def test_a_restarted_source_or_a_new_size_starts_the_smoothing_afresh(change):
    """After frames at 0.6, a still frame at 0.3 is pulled up towards 0.6 by the smoother;
    after a restart or a change of size it comes out as from a processor that saw nothing before."""
    def matte_view(network: ConstantPerson) -> FrameProcessor:
        processor = FrameProcessor(MatteChain(network, TemporalSmoother(0.9)), [open_background("green")])
        processor.handle(Command.TOGGLE_MATTE)
        return processor

    clock, network = StageClock(torch.device("cpu")), ConstantPerson(0.6)
    processor, still = matte_view(network), CountingCamera().read()
    for _ in range(4):
        processor(still, clock)
    if change == "restart":
        fresh = Frame(still.image, 0, time.perf_counter(), restarted=True)
    else:
        fresh = Frame(np.zeros((48, 64, 3), np.uint8), 5, time.perf_counter())
    unseen = matte_view(ConstantPerson(0.3))(fresh, clock)
    network.value = 0.3
    assert processor(Frame(still.image, 4, time.perf_counter()), clock).mean() > unseen.mean() + 20  # smoothed
    network.value = 0.6
    processor(still, clock)
    network.value = 0.3
    assert np.array_equal(processor(fresh, clock), unseen)


class RecordingSink(NullSink):
    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def write(self, frame):
        self.frames.append(frame.copy())


def test_overlap_gives_the_same_frames_in_the_same_order_as_one_thread():
    outputs = {}
    for overlap in (False, True):
        sink = RecordingSink()
        processor = FrameProcessor(MatteChain(LeftHalfPerson()), [open_background("green")])
        summary = run_loop(CountingCamera(frames=40), processor, [sink], LoopSettings(drop_stale=False, overlap=overlap))
        assert (summary.frames, summary.dropped) == (40, 0)
        outputs[overlap] = sink.frames
    assert [frame[0, 0, 0] for frame in outputs[True]] == list(range(40))  # the person's half shows frame i
    assert all(np.array_equal(a, b) for a, b in zip(outputs[False], outputs[True]))


@pytest.mark.parametrize("drop_stale", [False, True])
def test_an_error_in_the_segmenting_thread_reaches_the_loop_and_the_thread_ends(drop_stale):
    """The network fails on the second frame (the camera makes a frame every 10 ms for 0.4 s,
    so with `drop_stale` a second frame comes too)."""
    class FailsAtTheSecondFrame(LeftHalfPerson):
        calls = 0

        def __call__(self, images):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("engine lost")
            return super().__call__(images)

    processor = FrameProcessor(MatteChain(FailsAtTheSecondFrame()), [open_background("green")])
    sink = RecordingSink()
    with pytest.raises(RuntimeError, match="engine lost"):
        run_loop(CountingCamera(frames=40, period=0.01), processor, [sink],
                 LoopSettings(drop_stale=drop_stale, overlap=True))
    assert len(sink.frames) == 1
    assert not any(thread.name in ("segment", "capture") for thread in threading.enumerate())


def test_a_sink_that_quits_stops_the_segmenting_thread():
    class QuitsAtTheThird(NullSink):
        written = 0

        def write(self, frame):
            self.written += 1
            return Command.QUIT if self.written == 3 else None

    processor = FrameProcessor(MatteChain(LeftHalfPerson()), [open_background("green")])
    summary = run_loop(CountingCamera(period=0.001), processor, [QuitsAtTheThird()], LoopSettings(overlap=True))
    assert summary.frames == 3
    assert not any(thread.name in ("segment", "capture") for thread in threading.enumerate())


def test_ahead_keeps_order_raises_after_the_items_before_and_cleans_up_when_abandoned():
    from stream.ahead import Ahead

    def failing():
        yield from range(5)
        raise ValueError("bad frame")

    seen = []
    with pytest.raises(ValueError, match="bad frame"):
        for item in Ahead(failing(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]

    cleaned = threading.Event()

    def endless():
        try:
            count = 0
            while True:
                yield count
                count += 1
        finally:
            cleaned.set()

    ahead = Ahead(endless(), depth=1, name="endless")
    assert [item for item, _ in zip(ahead, range(3))] == [0, 1, 2]
    ahead.close()
    assert cleaned.is_set() and not any(thread.name == "endless" for thread in threading.enumerate())


def test_overlap_reads_at_most_one_frame_ahead_of_the_output():
    """Frame N+1 is read while frame N is composited, never N+2: a live frame is not taken
    before it can be used."""
    class SlowSink(NullSink):
        def write(self, frame):
            time.sleep(0.01)

    camera = CountingCamera(frames=1000)
    processor = FrameProcessor(MatteChain(LeftHalfPerson()), [open_background("green")])
    summary = run_loop(camera, processor, [SlowSink()], LoopSettings(frames=10, drop_stale=False, overlap=True))
    assert summary.frames == 10 and camera.made <= 11
