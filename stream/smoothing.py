"""Temporal smoothing of the matte, at the network's resolution.

The matte is blended with its neighbours in time only where the image did not move and the
mattes roughly agree. A still person's edges stop flickering, while a moving head is never
held back (no lag, no ghost trailing behind). State is explicit: the previous matte and the
previous image, cleared by `reset()`, which the loop calls when the source restarts; a
change of size resets it too. File mode, which can look ahead, uses `smooth_window`: the
previous and the next matte, both weighted the same way.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

_LUMA = (0.299, 0.587, 0.114)
DEFAULT_STRENGTH = 0.7  # the previous matte's weight where nothing moved


def luma(image: torch.Tensor) -> torch.Tensor:
    """N×3×h×w RGB in [0, 1] → N×1×h×w luminance."""
    weights = torch.tensor(_LUMA, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def neighbour_weight(alpha: torch.Tensor, luminance: torch.Tensor, other_alpha: torch.Tensor,
                     other_luminance: torch.Tensor, strength: float, motion_threshold: float) -> torch.Tensor:
    """How much of a neighbouring frame's matte to blend in, per pixel: `strength` where the
    image is still and the mattes agree, falling to 0 with motion or disagreement."""
    motion = F.avg_pool2d((luminance - other_luminance).abs(), 5, stride=1, padding=2, count_include_pad=False)
    still = (1 - motion / motion_threshold).clamp_(0, 1)
    agreement = 1 - (alpha - other_alpha).abs()
    return strength * still * agreement


def smooth_window(alphas: torch.Tensor, images: torch.Tensor, strength: float = DEFAULT_STRENGTH,
                  motion_threshold: float = 0.06) -> torch.Tensor:
    """Look-ahead smoothing of a run of frames: each matte N×1×h×w is averaged with its
    previous and next neighbours (images N×3×h×w), weighted by `neighbour_weight`. The
    first and last frames have one neighbour. Returns the middle frames' mattes (N−2)."""
    luminance = luma(images)
    middle, middle_luma = alphas[1:-1], luminance[1:-1]
    before = neighbour_weight(middle, middle_luma, alphas[:-2], luminance[:-2], strength, motion_threshold)
    after = neighbour_weight(middle, middle_luma, alphas[2:], luminance[2:], strength, motion_threshold)
    return (middle + before * alphas[:-2] + after * alphas[2:]) / (1 + before + after)


class TemporalSmoother:
    def __init__(self, strength: float = DEFAULT_STRENGTH, motion_threshold: float = 0.06) -> None:
        """`strength` in [0, 1): the previous matte's weight where nothing moved (0 turns
        smoothing off). `motion_threshold`: the local change of luminance (0–1) counted as
        motion."""
        if not 0 <= strength < 1:
            raise ValueError(f"smoothing strength must be in [0, 1), not {strength}")
        self.strength = strength
        self.motion_threshold = motion_threshold
        self.previous_alpha: torch.Tensor | None = None
        self.previous_luma: torch.Tensor | None = None

    def reset(self) -> None:
        self.previous_alpha = None
        self.previous_luma = None

    def __call__(self, alpha: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """alpha N×1×h×w and the network input image N×3×h×w (both in [0, 1]) → smoothed alpha."""
        if self.strength == 0:
            return alpha
        luminance = luma(image)
        if self.previous_alpha is None or self.previous_alpha.shape != alpha.shape:
            smoothed = alpha
        else:
            weight = neighbour_weight(alpha, luminance, self.previous_alpha, self.previous_luma,
                                      self.strength, self.motion_threshold)
            smoothed = torch.lerp(alpha, self.previous_alpha, weight)
        self.previous_alpha, self.previous_luma = smoothed, luminance
        return smoothed
