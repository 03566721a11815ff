"""What goes behind the person, named by one string: an image or video file, `blur`, a colour
(`green`, `#00b140`) or `none` (keep the alpha channel).

    python -c "from stream.backgrounds import open_background; print(open_background('beach.jpg'))"

Each background says whether it `keeps_alpha` (only `none`: the output carries the matte as
its alpha channel) and renders behind a frame: `render(frame, small_image, small_alpha)` returns
an H×W×3 uint8 tensor on the frame's device, or None for `none`. What does not change from
frame to frame (a scaled picture, a colour) is made once per frame size.
`small_image` and `small_alpha` are the network's input and matte, 1×3×h×w and 1×1×h×w.
Image names that are not files are looked up among the shipped backgrounds.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import torch

from engines.errors import BadArgument
from engines.imaging import IMAGE_SUFFIXES, VIDEO_SUFFIXES, cover
from stream.errors import SourceUnavailable
from stream.frames import gaussian_blur, half_size, resize_image
from stream.sources import ASSETS, VideoFileSource

SHIPPED = ASSETS / "backgrounds"
COLOURS = {
    "green": (0, 177, 64),
    "blue": (0, 71, 187),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}


class ImageBackground:
    """A picture, scaled to cover the frame once per frame size, kept on the frame's device."""

    keeps_alpha = False

    def __init__(self, path: Path) -> None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SourceUnavailable(f"cannot read background image {path}: not an image OpenCV can decode")
        self.name = path.name
        self.image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._cached: torch.Tensor | None = None

    def render(self, frame: torch.Tensor, small_image: torch.Tensor, small_alpha: torch.Tensor) -> torch.Tensor:
        height, width = frame.shape[:2]
        if self._cached is None or self._cached.shape[:2] != (height, width) or self._cached.device != frame.device:
            self._cached = torch.from_numpy(cover(self.image, width, height)).to(frame.device)
        return self._cached


class VideoBackground:
    """A video, looped, one background frame per output frame."""

    keeps_alpha = False

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.video = VideoFileSource(path, loop=True)

    def render(self, frame: torch.Tensor, small_image: torch.Tensor, small_alpha: torch.Tensor) -> torch.Tensor:
        height, width = frame.shape[:2]
        picture = self.video.read()
        if picture is None:
            raise SourceUnavailable(f"background video {self.name} has no frames")
        return torch.from_numpy(cover(picture.image, width, height)).to(frame.device)


class ColourBackground:
    """One colour, filled once per frame size."""

    keeps_alpha = False

    def __init__(self, name: str, rgb: tuple[int, int, int]) -> None:
        self.name = name
        self.rgb = rgb
        self._cached: torch.Tensor | None = None

    def render(self, frame: torch.Tensor, small_image: torch.Tensor, small_alpha: torch.Tensor) -> torch.Tensor:
        if self._cached is None or self._cached.shape != frame.shape or self._cached.device != frame.device:
            colour = torch.tensor(self.rgb, dtype=torch.uint8, device=frame.device)
            self._cached = colour.expand(frame.shape).contiguous()
        return self._cached


class BlurBackground:
    """The frame's own background, blurred, with the person's colours kept out of it.

    The blur is a normalised convolution at half the network's resolution: the image
    weighted by (1 − alpha), blurred, divided by the blurred weight. The person's pixels add
    nothing, so no halo of their colours surrounds them. The result is upsampled to the frame.
    """

    keeps_alpha = False

    def __init__(self, sigma: float = 2.0) -> None:
        self.name = "blur"
        self.sigma = sigma  # in pixels at half the network's resolution

    def render(self, frame: torch.Tensor, small_image: torch.Tensor, small_alpha: torch.Tensor) -> torch.Tensor:
        weight = half_size(1 - small_alpha)
        image = half_size(small_image)
        # One call blurs the weighted image, the weight, and the plain image.
        blurred = gaussian_blur(torch.cat([image * weight, weight, image], 1), self.sigma)
        background = blurred[:, :3] / blurred[:, 3:4].clamp(min=1e-3)
        # Where the person covers everything nearby, fall back to the plain blur.
        trust = (blurred[:, 3:4] * 4).clamp(max=1)
        background = torch.lerp(blurred[:, 4:], background, trust) * 255
        return resize_image(background, frame.shape[:2])


class NoBackground:
    """No background: the output keeps the matte as an alpha channel."""

    name = "none"
    keeps_alpha = True

    def render(self, frame: torch.Tensor, small_image: torch.Tensor, small_alpha: torch.Tensor) -> None:
        return None


Background = ImageBackground | VideoBackground | ColourBackground | BlurBackground | NoBackground


def parse_colour(text: str) -> tuple[int, int, int] | None:
    if text.lower() in COLOURS:
        return COLOURS[text.lower()]
    if text.startswith("#") and len(text) == 7:
        try:
            return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
        except ValueError:
            return None
    return None


def open_background(spec: str) -> Background:
    """The background named by `spec`."""
    if spec == "blur":
        return BlurBackground()
    if spec == "none":
        return NoBackground()
    colour = parse_colour(spec)
    if colour is not None:
        return ColourBackground(spec, colour)
    path = Path(spec)
    if not path.exists() and (SHIPPED / path.name).exists():
        path = SHIPPED / path.name
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        shipped = ", ".join(sorted(p.name for p in SHIPPED.iterdir()))
        raise BadArgument(
            f"unknown background {spec!r}: use an image or video file ({shipped} ship with the project), "
            f"blur, none, a colour ({', '.join(COLOURS)}) or #rrggbb"
        )
    if not path.is_file():
        raise SourceUnavailable(f"background file {spec} not found")
    return ImageBackground(path) if suffix in IMAGE_SUFFIXES else VideoBackground(path)
