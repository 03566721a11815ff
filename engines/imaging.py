"""Image helpers that the network's tools and the frame loop both need: reading image files,
cover-scaling, media suffixes, and the network's input-size rule."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}


def read_rgb(path: Path | str) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB (greyscale files are expanded)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: Path | str) -> np.ndarray:
    """A mask file as H×W bool (person where the pixel is above half intensity)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask {path}")
    return mask > 127


def cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale an H×W(×C) image to cover width×height without distortion, cropping the overflow."""
    image_h, image_w = image.shape[:2]
    scale = max(width / image_w, height / image_h)
    resized = cv2.resize(image, (max(width, round(image_w * scale)), max(height, round(image_h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def network_size(height: int, width: int, long_side: int, multiple: int = 16) -> tuple[int, int]:
    """The network's input (H, W) for a frame: its aspect kept, the long side `long_side`, each
    side a multiple of `multiple`."""
    scale = long_side / max(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )
