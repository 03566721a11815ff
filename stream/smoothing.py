"""Temporal smoothing of the matte, at the network's resolution.

The matte is blended with the previous one only where the image did not move and the two
mattes roughly agree. A still person's edges stop flickering, while a moving head is never
held back (no lag, no ghost trailing behind). State is explicit: the previous matte and the
previous image, cleared by `reset()`, which the loop calls when the source restarts; a
change of size resets it too.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

_LUMA = (0.299, 0.587, 0.114)


class TemporalSmoother:
    def __init__(self, strength: float = 0.7, motion_threshold: float = 0.06) -> None:
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
        weights = torch.tensor(_LUMA, device=image.device, dtype=image.dtype).view(1, 3, 1, 1)
        luma = (image * weights).sum(1, keepdim=True)
        if self.previous_alpha is None or self.previous_alpha.shape != alpha.shape:
            smoothed = alpha
        else:
            motion = F.avg_pool2d((luma - self.previous_luma).abs(), 5, stride=1, padding=2, count_include_pad=False)
            still = (1 - motion / self.motion_threshold).clamp_(0, 1)
            agreement = 1 - (alpha - self.previous_alpha).abs()
            weight = self.strength * still * agreement
            smoothed = torch.lerp(alpha, self.previous_alpha, weight)
        self.previous_alpha, self.previous_luma = smoothed, luma
        return smoothed
