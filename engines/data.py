"""Datasets and augmentation for person segmentation.

    python -c "from engines.data import load_portraits; print(load_portraits('../shared/data/portraits', 'test', (256, 192))[0].shape)"

- `load_portraits`: a portrait folder (`images/NAME.jpg`, `masks/NAME.png`, optionally
  `ignore/NAME.png`, `train.txt`, `test.txt` or `val.txt`) loaded whole into uint8 tensors at one size.
- `write_sample`, `add_to_split`, `fit_long_side`: write such a folder (`engines.pseudo_label`
  and `engines.coco_pool` do).
- `load_backgrounds`: a folder of photos with nobody in them (landscapes, rooms, wallpapers),
  for pasting people onto.
- `augment`: batch augmentation in torch, aimed at the seed's failure cases: poor and uneven
  light, blur and noise, dark clothes, scale and position, flips, and people pasted onto
  other backgrounds, real or synthetic. It runs on whatever device the batch is on.
- `paste_people`: the people of one augmented sample pasted over another (several people,
  of other folders, at other scales, partly cut by the frame edge).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from engines.imaging import IMAGE_SUFFIXES, cover, network_size, read_mask, read_rgb


def read_split(root: Path | str, split: str) -> list[str]:
    """Names listed in `root/split.txt`, one per line, without extension."""
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no split list {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_ignore(root: Path | str, name: str, shape: tuple[int, int]) -> np.ndarray:
    """The H×W bool map of pixels whose label is unknown (`root/ignore/NAME.png`, where the
    folder has one: crowds, void borders, cyclists), or all False."""
    path = Path(root) / "ignore" / f"{name}.png"
    return read_mask(path) if path.is_file() else np.zeros(shape, bool)


def load_portraits(
    root: Path | str, split: str, size: tuple[int, int], names: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×3×H×W uint8 and masks N×2×H×W uint8 at `size` (H, W): each scaled to cover it
    and centre-cropped, so that an image of another shape is not distorted. Mask channel 0 is
    the person, channel 1 the pixels to leave out of loss and score (`ignore/`): 0 or 255, with
    values between at edges that were resized (thresholded at 127 where used)."""
    root = Path(root)
    names = read_split(root, split) if names is None else names
    height, width = size
    images = np.empty((len(names), height, width, 3), np.uint8)
    masks = np.empty((len(names), 2, height, width), np.uint8)
    for i, name in enumerate(names):
        images[i] = cover(read_rgb(root / "images" / f"{name}.jpg"), width, height)
        person = read_mask(root / "masks" / f"{name}.png")
        for channel, mask in enumerate((person, read_ignore(root, name, person.shape))):
            masks[i, channel] = cover(mask.astype(np.uint8) * 255, width, height)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks)


