"""Shared fixtures: media the tests make themselves, an in-memory virtual camera, networks
with batch-norm statistics as training leaves them, and stand-ins for Robust Video Matting."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import pyvirtualcam
import torch


def make_clip(path: Path, frames: int = 12, size: tuple[int, int] = (320, 240), fps: int = 24,
              audio: bool = False, codec: str = "libx264") -> Path:
    """Write a clip: a grey room with a skin-toned figure moving across it, and a red patch at
    the top left; with `audio`, a 440 Hz AAC tone as long as the video."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=48000)
            sound.layout = "mono"
        for index in range(frames):
            image = np.full((height, width, 3), 120, np.uint8)
            image[: height // 6, : width // 6] = (255, 0, 0)
            x = width // 3 + index * 2
            image[height // 3 :, x : x + width // 4] = (200, 150, 120)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            samples_total = 48000 * frames // fps
            for start in range(0, samples_total, 1024):
                count = min(1024, samples_total - start)
                t = (np.arange(start, start + count) / 48000).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32),
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 48000, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


class MemoryCamera:
    """A pyvirtualcam backend that keeps every frame it is sent (RGB, as the camera sees it)."""

    instances: list["MemoryCamera"] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc, device, **kwargs) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames: list[np.ndarray] = []
        MemoryCamera.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "memory"

    def native_fourcc(self):
        return None


@pytest.fixture
def memory_camera():
    pyvirtualcam.register_backend("memory", MemoryCamera)
    MemoryCamera.instances.clear()
    return MemoryCamera


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm statistics and affine terms, as training leaves them (so that the
    output depends on them), in eval mode."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor in (module.weight, module.bias, module.running_mean):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def export_matting(module: torch.nn.Module, path):
    """`module` as an ONNX file with Robust Video Matting's inputs and outputs."""
    inputs = (torch.zeros(1, 3, 8, 8), *[torch.zeros(1, 1, 1, 1)] * 4, torch.ones(1))
    names = ["src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio"]
    torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17, input_names=names,
                      output_names=["fgr", "pha", "r1o", "r2o", "r3o", "r4o"],
                      dynamic_axes={"src": {2: "height", 3: "width"}, "fgr": {2: "height", 3: "width"},
                                    "pha": {2: "height", 3: "width"}})
    return path
