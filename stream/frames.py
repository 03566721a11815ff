"""The per-frame stages, the same calls on CPU and CUDA tensors.

Frames travel as H×W×3 uint8 RGB tensors (a zero-copy view of the numpy frame on the CPU;
uploaded once on a GPU). Mattes are H×W×1 float32 in [0, 1]. On CUDA every stage is torch
and nothing copies to the host. On the CPU the full-resolution work runs in OpenCV's SIMD
kernels on zero-copy numpy views of the same tensors: each full-resolution pixel is read
about once per stage, with no float copy of a picture.
"""
from __future__ import annotations

import functools

import cv2
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


_MAX_CHANNELS = 128  # OpenCV's float box filter refuses more channels at once


def box_mean(image: torch.Tensor, radius: int) -> torch.Tensor:
    """N×C×h×w → the mean over each (2r+1)² window, averaging only the pixels inside the image.

    On the CPU OpenCV's running-sum box filter (a tenth of torch's pooling time at the
    network's size), divided by each window's pixel count; on CUDA two torch pooling passes.
    """
    if image.is_cuda:
        return _box_mean_torch(image, radius)
    size = 2 * radius + 1
    batch, channels, height, width = image.shape
    planes = image.to(torch.float32).reshape(batch * channels, height, width).permute(1, 2, 0).contiguous().numpy()
    sums = np.concatenate([
        cv2.boxFilter(np.ascontiguousarray(planes[..., start : start + _MAX_CHANNELS]), -1, (size, size),
                      normalize=False, borderType=cv2.BORDER_CONSTANT).reshape(height, width, -1)
        for start in range(0, batch * channels, _MAX_CHANNELS)], axis=2)
    sums = torch.from_numpy(sums).permute(2, 0, 1)
    return (sums / _window_counts(height, width, radius)).reshape(batch, channels, height, width)


def _box_mean_torch(image: torch.Tensor, radius: int) -> torch.Tensor:
    size = 2 * radius + 1
    rows = F.avg_pool2d(image, (1, size), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(rows, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)


@functools.lru_cache(maxsize=8)
def _window_counts(height: int, width: int, radius: int) -> torch.Tensor:
    """h×w: how many pixels of the image each (2r+1)² window covers (made once per size)."""
    def along(length: int) -> torch.Tensor:
        index = torch.arange(length)
        return (index.clamp(max=radius) + (length - 1 - index).clamp(max=radius) + 1).to(torch.float32)

    return along(height)[:, None] * along(width)[None, :]


def guided_upsample(
    alpha: torch.Tensor, small_image: torch.Tensor, frame: torch.Tensor, radius: int, eps: float,
    contrast: float = 1.0,
) -> torch.Tensor:
    """Edge-aware upsampling of a low-resolution matte to the frame (fast guided filter).

    alpha: 1×1×h×w, small_image: 1×3×h×w in [0, 1] (the network input), frame: H×W×3 uint8.
    The filter's linear coefficients are fitted at low resolution against the green channel
    (a cheap stand-in for luminance), then upsampled and applied to the full-resolution green
    channel in one pass, so edges follow the frame's real edges (hair, fingers) instead of
    the network's coarse grid. Returns H×W×1 float32 in [0, 1]. `radius` is in network
    pixels; `eps` is the regularisation, which keeps the frame's texture out of regions where
    the matte is flat (the models' choice, and why, is in `InferenceSpec`).
    `contrast` steepens the matte about 0.5 (alpha − 0.5 is multiplied by it before clipping),
    folded into the coefficients, so it costs nothing; 0.5 stays 0.5, so what is person at
    0.5 does not change.

    On the CPU the full-resolution pass runs in OpenCV (bilinear resize of the two
    coefficient maps, one multiply-add): a third of torch's time at 1280x720.
    """
    guide = small_image[:, 1:2]
    means = box_mean(torch.cat([guide, alpha, guide * alpha, guide * guide], 1), radius)
    mean_guide, mean_alpha = means[:, 0:1], means[:, 1:2]
    covariance = means[:, 2:3] - mean_guide * mean_alpha
    variance = means[:, 3:4] - mean_guide * mean_guide
    scale = covariance / (variance + eps) / 255  # per 0–255 level of the frame's green
    offset = mean_alpha - scale * 255 * mean_guide
    if contrast != 1:
        scale, offset = scale * contrast, (offset - 0.5) * contrast + 0.5
    height, width = frame.shape[:2]
    if frame.is_cuda:
        coefficients = F.interpolate(torch.cat([scale, offset], 1), size=(height, width), mode="bilinear",
                                     align_corners=False)
        green = frame[:, :, 1].to(torch.float32)
        return torch.addcmul(coefficients[0, 1], coefficients[0, 0], green).clamp_(0, 1).unsqueeze(-1)
    scale = cv2.resize(scale[0, 0].numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
    offset = cv2.resize(offset[0, 0].numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
    matte = cv2.multiply(cv2.extractChannel(frame.numpy(), 1), scale, dtype=cv2.CV_32F)
    np.clip(cv2.add(matte, offset, dst=matte), 0, 1, out=matte)
    return torch.from_numpy(matte).unsqueeze(-1)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """1×3×h×w float32 image in 0–255 → H×W×3 uint8 at `size` (bilinear)."""
    if image.is_cuda:
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return resized[0].permute(1, 2, 0).add_(0.5).to(torch.uint8)
    small = image[0].permute(1, 2, 0).add(0.5).to(torch.uint8).numpy()
    return torch.from_numpy(cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_LINEAR))


def blend(frame: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Blend the person over `background` → H×W×3 uint8.

    frame and background: H×W×3 uint8; alpha: H×W×1 float32 in [0, 1]. On the CPU one
    OpenCV pass (`blendLinear`, SIMD, no float copy of either picture).
    """
    if frame.is_cuda:
        base = background.to(torch.float32)
        blended = torch.addcmul(base, alpha, frame.to(torch.float32) - base)
        return blended.add_(0.5).to(torch.uint8)  # a convex blend stays in 0–255: rounding is enough
    weight = alpha.numpy()[:, :, 0]
    return torch.from_numpy(cv2.blendLinear(frame.numpy(), background.numpy(), weight, 1 - weight))
