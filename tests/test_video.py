"""File mode: every frame, the timing and the audio bytes kept; alpha and matte outputs;
refusals, interrupts and bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

import stream.video
from engines.tiramisu import InferenceSpec
from stream.video import VideoSettings, process_video
from tests.conftest import make_clip

ROOT = Path(__file__).resolve().parents[1]


def video_timestamps(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * frame.time_base) for frame in container.decode(stream)]


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.video", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("media") / "talk.mp4", frames=30, fps=25, audio=True)


class LeftHalfPerson:
    """A stand-in network: the left half of every picture it is given is the person (so, with
    the mirror image averaged in, the matte is the same on both sides)."""

    name, device, spec = "left-half", torch.device("cpu"), InferenceSpec()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        alpha = torch.zeros(images.shape[0], 1, *images.shape[2:])
        alpha[..., : images.shape[-1] // 2] = 1.0
        return alpha


@pytest.fixture
def left_half(monkeypatch):
    """Alpha outputs checked against a known matte, whatever the shipped model makes of the clip."""
    monkeypatch.setattr(stream.video, "open_segmenter", lambda *args: LeftHalfPerson())


def assert_left_half_alpha(alpha: np.ndarray) -> None:
    width = alpha.shape[1]
    assert alpha[:, : width // 4].min() > 240 and alpha[:, -width // 4 :].max() < 15


def test_frames_timing_and_audio_bytes_are_kept(talk, tmp_path):
    out = tmp_path / "out.mp4"
    summary = process_video(VideoSettings(talk, out, bg="beach.jpg", batch=4))
    assert summary.frames == 30 and not summary.interrupted
    assert video_timestamps(out) == pytest.approx(video_timestamps(talk), abs=1e-6)
    with av.open(str(out)) as result, av.open(str(talk)) as source:
        assert result.streams.video[0].average_rate == source.streams.video[0].average_rate
        assert float(result.duration) == pytest.approx(float(source.duration), rel=0.02)
        assert (result.streams.video[0].width, result.streams.video[0].height) == (320, 240)
    assert audio_packets(out) == audio_packets(talk)
    assert not list(tmp_path.glob(".*partial*"))


def test_batching_does_not_change_the_result(talk, tmp_path):
    one, eight = tmp_path / "one.mkv", tmp_path / "eight.mkv"
    process_video(VideoSettings(talk, one, bg="green", batch=1, matte_only=True))
    process_video(VideoSettings(talk, eight, bg="green", batch=8, matte_only=True))
    with av.open(str(one)) as a, av.open(str(eight)) as b:
        first = [f.to_ndarray() for f in a.decode(video=0)]
        second = [f.to_ndarray() for f in b.decode(video=0)]
    assert len(first) == len(second) == 30
    difference = np.abs(np.stack(first).astype(int) - np.stack(second).astype(int))
    assert difference.max() <= 2  # the same mattes, up to float rounding (FFV1 is lossless)


def test_matte_only_writes_the_matte_as_one_grey_channel(talk, tmp_path, left_half):
    out = tmp_path / "matte.mkv"
    process_video(VideoSettings(talk, out, matte_only=True, mirror=False))
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 30 and frames[10].format.name == "gray"
    assert_left_half_alpha(frames[10].to_ndarray())


def test_prores_keeps_alpha(talk, tmp_path, left_half):
    out = tmp_path / "alpha.mov"
    process_video(VideoSettings(talk, out, bg="none", mirror=False))
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgba") for f in container.decode(video=0)]
    assert len(frames) == 30
    assert_left_half_alpha(frames[10][:, :, 3])


def test_vp9_webm_keeps_alpha(talk, tmp_path, left_half):
    out = tmp_path / "alpha.webm"
    process_video(VideoSettings(talk, out, bg="none", mirror=False))
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create("libvpx-vp9", "r")
        frames = [f for p in container.demux(stream) for f in decoder.decode(p)]
    assert len(frames) == 30
    assert frames[0].format.name == "yuva420p"
    assert_left_half_alpha(frames[10].to_ndarray(format="rgba")[:, :, 3])


def test_png_sequence_is_rgba(talk, tmp_path, left_half):
    out = tmp_path / "frames"
    process_video(VideoSettings(talk, out, bg="none", mirror=False))
    files = sorted(out.glob("*.png"))
    assert len(files) == 30
    picture = cv2.imread(str(files[10]), cv2.IMREAD_UNCHANGED)
    assert picture.shape == (240, 320, 4)
    assert_left_half_alpha(picture[:, :, 3])


def test_file_mode_averages_each_frame_with_its_mirror_image(talk, tmp_path, left_half):
    out = tmp_path / "frames"
    process_video(VideoSettings(talk, out, bg="none"))
    alpha = cv2.imread(str(sorted(out.glob("*.png"))[10]), cv2.IMREAD_UNCHANGED)[:, :, 3].astype(np.float32)
    left, right = alpha[:, :80].mean(), alpha[:, -80:].mean()
    assert 60 < left < 200 and abs(left - right) < 3  # half the views call each side person


def test_interrupt_leaves_a_playable_file_with_the_frames_done(talk, tmp_path):
    out = tmp_path / "cut.mp4"

    def interrupt(count: int) -> None:
        if count == 12:
            raise KeyboardInterrupt

    summary = process_video(VideoSettings(talk, out, bg="blur", batch=4), on_frame=interrupt)
    assert summary.interrupted and summary.frames == 12
    assert len(video_timestamps(out)) == 12
    with av.open(str(out)) as container:  # the sound goes on at least as long as the frames kept (12 at 25 fps)
        last = [p for p in container.demux(container.streams.audio[0]) if p.size][-1]
        assert float((last.pts + last.duration) * last.time_base) >= 12 / 25
    kept = audio_packets(out)
    assert kept == audio_packets(talk)[: len(kept)]  # copied unchanged


def test_refuses_to_overwrite_input_or_existing_output(talk, tmp_path):
    result = cli(str(talk), "-o", str(talk))
    assert result.returncode == 2 and "refusing to overwrite the input" in result.stderr
    existing = tmp_path / "exists.mp4"
    existing.write_bytes(b"keep me")
    result = cli(str(talk), "-o", str(existing))
    assert result.returncode == 2 and "add --overwrite" in result.stderr
    assert existing.read_bytes() == b"keep me"


def test_bad_inputs_give_one_line(tmp_path, talk):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    audio_only = tmp_path / "tone.m4a"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cases = [
        ((str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "a.mp4")), "not found", 1),
        ((str(text), "-o", str(tmp_path / "b.mp4")), "is not a video file", 1),
        ((str(audio_only), "-o", str(tmp_path / "c.mp4")), "has no video stream", 1),
        ((str(talk), "-o", str(tmp_path / "d.avi")), "unsupported output extension", 2),
        ((str(talk), "-o", str(tmp_path / "e.mp4"), "--bg", "none"), "cannot carry alpha", 2),
    ]
    for args, message, code in cases:
        result = cli(*args)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_corrupt_file_is_processed_as_far_as_it_decodes(talk, tmp_path):
    damaged = tmp_path / "damaged.mp4"
    data = bytearray(talk.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)
    damaged.write_bytes(bytes(data))
    result = cli(str(damaged), "-o", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "bad video packet(s) skipped: the output is shorter" in result.stderr
    assert 0 < len(video_timestamps(tmp_path / "out.mp4")) < 30
