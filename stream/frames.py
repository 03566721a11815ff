"""The per-frame stages that run the same on CPU and CUDA tensors.

Frames travel as H×W×3 uint8 RGB tensors (a zero-copy view of the numpy frame on the CPU;
uploaded once on a GPU). Mattes are H×W×1 float32 in [0, 1]. Nothing here copies to the
host, so the GPU loop runs these functions unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F


def upload(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    """An H×W×3 uint8 numpy frame as a tensor on `device` (no copy on the CPU)."""
    tensor = torch.from_numpy(frame)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def download(frame: torch.Tensor) -> np.ndarray:
    """A uint8 frame tensor as a numpy array on the host (no copy on the CPU)."""
    return frame.cpu().numpy()


def preprocess(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """H×W×3 uint8 frame → 1×3×h×w float32 network input in [0, 1] (antialiased resize)."""
    image = frame.permute(2, 0, 1).unsqueeze(0)  # a channels-last view, no copy
    if image.is_cuda:
        image = image.float()  # CUDA resizes floats; the CPU has a fast uint8 path
    small = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    return small.float() / 255


def _box(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)² window, with edges handled by averaging only inside the image.

    Two one-dimensional passes: 2(2r+1) reads per pixel instead of (2r+1)².
    """
    size = 2 * radius + 1
    rows = F.avg_pool2d(image, (1, size), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(rows, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)


def guided_upsample(
    alpha: torch.Tensor, small_image: torch.Tensor, frame: torch.Tensor, radius: int = 4, eps: float = 1e-3
) -> torch.Tensor:
    """Edge-aware upsampling of a low-resolution matte to the frame (fast guided filter).

    alpha: 1×1×h×w, small_image: 1×3×h×w in [0, 1] (the network input), frame: H×W×3 in
    0–255 (uint8, or float32 to share one conversion with `blend`).
    The filter's linear coefficients are fitted at low resolution against the green channel
    (a cheap stand-in for luminance) and applied to the full-resolution green channel, so
    edges follow the frame's real edges (hair, fingers) instead of the network's coarse grid.
    Returns H×W×1 float32 in [0, 1]. The radius (in network pixels) was chosen on the
    portraits' validation split: 4 beat 1–3 on IoU and on boundary F-score.
    """
    guide = small_image[:, 1:2]
    means = _box(torch.cat([guide, alpha, guide * alpha, guide * guide], 1), radius)
    mean_guide, mean_alpha = means[:, 0:1], means[:, 1:2]
    covariance = means[:, 2:3] - mean_guide * mean_alpha
    variance = means[:, 3:4] - mean_guide * mean_guide
    a = covariance / (variance + eps)
    b = mean_alpha - a * mean_guide
    height, width = frame.shape[:2]
    coefficients = F.interpolate(torch.cat([a / 255, b], 1), size=(height, width), mode="bilinear", align_corners=False)
    green = frame[:, :, 1].to(torch.float32)
    return torch.addcmul(coefficients[0, 1], coefficients[0, 0], green).clamp_(0, 1).unsqueeze(-1)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1×3×h×w float32 image in 0–255 → H×W×3 uint8 at `size` (bilinear).

    On the CPU it takes torch's fast uint8 channels-last path, ten times quicker than float.
    """
    if image.is_cuda:
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return resized[0].permute(1, 2, 0).add_(0.5).to(torch.uint8)
    small = image.add(0.5).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    return F.interpolate(small, size=size, mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)


def blend(frame: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Blend the person over `background` → H×W×3 uint8.

    frame and background: H×W×3 (or broadcastable, for a plain colour) in 0–255, uint8 or
    float32; alpha: H×W×1 float32 in [0, 1].
    """
    base = background.to(torch.float32)
    blended = torch.addcmul(base, alpha, frame.to(torch.float32) - base)
    return blended.add_(0.5).to(torch.uint8)  # a convex blend stays in 0–255: rounding is enough
