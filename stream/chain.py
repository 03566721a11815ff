"""The per-frame chain, written once: upload → preprocess → segment → smooth → upsample.

    matte = MatteChain(open_segmenter("auto"), TemporalSmoother())(frame)   # frame: H×W×3 uint8 RGB

The live loop, file mode, evaluation and the GPU check all run it, so that what is measured is
what users run. The model's `InferenceSpec` (carried by the segmenter) sets the network size
and the upsampling. File mode, which segments frames in batches and smooths with look-ahead,
runs the same steps one by one: `prepare`, the segmenter, its smoother, `upsample`.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engines.segmenter import Segmenter
from engines.tiramisu import InferenceSpec
from stream.frames import guided_upsample, preprocess, upload
from stream.smoothing import TemporalSmoother


@dataclass
class NetworkInput:
    """A frame on the segmenter's device and the network's view of it."""

    frame: torch.Tensor  # H×W×3 uint8
    small: torch.Tensor  # 1×3×h×w float32 in [0, 1], h×w from the model's spec


@dataclass
class Matte:
    """What the chain gives for one frame, everything on the segmenter's device."""

    frame: torch.Tensor  # H×W×3 uint8
    pixels: torch.Tensor  # the frame as float32, shared by upsampling and blending
    small: torch.Tensor  # 1×3×h×w network input in [0, 1]
    small_alpha: torch.Tensor  # 1×1×h×w matte at the network's size, smoothed
    alpha: torch.Tensor  # H×W×1 float32 matte in [0, 1]


def _no_clock(stage: str) -> None:
    return None


class MatteChain:
    """The chain for one segmenter. State: the smoother's (reset it when the source restarts
    or the frame size changes). `spec` overrides the model's own (evaluation at other sizes)."""

    def __init__(self, segmenter: Segmenter, smoother: TemporalSmoother | None = None,
                 spec: InferenceSpec | None = None) -> None:
        self.segmenter = segmenter
        self.smoother = smoother or TemporalSmoother(0.0)
        self.spec = spec or segmenter.spec

    def reset(self) -> None:
        self.smoother.reset()

    def prepare(self, image: np.ndarray) -> NetworkInput:
        """Upload an H×W×3 uint8 RGB frame and resize it for the network."""
        frame = upload(image, self.segmenter.device)
        return NetworkInput(frame, preprocess(frame, self.spec.input_size(*frame.shape[:2])))

    def upsample(self, prepared: NetworkInput, small_alpha: torch.Tensor) -> Matte:
        """The network-size matte brought to the frame with the guided filter."""
        pixels = prepared.frame.to(torch.float32)
        alpha = guided_upsample(small_alpha, prepared.small, pixels, self.spec.upsample_radius, self.spec.upsample_eps)
        return Matte(prepared.frame, pixels, prepared.small, small_alpha, alpha)

    def __call__(self, image: np.ndarray, mark: Callable[[str], object] = _no_clock) -> Matte:
        """One frame through the whole chain; `mark(stage)` is called as each stage ends."""
        prepared = self.prepare(image)
        mark("preprocess")
        small_alpha = self.segmenter(prepared.small)
        mark("infer")
        small_alpha = self.smoother(small_alpha, prepared.small)
        mark("smooth")
        matte = self.upsample(prepared, small_alpha)
        mark("upsample")
        return matte


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
