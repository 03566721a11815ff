"""The per-frame stages, the same calls on CPU and CUDA tensors.

Frames travel as H×W×3 uint8 RGB tensors (a zero-copy view of the numpy frame on the CPU;
uploaded once on a GPU). Mattes are H×W×1 float32 in [0, 1]. On CUDA every stage is torch
and nothing copies to the host. On the CPU the full-resolution work runs in OpenCV's SIMD
kernels on zero-copy numpy views of the same tensors: each full-resolution pixel is read
about once per stage, with no float copy of a picture. The filters at the network's size
(`box_mean`, `half_size`, `gaussian_blur`) run there too, plane by plane: on tensors that
small, torch's pooling and convolutions cost several times more.
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


def _per_plane(image: torch.Tensor, operation, size: tuple[int, int] | None = None) -> torch.Tensor:
    """N×C×h×w CPU tensor → `operation(plane, out)` on each h×w float32 plane, written into
    one array (of planes `size` (h, w) when the operation changes it)."""
    batch, channels, height, width = image.shape
    planes = image.to(torch.float32).contiguous().numpy().reshape(batch * channels, height, width)
    out = np.empty((batch * channels, *(size or (height, width))), np.float32)
    for plane, result in zip(planes, out):
        operation(plane, result)
    return torch.from_numpy(out.reshape(batch, channels, *out.shape[1:]))


def box_mean(image: torch.Tensor, radius: int) -> torch.Tensor:
    """N×C×h×w → the mean over each (2r+1)² window, averaging only the pixels inside the image.

    On the CPU OpenCV's running-sum box filter times each window's reciprocal pixel count (a
    tenth of torch's pooling time at the network's size); on CUDA two torch pooling passes.
    """
    if image.is_cuda:
        return _box_mean_torch(image, radius)
    size = 2 * radius + 1
    sums = _per_plane(image, lambda plane, out: cv2.boxFilter(
        plane, -1, (size, size), dst=out, normalize=False, borderType=cv2.BORDER_CONSTANT))
    return sums.mul_(torch.from_numpy(_reciprocal_counts(*image.shape[-2:], radius)))


def half_size(image: torch.Tensor) -> torch.Tensor:
    """N×C×h×w → N×C×⌈h/2⌉×⌈w/2⌉, each pixel the mean of a 2×2 block (of the pixels inside
    the image, at an odd edge: the same as repeating the edge)."""
    if image.is_cuda:
        return F.avg_pool2d(image, 2, ceil_mode=True)
    height, width = image.shape[-2:]
    odd = height % 2 or width % 2  # the network's sizes are even: no copy there

    def halve(plane: np.ndarray, out: np.ndarray) -> None:
        if odd:
            plane = cv2.copyMakeBorder(plane, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        cv2.resize(plane, out.shape[::-1], dst=out, interpolation=cv2.INTER_AREA)

    return _per_plane(image, halve, ((height + 1) // 2, (width + 1) // 2))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """N×C×h×w → blurred with a Gaussian of `sigma` pixels, cut at 3 sigma, edges repeated."""
    radius = int(3 * sigma)
    if image.is_cuda:
        return _gaussian_blur_torch(image, sigma, radius)
    return _per_plane(image, lambda plane, out: cv2.GaussianBlur(
        plane, (2 * radius + 1, 2 * radius + 1), sigma, dst=out, borderType=cv2.BORDER_REPLICATE))


def _gaussian_blur_torch(image: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(image.shape[1], 1, 1, 1)
    image = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="replicate"), kernel, groups=image.shape[1])
    return F.conv2d(F.pad(image, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3),
                    groups=image.shape[1])


def _box_mean_torch(image: torch.Tensor, radius: int) -> torch.Tensor:
    size = 2 * radius + 1
    rows = F.avg_pool2d(image, (1, size), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(rows, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)


@functools.lru_cache(maxsize=8)
def _reciprocal_counts(height: int, width: int, radius: int) -> np.ndarray:
    """h×w: one over how many pixels of the image each (2r+1)² window covers (made once per size)."""
    def along(length: int) -> np.ndarray:
        index = np.arange(length)
        return (np.minimum(index, radius) + np.minimum(length - 1 - index, radius) + 1).astype(np.float32)

    return 1 / (along(height)[:, None] * along(width)[None, :])


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
