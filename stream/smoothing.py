"""Temporal smoothing of the matte, at the network's resolution, along the motion.

Each neighbouring matte (the previous one live; in file mode the next one too) is first moved
along the optical flow between the two frames (OpenCV's DIS flow on the network-size
luminance, about 0.5 ms on the CPU), so that a turning head or a panning camera leaves no
ghost behind. It is then blended in where the moved image matches the new one and
the two mattes agree: a still or tracked region stops flickering, while what the flow cannot
explain (a hand coming in, something uncovered) passes straight through. On a CUDA device
the flow is not computed (it would cost a round trip to the host): the blend is gated by the
plain change of the image, as for a still camera. Across a cut (the whole frame changed)
nothing is blended.

After smoothing, `Hysteresis` remembers which pixels are shown, so that a region whose
probability hovers about 0.5 does not blink: a pixel turns on above 0.5 + `HYSTERESIS` and
off below 0.5 − `HYSTERESIS`.

State is explicit: the previous matte and the previous image, and the shown pixels, cleared
by `reset()`, which the loop calls when the source restarts; a change of size resets it too.
File mode, which can look ahead, follows `TemporalSmoother` with `look_ahead`, then its own
`Hysteresis`.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from stream.frames import box_mean

_LUMA = (0.299, 0.587, 0.114)
DEFAULT_STRENGTH = 0.9  # a neighbour's weight where it matches and agrees
# Local luminance error (0–1, averaged over 5×5) at which a neighbour stops counting: after
# moving it along the flow, and without flow, where any change means motion.
FLOW_MISMATCH, STILL_MISMATCH = 0.15, 0.06
# Mean luminance error over the whole frame above which a neighbour is another shot (a cut):
# consecutive frames of the masked clips stay below 0.025 after alignment, cuts between them
# are above 0.09.
SHOT_CHANGE = 0.06
HYSTERESIS = 0.05  # how far past 0.5 a pixel's probability must go to turn it on or off
# DIS flow: the ultrafast preset refined down to half the network's resolution (its default
# stops at a quarter), with patches every 6 pixels there instead of 4. On the masked clips the
# matte then trails moving edges by a third to a half as much, for 0.25 ms more at 256×192
# (0.54 ms in all); every 4 pixels cost 0.97 ms for the same, the medium preset 2.5 ms for less.
FLOW_FINEST_SCALE, FLOW_PATCH_STRIDE = 1, 6


def luma(image: torch.Tensor) -> torch.Tensor:
    """N×3×h×w RGB in [0, 1] → N×1×h×w luminance."""
    weights = torch.tensor(_LUMA, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def estimate_flow(luminance: torch.Tensor, other_luminance: torch.Tensor) -> torch.Tensor:
    """N×h×w×2 offsets (x, y) in pixels such that `luminance` at p looks like `other_luminance`
    at p + offset (DIS, ultrafast preset, with `FLOW_FINEST_SCALE` and `FLOW_PATCH_STRIDE`).
    Both N×1×h×w in [0, 1], on the CPU."""
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    flow.setFinestScale(FLOW_FINEST_SCALE)
    flow.setPatchStride(FLOW_PATCH_STRIDE)
    to_uint8 = lambda tensor: (tensor[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # noqa: E731
    return torch.from_numpy(np.stack([flow.calc(to_uint8(a), to_uint8(b), None)
                                      for a, b in zip(luminance, other_luminance)]))


@functools.lru_cache(maxsize=8)
def _pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """h×w×2 pixel centres in `grid_sample`'s [-1, 1] coordinates, and the scale from pixels
    to those coordinates (made once per size)."""
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)])
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs, ys], -1) * scale - 1, scale


def warp(tensor: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """N×C×h×w sampled at p + flow(p) (bilinear, edges repeated); flow N×h×w×2 on the CPU."""
    grid, scale = _pixel_grid(*tensor.shape[-2:])
    return F.grid_sample(tensor, torch.addcmul(grid, flow, scale), mode="bilinear", padding_mode="border",
                         align_corners=True)


def aligned(luminance: torch.Tensor, other_alpha: torch.Tensor,
            other_luminance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A neighbour's matte and luminance moved onto this frame, and the mismatch that counts."""
    if luminance.is_cuda:
        return other_alpha, other_luminance, STILL_MISMATCH
    moved = warp(torch.cat([other_alpha, other_luminance], 1), estimate_flow(luminance, other_luminance))
    return moved[:, :1], moved[:, 1:], FLOW_MISMATCH


def shot_changed(difference: torch.Tensor) -> torch.Tensor:
    """N×1×1×1: whether each frame is another shot than its neighbour (a cut), from their
    N×1×h×w absolute luminance difference. A tensor, so that no result waits for the device."""
    return difference.mean((1, 2, 3), keepdim=True) > SHOT_CHANGE


