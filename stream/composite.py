"""The output frame: the person over the background, or the matte itself, from a `Matte`.

`blend` (in `stream.frames`) is the per-pixel operation; `compose` decides what the output
frame holds: the blend, the person with the matte as alpha (a background that keeps alpha),
or the matte shown as a grey picture.
"""
from __future__ import annotations

import torch

from stream.backgrounds import Background
from stream.chain import Matte
from stream.frames import blend


def matte_picture(matte: Matte) -> torch.Tensor:
    """The matte as an H×W×1 uint8 picture (255 = person)."""
    return (matte.alpha * 255).round_().to(torch.uint8)


def compose(matte: Matte, background: Background, rgba: bool, show_matte: bool = False) -> torch.Tensor:
    """The output frame: H×W×3 uint8, or with `rgba` H×W×4, whose alpha is the matte for a
    background that keeps alpha and opaque otherwise. `show_matte` shows the matte instead."""
    if show_matte:
        picture = matte_picture(matte).expand(-1, -1, 3)
        return _opaque(picture) if rgba else picture
    backdrop = background.render(matte.frame, matte.small, matte.small_alpha)
    if backdrop is None:
        return torch.cat([matte.frame, matte_picture(matte)], dim=2)
    output = blend(matte.frame, matte.alpha, backdrop)
    return _opaque(output) if rgba else output


def _opaque(frame: torch.Tensor) -> torch.Tensor:
    """H×W×3 uint8 → H×W×4 with an opaque alpha channel."""
    return torch.cat([frame, torch.full_like(frame[:, :, :1], 255)], dim=2)
