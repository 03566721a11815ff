"""Leave unmasked bystanders out of the loss: where a folder's masks name only the main
person, a confident teacher's other people become `ignore/` pixels.

    python -m engines.bystanders --teacher teacher/mediapipe-0.10.21-*.whl \\
        --data ../shared/data/wholebody/ccp --out runs/ccp

In `ccp/` and `pennfudan/` only the main subject is masked: a passer-by is labelled
background, and a network that learns that literally learns to drop real people. This
writes a folder that `engines.train --data` reads like the original: `images/`, `masks/`
and the split lists linked to it, and `ignore/NAME.png` for each training image, holding the
folder's own ignore map (if any) and the pixels the teacher calls person (probability above
`--confidence`) that lie more than `--margin` pixels from the mask. Validation images keep
their own ignore maps only, so that they are scored as given.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engines.cli import run_cli
from engines.data import read_ignore, read_split
from engines.errors import BadArgument
from engines.imaging import read_mask, read_rgb
from engines.pseudo_label import Teacher, open_teacher


def bystanders(probability: np.ndarray, mask: np.ndarray, confidence: float, margin: int) -> np.ndarray:
    """H×W bool: what the teacher calls person with `confidence` that is more than `margin`
    pixels away from `mask` (the main person, whose edge the teacher draws differently)."""
    size = 2 * margin + 1
    near = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))) > 0
    return (probability > confidence) & ~near


def write_folder(data: Path, out: Path, teacher: Teacher, confidence: float = 0.8, margin: int = 8) -> dict[str, float]:
    """Link `data` into `out` and write the training images' ignore maps. Returns, for each
    image that has bystanders, the share of its pixels left out."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("images", "masks", *(f"{split}.txt" for split in ("train", "val", "test"))):
        source, link = (data / name).resolve(), out / name
        if source.exists() and not link.exists():
            os.symlink(source, link)
    (out / "ignore").mkdir(exist_ok=True)
    training = set(read_split(data, "train"))
    for own in (data / "ignore").glob("*.png") if (data / "ignore").is_dir() else ():
        if own.stem not in training:  # validation and test images keep their own maps, as drawn
            shutil.copyfile(own, out / "ignore" / own.name)
    left_out = {}
    for name in tqdm(read_split(data, "train"), desc=f"bystanders in {data.name}"):
        image = read_rgb(data / "images" / f"{name}.jpg")
        mask = read_mask(data / "masks" / f"{name}.png")
        teacher.reset()  # each photo is its own scene, also for a recurrent teacher
        ignore = read_ignore(data, name, mask.shape) | bystanders(teacher(image), mask, confidence, margin)
        if not cv2.imwrite(str(out / "ignore" / f"{name}.png"), ignore.astype(np.uint8) * 255):
            raise OSError(f"could not write {out / 'ignore' / name}.png")
        if ignore.any():
            left_out[name] = float(ignore.mean())
    return left_out


def run(args: argparse.Namespace) -> int:
    if not 0 < args.confidence < 1 or args.margin < 0:
        raise BadArgument("--confidence must be in (0, 1) and --margin at least 0")
    if not (args.data / "train.txt").is_file():
        raise FileNotFoundError(f"no training list {args.data / 'train.txt'}")
    left_out = write_folder(args.data, args.out, open_teacher(args.teacher, args.threads), args.confidence, args.margin)
    share = 100 * sum(left_out.values()) / max(1, len(read_split(args.data, "train")))
    print(f"{len(left_out)} training images have bystanders; {share:.2f} % of the training pixels are left out ({args.out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.bystanders", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="as for engines.pseudo_label")
    parser.add_argument("--data", type=Path, required=True, help="a folder whose masks name only the main person")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--confidence", type=float, default=0.8, help="teacher probability that counts (default: %(default)s)")
    parser.add_argument("--margin", type=int, default=8, help="pixels around the mask left to it (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
