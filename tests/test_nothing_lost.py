"""Nothing lost: Ctrl-C at random moments keeps every frame counted, in order; an interrupted
run never replaces a good file; a killed run leaves a file that plays, which the next run keeps.

Frames carry their number as ten black or white squares (the numbered frames of
`benchmarks/interrupts.py`), so each output frame can be matched to the source frame it came
from."""
from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import stream.video
from engines.tiramisu import InferenceSpec
from stream.chain import MatteChain
from stream.pipeline import FrameProcessor, LoopSettings, run_loop
from stream.backgrounds import open_background
from stream.sinks import Ending, FileSink, partial_path
from stream.errors import SinkUnavailable
from stream.sources import Frame
from stream.video import VideoSettings, process_video
from stream.webcam import main as webcam_main
from tests.conftest import read_frames

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("interrupts", ROOT / "benchmarks" / "interrupts.py")
interrupts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(interrupts)
SIZE = interrupts.SIZE
numbered, number, numbered_clip = interrupts.numbered, interrupts.number, interrupts.write_clip


class Everyone:
    """A stand-in network that calls every pixel person: the output frame is the input frame."""

    name, device, spec = "everyone", torch.device("cpu"), InferenceSpec(long_side=64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)  # a network takes time: interrupts land in every stage, and 240 frames take over a second
        return torch.ones(images.shape[0], 1, *images.shape[2:])


class NumberedSource:
    self_paced, width, height, fps = False, *SIZE, 24.0

    def __init__(self) -> None:
        self.count = 0

    def read(self) -> Frame:
        self.count += 1
        return Frame(numbered(self.count - 1), self.count - 1, time.perf_counter())

    def close(self) -> None:
        pass


@contextmanager
def ctrl_c_after(seconds: float):
    """Ctrl-C to this process after `seconds`, unless the block is over by then."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_ctrl_c_in_file_mode_keeps_every_frame_counted(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(stream.video, "open_segmenter", lambda *args: Everyone())
    clip = numbered_clip(tmp_path / "in.mp4", 240)
    randomness = random.Random(suffix)
    for run in range(4):
        out = tmp_path / f"out{run}{suffix}"
        with ctrl_c_after(randomness.uniform(0.1, 0.5)):
            summary = process_video(VideoSettings(clip, out, bg="green", batch=4, smooth=0.0, quality=10))
        assert summary.interrupted and summary.path == out
        assert [number(frame) for frame in read_frames(out)] == list(range(summary.frames))


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_ctrl_c_in_the_loop_keeps_every_frame_counted(tmp_path, suffix):
    processor = FrameProcessor(MatteChain(Everyone()), [open_background("green")])
    randomness = random.Random(suffix)
    for run in range(4):
        out = tmp_path / f"out{run}{suffix}"
        sink = FileSink(out, *SIZE, Fraction(24), 10)
        with ctrl_c_after(randomness.uniform(0.1, 0.8)):
            summary = run_loop(NumberedSource(), processor, [sink], LoopSettings(drop_stale=False))
        sink.close(Ending.INTERRUPTED if summary.interrupted else Ending.COMPLETE)
        assert summary.interrupted
        assert [number(frame) for frame in read_frames(out)] == [index % interrupts.FRAMES for index in range(summary.frames)]


def test_an_interrupted_overwrite_keeps_the_old_file_and_puts_the_new_frames_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(stream.video, "open_segmenter", lambda *args: Everyone())
    clip = numbered_clip(tmp_path / "in.mp4", 60)
    out = tmp_path / "out.mp4"
    assert process_video(VideoSettings(clip, out, bg="green", smooth=0.0)).frames == 60
    before = out.read_bytes()

    def interrupt(count: int) -> None:
        if count == 20:
            os.kill(os.getpid(), signal.SIGINT)

    summary = process_video(VideoSettings(clip, out, bg="green", smooth=0.0, overwrite=True), on_frame=interrupt)
    assert summary.interrupted and out.read_bytes() == before
    assert summary.path == tmp_path / "out.interrupted.mp4" and len(read_frames(summary.path)) == summary.frames >= 20


def test_a_killed_run_leaves_a_file_that_plays_and_the_next_run_keeps_it(tmp_path):
    clip = numbered_clip(tmp_path / "in.mp4", 256)
    out = tmp_path / "out.mp4"
    # A photo background: every fragment is then several kilobytes, whatever the model finds.
    command = [sys.executable, "-m", "stream.video", str(clip), "-o", str(out), "--bg", "beach.jpg"]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
    partial, deadline = partial_path(out), time.monotonic() + 120
    while (not partial.exists() or partial.stat().st_size < 8_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    frames = read_frames(partial)
    assert 0 < len(frames) < 256 and frames[-1].shape == (SIZE[1], SIZE[0], 3)  # the real model: a composite

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    recovered = tmp_path / "out.recovered.mp4"
    assert f"kept as {recovered}" in rerun.stderr and f"it holds {len(frames)} frames" in rerun.stderr
    assert len(read_frames(recovered)) == len(frames) and len(read_frames(out)) == 256


def test_a_failed_run_keeps_its_frames_beside_and_never_at_the_name(tmp_path):
    out = tmp_path / "out.mp4"
    sink = FileSink(out, *SIZE, Fraction(24), 10)
    for index in range(5):
        sink.write(numbered(index))
    sink.close(Ending.FAILED)
    assert not out.exists() and [number(f) for f in read_frames(tmp_path / "out.failed.mp4")] == list(range(5))


def test_ffmpeg_refusing_a_frame_is_one_typed_error(tmp_path):
    sink = FileSink(tmp_path / "odd.mp4", 63, 64, Fraction(24), 10)  # 4:2:0 needs even sizes
    with pytest.raises(SinkUnavailable, match="cannot write"):
        sink.write(np.zeros((64, 63, 3), np.uint8))
    sink.close(Ending.FAILED)


def test_the_loop_replaces_an_existing_file_only_with_overwrite(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"a good file")
    common = ["--source", "demo", "--size", "160x120", "--sink", str(out), "--frames", "2"]
    assert webcam_main(common) == 2 and out.read_bytes() == b"a good file"
    assert webcam_main([*common, "--overwrite"]) == 0 and len(read_frames(out)) == 2