def neighbour_weight(alpha: torch.Tensor, luminance: torch.Tensor, other_alpha: torch.Tensor,
                     other_luminance: torch.Tensor, strength: float, mismatch: float) -> torch.Tensor:
    """How much of an (aligned) neighbour's matte to blend in, per pixel: `strength` where the
    images match and the mattes agree, falling to 0 as either differs, and 0 across a cut."""
    difference = (luminance - other_luminance).abs()
    error = box_mean(difference, 2)
    trust = (1 - error / mismatch).clamp_(0, 1)
    agreement = 1 - (alpha - other_alpha).abs()
    return strength * trust * agreement * (~shot_changed(difference)).to(alpha.dtype)


def look_ahead(alphas: torch.Tensor, luminance: torch.Tensor, strength: float = DEFAULT_STRENGTH) -> torch.Tensor:
    """File mode's look-ahead: each matte of a run N×1×h×w, already smoothed with the past by
    `TemporalSmoother`, is averaged with the next one, aligned to it and weighted by
    `neighbour_weight` (the frames' luminance N×1×h×w, from `luma`). Only the next one: the
    past is in each matte already, and blending the previous one as well made the result
    trail moving edges. Returns the first N−1 mattes."""
    current, current_luma = alphas[:-1], luminance[:-1]
    next_alpha, next_luma, mismatch = aligned(current_luma, alphas[1:], luminance[1:])
    weight = neighbour_weight(current, current_luma, next_alpha, next_luma, strength, mismatch)
    return torch.lerp(current, next_alpha, weight / (1 + weight))


class Hysteresis:
    """Per-pixel memory of what was shown. A pixel is shown once its probability exceeds
    0.5 + `margin`, and until it falls below 0.5 − `margin`. Each matte is remapped so that
    0.5, where the upsampling's contrast turns, falls at that pixel's threshold: 0.5 − `margin`
    for shown pixels, 0.5 + `margin` for the others (piecewise linear, 0 and 1 kept). The
    first matte, one of another size and the first after a cut (the network-size luminance
    changed by more than `SHOT_CHANGE` on average) pass as they are and start the memory at
    0.5."""

    def __init__(self, margin: float = HYSTERESIS) -> None:
        if not 0 <= margin < 0.5:
            raise ValueError(f"hysteresis margin must be in [0, 0.5), not {margin}")
        self.margin = margin
        self.shown: torch.Tensor | None = None
        self.luminance: torch.Tensor | None = None

    def reset(self) -> None:
        self.shown = None
        self.luminance = None

    def __call__(self, alpha: torch.Tensor, luminance: torch.Tensor) -> torch.Tensor:
        """alpha and luminance N×1×h×w in [0, 1] → the remapped alpha."""
        if self.margin == 0:
            return alpha
        if self.shown is None or self.shown.shape != alpha.shape:
            self.shown, self.luminance = alpha > 0.5, luminance
            return alpha
        cut = shot_changed((luminance - self.luminance).abs())
        kept = (alpha > 0.5 + self.margin) | (self.shown & (alpha >= 0.5 - self.margin))
        self.shown = (kept & ~cut) | ((alpha > 0.5) & cut)
        self.luminance = luminance
        # 0.5 − margin where shown, 0.5 + margin elsewhere; 0.5 after a cut, where the remap
        # below leaves the matte as it is.
        threshold = 0.5 + self.margin * (1 - 2 * self.shown.to(alpha.dtype)) * (~cut).to(alpha.dtype)
        below = alpha * (0.5 / threshold)
        above = 0.5 + (alpha - threshold) * (0.5 / (1 - threshold))
        return torch.lerp(above, below, (alpha < threshold).to(alpha.dtype))  # a fifth of torch.where's time on the CPU


class TemporalSmoother:
    def __init__(self, strength: float = DEFAULT_STRENGTH, hysteresis: bool = True) -> None:
        """`strength` in [0, 1): the previous matte's weight where it matches and agrees (0
        turns smoothing off, and the hysteresis with it). `hysteresis`: pass the output
        through a `Hysteresis` (file mode applies its own after the look-ahead)."""
        if not 0 <= strength < 1:
            raise ValueError(f"smoothing strength must be in [0, 1), not {strength}")
        self.strength = strength
        self.hysteresis = Hysteresis(HYSTERESIS if strength and hysteresis else 0.0)
        self.previous_alpha: torch.Tensor | None = None
        self.previous_luma: torch.Tensor | None = None

    def reset(self) -> None:
        self.previous_alpha = None
        self.previous_luma = None
        self.hysteresis.reset()

    def __call__(self, alpha: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """alpha N×1×h×w and the network input image N×3×h×w (both in [0, 1]) → smoothed alpha."""
        if self.strength == 0:
            return alpha
        luminance = luma(image)
        if self.previous_alpha is None or self.previous_alpha.shape != alpha.shape:
            smoothed = alpha
        else:
            previous_alpha, previous_luma, mismatch = aligned(luminance, self.previous_alpha, self.previous_luma)
            weight = neighbour_weight(alpha, luminance, previous_alpha, previous_luma, self.strength, mismatch)
            smoothed = torch.lerp(alpha, previous_alpha, weight)
        self.previous_alpha, self.previous_luma = smoothed, luminance
        return self.hysteresis(smoothed, luminance)
