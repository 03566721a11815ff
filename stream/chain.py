"""The per-frame chain, written once: upload → preprocess → segment → smooth → upsample.

    matte = MatteChain(open_segmenter("auto"), TemporalSmoother())(frame)   # frame: H×W×3 uint8 RGB

The live loop, file mode, evaluation and the GPU check all run it, so that what is measured is
what users run. The model's `InferenceSpec` (carried by the segmenter) sets the network size
and the upsampling. File mode segments frames in batches and smooths with look-ahead:
`LookAheadChain` runs the same steps (`prepare`, the segmenter, a smoother, `upsample`).
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from engines.segmenter import Segmenter
from engines.tiramisu import InferenceSpec
from stream.frames import guided_upsample, preprocess, upload
from stream.smoothing import HYSTERESIS, Hysteresis, TemporalSmoother, look_ahead, luma


@dataclass
class NetworkInput:
    """A frame on the segmenter's device and the network's view of it."""

    frame: torch.Tensor  # H×W×3 uint8
    small: torch.Tensor  # 1×3×h×w float32 in [0, 1], h×w from the model's spec


@dataclass
class Matte:
    """What the chain gives for one frame, everything on the segmenter's device."""

    frame: torch.Tensor  # H×W×3 uint8
    small: torch.Tensor  # 1×3×h×w network input in [0, 1]
    small_alpha: torch.Tensor  # 1×1×h×w matte at the network's size, smoothed and through the hysteresis
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
        alpha = guided_upsample(small_alpha, prepared.small, prepared.frame, self.spec.upsample_radius,
                                self.spec.upsample_eps, self.spec.upsample_contrast)
        return Matte(prepared.frame, prepared.small, small_alpha, alpha)

    def segment(self, image: np.ndarray,
                mark: Callable[[str], object] = _no_clock) -> tuple[NetworkInput, torch.Tensor]:
        """The first half: the frame prepared and through the network (its small matte)."""
        prepared = self.prepare(image)
        mark("preprocess")
        small_alpha = self.segmenter(prepared.small)
        mark("infer")
        return prepared, small_alpha

    def finish(self, prepared: NetworkInput, small_alpha: torch.Tensor,
               mark: Callable[[str], object] = _no_clock) -> Matte:
        """The second half, in frame order: smoothing, then upsampling."""
        small_alpha = self.smoother(small_alpha, prepared.small)
        mark("smooth")
        matte = self.upsample(prepared, small_alpha)
        mark("upsample")
        return matte

    def __call__(self, image: np.ndarray, mark: Callable[[str], object] = _no_clock) -> Matte:
        """One frame through the whole chain; `mark(stage)` is called as each stage ends."""
        return self.finish(*self.segment(image, mark), mark)


class LookAheadChain:
    """File mode's chain: the steps of `MatteChain`, with the segmenter called on batches of
    `batch` frames, each matte smoothed in order as live (`TemporalSmoother`, without its
    hysteresis), then blended with the next frame's (`look_ahead`), then through
    `Hysteresis`; `strength` 0 turns all three off.
    `add(tag, image)` returns the (tag, Matte) pairs released so far, in order (a frame waits
    for its next neighbour); `finish()` the rest. `tag` is the caller's (file mode passes the
    decoded frame, for its timestamp)."""

    def __init__(self, chain: MatteChain, batch: int, strength: float) -> None:
        self.chain, self.batch, self.strength = chain, batch, strength
        self.smoother = TemporalSmoother(strength, hysteresis=False)
        self.hysteresis = Hysteresis(HYSTERESIS if strength else 0.0)
        self.waiting: list = []  # (tag, NetworkInput) not yet through the network
        self.frames: list = []  # (tag, NetworkInput, small alpha, luminance) through the network, not yet released

    def add(self, tag, image: np.ndarray) -> list[tuple[object, Matte]]:
        self.waiting.append((tag, self.chain.prepare(image)))
        return self._run() if len(self.waiting) >= self.batch else []

    def finish(self) -> list[tuple[object, Matte]]:
        return self._run(last=True)

    def _run(self, last: bool = False) -> list[tuple[object, Matte]]:
        if self.waiting:
            alphas = self.chain.segmenter(torch.cat([prepared.small for _, prepared in self.waiting]))
            self.frames += [(tag, prepared, self.smoother(alpha[None], prepared.small), luma(prepared.small))
                            for (tag, prepared), alpha in zip(self.waiting, alphas)]
            self.waiting = []
        run = self.frames + self.frames[-1:] if last else self.frames  # the very last frame is its own next
        if len(run) < 2:
            return []
        alphas = torch.cat([alpha for _, _, alpha, _ in run])
        luminance = torch.cat([frame_luma for _, _, _, frame_luma in run])
        smoothed = look_ahead(alphas, luminance, self.strength) if self.strength else alphas[:-1]
        released = run[:-1]
        self.frames = run[-1:] if not last else []  # the newest frame waits for its next neighbour
        return [(tag, self.chain.upsample(prepared, self.hysteresis(smoothed[i : i + 1], frame_luma)))
                for i, (tag, prepared, _, frame_luma) in enumerate(released)]


def prepare_stages(device: torch.device, threads: int = 1) -> None:
    """Set the process up for the per-pixel stages on `device` (the live loop and file mode).

    On the CPU: `threads` OpenCV threads for the full-resolution passes and one torch thread
    for the network-size work (more only adds overhead there; the network keeps its own
    threads). And glibc is stopped from handing each freed frame-sized buffer back to the
    system: every full-resolution array is allocated anew each frame, and by default glibc
    maps such large blocks fresh and unmaps them on free, so each one costs page faults.
    Keeping them halves the compositing time at 1280x720. Without glibc that part does
    nothing.
    """
    if device.type != "cpu":
        return
    torch.set_num_threads(1)
    cv2.setNumThreads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mallopt_trim_threshold, mallopt_mmap_threshold = -1, -3
    libc.mallopt(mallopt_trim_threshold, 1 << 30)
    libc.mallopt(mallopt_mmap_threshold, 1 << 30)