def load_backgrounds(root: Path | str, size: tuple[int, int]) -> torch.Tensor:
    """Every image under `root` (recursively), scaled to cover `size` (H, W) and centre-cropped,
    as N×3×H×W uint8."""
    height, width = size
    paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [cover(read_rgb(path), width, height) for path in paths]
    if not images:
        raise FileNotFoundError(f"no images under {root}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def fit_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """`image` scaled down (area-averaged) so that its long side is at most `long_side`."""
    if max(image.shape[:2]) <= long_side:
        return image
    height, width = network_size(*image.shape[:2], long_side, multiple=1)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def write_sample(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    """Store an RGB image and its 0–255 mask in a portrait-layout folder."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image_path, mask_path = root / "images" / f"{name}.jpg", root / "masks" / f"{name}.png"
    if not (cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            and cv2.imwrite(str(mask_path), mask)):
        raise OSError(f"could not write {image_path} and {mask_path}")


def add_to_split(root: Path, split: str, names: list[str]) -> None:
    """Add `names` to `root/SPLIT.txt`, after those already listed, each once."""
    root.mkdir(parents=True, exist_ok=True)
    listing = root / f"{split}.txt"
    listed = listing.read_text().split() if listing.exists() else []
    listing.write_text("".join(f"{name}\n" for name in dict.fromkeys(listed + names)))


def _smooth_noise(n: int, size: tuple[int, int], cells: int, generator: torch.Generator, device) -> torch.Tensor:
    """N×3×H×W random colour fields with structure at about `cells` per side."""
    low = torch.rand(n, 3, cells, cells, generator=generator, device=device)
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def synthetic_backgrounds(n: int, size: tuple[int, int], generator: torch.Generator, device="cpu") -> torch.Tensor:
    """Backgrounds with no person in them: colour fields at mixed scales plus straight edges."""
    coarse = _smooth_noise(n, size, 3, generator, device)
    fine = _smooth_noise(n, size, 24, generator, device)
    fine = fine.mean(dim=1, keepdim=True) * 0.7 + fine * 0.3  # mostly texture, little colour
    mix = torch.rand(n, 1, 1, 1, generator=generator, device=device)
    background = coarse * (1 - 0.5 * mix) + fine * 0.5 * mix
    # A few hard vertical and horizontal edges, like door frames, shelves and windows.
    height, width = size
    ys = torch.arange(height, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, 1, width)
    for _ in range(2):
        x0 = torch.randint(0, width, (n, 1, 1, 1), generator=generator, device=device)
        y0 = torch.randint(0, height, (n, 1, 1, 1), generator=generator, device=device)
        band = ((xs > x0) & (ys > y0)).float()
        shade = torch.rand(n, 3, 1, 1, generator=generator, device=device)
        background = background * (1 - 0.5 * band) + 0.5 * band * shade
    return background


def background_crops(bank: torch.Tensor, n: int, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """N×3×H×W float crops of random photos of `bank` (uint8), each zoomed 1–2.5× and mirrored by chance."""
    device = bank.device
    pick = torch.randint(0, len(bank), (n,), generator=generator, device=device)
    zoom = 1 / (1 + 1.5 * torch.rand(n, generator=generator, device=device))
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = zoom * torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    theta[:, 1, 1] = zoom
    theta[:, :, 2] = (1 - zoom[:, None]) * (2 * torch.rand(n, 2, generator=generator, device=device) - 1)
    grid = F.affine_grid(theta, [n, 3, *size], align_corners=False)
    return F.grid_sample(bank[pick].float() / 255, grid, mode="bilinear", align_corners=False)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels, one per image; 0 leaves the image)."""
    radius = 4
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernels = kernels / kernels.sum(1, keepdim=True)
    n, c, h, w = images.shape
    flat = images.reshape(1, n * c, h, w)
    k = kernels.repeat_interleave(c, 0)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


OPTIONAL_STEPS = ("paste", "blur", "noise", "uneven_light", "dark_clothes", "shadow")


@dataclass(frozen=True)
class AugmentSettings:
    scale: tuple[float, float] = (0.7, 1.3)  # <1 zooms out (person smaller)
    shift: float = 0.2  # fraction of the frame
    rotate_degrees: float = 12.0
    paste: float = 0.4  # chance to put the person on another background
    real_background: float = 0.7  # share of those backgrounds taken from photos, when there are any
    blur: float = 0.25
    noise: float = 0.3
    uneven_light: float = 0.4
    dark_clothes: float = 0.2
    shadow: float = 0.3  # chance of the person's shadow on the ground or on a wall behind

    def with_chances(self, factor: float, keep: tuple[str, ...] = ()) -> AugmentSettings:
        """These settings with the chance of each optional step (another background, blur,
        noise, uneven light, dark clothes, a shadow) multiplied by `factor`, except the steps
        named in `keep`."""
        return replace(self, **{name: getattr(self, name) * factor for name in OPTIONAL_STEPS if name not in keep})


class _Draw:
    """Random draws for a batch of `n`, one value per image, from one generator."""

    def __init__(self, n: int, generator: torch.Generator, device) -> None:
        self.n, self.generator, self.device = n, generator, device

    def uniform(self, low: float, high: float, shape=None) -> torch.Tensor:
        shape = (self.n,) if shape is None else shape
        return low + (high - low) * torch.rand(shape, generator=self.generator, device=self.device)

    def chance(self, p: float) -> torch.Tensor:
        """N×1×1×1: 1 for the images drawn with probability p, else 0."""
        return (torch.rand(self.n, generator=self.generator, device=self.device) < p).float().view(self.n, 1, 1, 1)


def _warp(image: torch.Tensor, mask: torch.Tensor, out_size: tuple[int, int], settings: AugmentSettings,
          draw: _Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale, rotate, flip and shift into the output frame: the image, the masks, and where the
    photo covers the frame (N×1). The frame sees the photo scaled by a drawn `scale`, keeping
    its aspect."""
    n, device = image.shape[0], image.device
    out_h, out_w = out_size
    in_h, in_w = image.shape[-2:]
    scale = draw.uniform(*settings.scale)
    angle = draw.uniform(-settings.rotate_degrees, settings.rotate_degrees) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=draw.generator, device=device) < 0.5, -1.0, 1.0)
    # Work in units of half the frame height so that rotation keeps shapes; at scale 1 the
    # photo's height fills the frame's height, and zooming out keeps its bottom edge down.
    out_aspect, in_aspect = out_w / out_h, in_w / in_h
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cos * flip * out_aspect / in_aspect / scale
    theta[:, 0, 1] = -sin / in_aspect / scale
    theta[:, 1, 0] = sin * flip * out_aspect / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 0, 2] = draw.uniform(-settings.shift, settings.shift) * 2
    theta[:, 1, 2] = (1 - 1 / scale).clamp(max=0) + draw.uniform(-settings.shift, settings.shift)
    grid = F.affine_grid(theta, [n, 3, out_h, out_w], align_corners=False)
    inside = F.grid_sample(torch.ones_like(mask[:, :1]), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mask = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return image, mask, inside


def _replace_background(image: torch.Tensor, mask: torch.Tensor, inside: torch.Tensor, settings: AugmentSettings,
                        backgrounds: torch.Tensor | None, draw: _Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Another background outside the photo always, and behind the person by chance; the
    unknown pixels that it covers become known background."""
    n, out_size = image.shape[0], image.shape[-2:]
    background = synthetic_backgrounds(n, out_size, draw.generator, image.device)
    if backgrounds is not None:
        real = draw.chance(settings.real_background)
        background = background * (1 - real) + background_crops(backgrounds, n, out_size, draw.generator) * real
    paste = draw.chance(settings.paste)
    keep = inside * (1 - paste) + paste * mask[:, :1]
    image = image * keep + background * (1 - keep)
    return image, torch.cat([mask[:, :1], mask[:, 1:] * keep], 1)


def _darken_clothes(image: torch.Tensor, person: torch.Tensor, settings: AugmentSettings, draw: _Draw) -> torch.Tensor:
    """Darken the person by chance, from a quarter of the frame below the top of the head."""
    n, out_h = image.shape[0], image.shape[-2]
    ys = torch.linspace(0, 1, out_h, device=image.device).view(1, 1, out_h, 1)
    person_rows = (person.amax(dim=3, keepdim=True) > 0.5).float()
    head_top = 1 - (person_rows * (1 - ys)).amax(dim=2, keepdim=True)  # first person row, 0–1
    below_face = (ys > head_top + 0.25).float()
    darken = draw.chance(settings.dark_clothes) * person * below_face
    return image * (1 - darken * draw.uniform(0.5, 0.9).view(n, 1, 1, 1))


def _cast_shadow(image: torch.Tensor, person: torch.Tensor, settings: AugmentSettings, draw: _Draw) -> torch.Tensor:
    """By chance, the person's shadow, labelled background: half of them on a wall behind
    (the silhouette moved aside and a little up or down), half on the ground (the silhouette
    flipped about the feet, flattened and slanted; outside the frame where the feet are at its
    bottom edge). Soft-edged, darkening by 30–65 %."""
    n, (out_h, out_w), device = image.shape[0], image.shape[-2:], image.device
    ys = ((2 * torch.arange(out_h, device=device) + 1) / out_h - 1).view(1, 1, out_h, 1)  # row centres
    person_rows = (person.amax(dim=3, keepdim=True) > 0.5).float()
    feet = (person_rows * (ys + 1)).amax(dim=2).view(n) - 1  # the last person row's centre, −1 to 1
    ground = draw.chance(0.5).view(n)
    side = torch.where(draw.chance(0.5).view(n) > 0, 1.0, -1.0)
    flatten, slant = draw.uniform(0.3, 0.8), draw.uniform(-1.5, 1.5)
    theta = torch.zeros(n, 2, 3, device=device)
    # The wall: source = output moved aside by 10–40 % of the frame and up or down by up to 5 %.
    theta[:, 0, 0], theta[:, 1, 1] = 1.0, 1.0
    theta[:, 0, 2] = (1 - ground) * side * draw.uniform(0.2, 0.8)
    theta[:, 1, 2] = (1 - ground) * draw.uniform(-0.1, 0.1)
    # The ground: below the feet, source row = feet − (row − feet) / flatten, slanted sideways.
    theta[:, 0, 1] = ground * -slant
    theta[:, 0, 2] += ground * slant * feet
    theta[:, 1, 1] = ground * (-1 / flatten) + (1 - ground)
    theta[:, 1, 2] += ground * feet * (1 + 1 / flatten)
    grid = F.affine_grid(theta, [n, 1, out_h, out_w], align_corners=False)
    shadow = F.grid_sample(person, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    shadow = _blur(shadow, draw.uniform(1.0, 3.0)) * (1 - person)
    strength = draw.chance(settings.shadow) * draw.uniform(0.3, 0.65).view(n, 1, 1, 1)
    return image * (1 - strength * shadow)


def _relight(image: torch.Tensor, settings: AugmentSettings, draw: _Draw) -> torch.Tensor:
    """Exposure, contrast, gamma, saturation, colour cast and, by chance, uneven light."""
    n, (out_h, out_w), device = image.shape[0], image.shape[-2:], image.device
    image = image * draw.uniform(0.5, 1.4).view(n, 1, 1, 1)
    grey = image.mean(dim=1, keepdim=True)
    image = grey + (image - grey) * draw.uniform(0.5, 1.4).view(n, 1, 1, 1)
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    image = mean + (image - mean) * draw.uniform(0.6, 1.3).view(n, 1, 1, 1)
    image = image * draw.uniform(0.85, 1.15, (n, 3)).view(n, 3, 1, 1)
    image = image.clamp(0, 1) ** draw.uniform(0.7, 1.5).view(n, 1, 1, 1)
    xs = torch.linspace(-1, 1, out_w, device=device).view(1, 1, 1, out_w)
    ys = torch.linspace(0, 1, out_h, device=device).view(1, 1, out_h, 1)
    direction = draw.uniform(0, 2 * math.pi)
    ramp = torch.cos(direction).view(n, 1, 1, 1) * xs + torch.sin(direction).view(n, 1, 1, 1) * (ys * 2 - 1)
    return image * (1 + draw.chance(settings.uneven_light) * draw.uniform(0.2, 0.6).view(n, 1, 1, 1) * ramp)


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    out_size: tuple[int, int],
    generator: torch.Generator,
    settings: AugmentSettings = AugmentSettings(),
    backgrounds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: uint8 N×3×H×W images and N×C×H×W masks in, float [0, 1] out at `out_size`.

    Mask channel 0 is the person; further channels (the ignore map) are moved with it, and
    where a pasted background replaces the photo they become 0.

    Output size may have another aspect than the input (landscape crops of portrait photos):
    the area outside the photo is filled with another background and labelled background.
    `backgrounds` (uint8 photos with nobody in them, see `load_backgrounds`) supply that share
    of the other backgrounds; the rest are synthetic.
    """
    n = images.shape[0]
    draw = _Draw(n, generator, images.device)
    image, mask, inside = _warp(images.float() / 255, masks.float() / 255, out_size, settings, draw)
    image, mask = _replace_background(image, mask, inside, settings, backgrounds, draw)
    image = _darken_clothes(image, mask[:, :1], settings, draw)
    image = _cast_shadow(image, mask[:, :1], settings, draw)
    image = _relight(image, settings, draw)
    # Camera: blur and sensor noise.
    image = _blur(image, draw.chance(settings.blur).view(n) * draw.uniform(0.5, 2.0))
    noise_level = draw.chance(settings.noise) * draw.uniform(0.01, 0.06).view(n, 1, 1, 1)
    image = image + noise_level * torch.randn(image.shape, generator=generator, device=images.device)
    return image.clamp(0, 1), (mask > 0.5).float()


def paste_people(
    images: torch.Tensor, masks: torch.Tensor, chance: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability `chance` per sample, the person of another sample of the batch pasted
    over it (copy-paste augmentation): several people per frame, from other folders and at
    other scales. Both people stay labelled; the pasted one hides what it covers.

    images N×3×H×W and masks N×C×H×W float (channel 0 the person, then the ignore map), as
    `augment` returns them."""
    n = images.shape[0]
    donor = torch.roll(torch.arange(n), shifts=int(torch.randint(1, max(2, n), (1,), generator=generator)))
    pasted = (torch.rand(n, generator=generator) < chance).float().view(n, 1, 1, 1).to(images.device)
    donated = masks[donor, :1] * pasted
    images = images * (1 - donated) + images[donor] * donated
    person = torch.maximum(masks[:, :1], donated)
    return images, torch.cat([person, masks[:, 1:] * (1 - donated)], 1)
