"""Write the people of a local COCO copy into a folder `engines.train` reads.

    python -m engines.coco_pool --annotations coco/annotations/instances_train2017.json \\
        --images coco/train2017 --out runs/coco --min-coverage 0.03
    python -m engines.train --data ../shared/data/portraits:0.7 --data runs/coco:0.3 ...

An image is kept when it has between `--min-people` and `--max-people` person annotations,
none of them a crowd (whose people cannot be counted), and together they cover between
`--min-coverage` and `--max-coverage` of it. The defaults are the seed article's filter:
one or two people covering 20–70 % of the image, which keeps close-ups; a lower
`--min-coverage` keeps whole bodies and people further away. Each image is stored with its
long side at most `--long-side`, with the union of its people's masks (0 or 255), as
`images/NAME.jpg` and `masks/NAME.png` listed in `train.txt`: the portrait folder layout.
Running again into the same folder adds to the list.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engines.cli import run_cli
from engines.data import add_to_split, fit_long_side, write_sample
from engines.errors import BadArgument, UnusableInput
from engines.imaging import read_rgb


@dataclass(frozen=True)
class CocoPersonFilter:
    """Which images to keep: how many people, and what share of the image they cover."""

    min_people: int = 1
    max_people: int = 2
    min_coverage: float = 0.20
    max_coverage: float = 0.70


@dataclass(frozen=True)
class CocoPerson:
    image_id: int
    file_name: str
    coverage: float
    mask: np.ndarray  # H×W bool, the union of the image's people


def coco_people(annotation_file: Path | str, rules: CocoPersonFilter = CocoPersonFilter()) -> Iterator[CocoPerson]:
    """The images of a COCO annotation file that pass `rules`, one at a time, in id order."""
    from pycocotools.coco import COCO

    coco = COCO(str(annotation_file))
    person = coco.getCatIds(catNms=["person"])
    if not person:  # pycocotools reads no category ids as every category
        raise UnusableInput(f"{annotation_file} has no 'person' category")
    for image_id in sorted(coco.getImgIds(catIds=person)):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=person, iscrowd=None))
        if any(a.get("iscrowd", 0) for a in annotations):
            continue
        if not rules.min_people <= len(annotations) <= rules.max_people:
            continue
        info = coco.loadImgs(image_id)[0]
        mask = np.zeros((info["height"], info["width"]), bool)
        for annotation in annotations:
            mask |= coco.annToMask(annotation).astype(bool)
        coverage = float(mask.mean())
        if rules.min_coverage <= coverage <= rules.max_coverage:
            yield CocoPerson(image_id, info["file_name"], coverage, mask)


def write_pool(annotation_file: Path, image_dir: Path, out: Path, rules: CocoPersonFilter = CocoPersonFilter(),
               long_side: int = 640) -> list[str]:
    """Store every image that passes `rules` and its mask in `out`, and list them in
    `train.txt`. Returns the names added."""
    names = []
    try:
        for item in tqdm(coco_people(annotation_file, rules), desc="writing", unit="image"):
            path = image_dir / item.file_name
            if not path.is_file():
                raise FileNotFoundError(f"no image {path} for COCO image {item.image_id}")
            image = fit_long_side(read_rgb(path), long_side)
            mask = fit_long_side(item.mask.astype(np.uint8) * 255, long_side)
            mask = np.where(mask > 127, 255, 0).astype(np.uint8)
            name = f"coco-{item.image_id:012d}"
            write_sample(out, name, image, mask)
            names.append(name)
    finally:  # what was written is listed, even when a missing image or Ctrl-C stops the run
        if names:
            add_to_split(out, "train", names)
    return names


def main(argv: list[str] | None = None) -> int:
    defaults = CocoPersonFilter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, required=True, help="a COCO instances_*.json")
    parser.add_argument("--images", type=Path, required=True, help="the folder of its images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-people", type=int, default=defaults.min_people)
    parser.add_argument("--max-people", type=int, default=defaults.max_people)
    parser.add_argument("--min-coverage", type=float, default=defaults.min_coverage,
                        help="the people's share of the image, at least (default: %(default)s)")
    parser.add_argument("--max-coverage", type=float, default=defaults.max_coverage,
                        help="and at most (default: %(default)s)")
    parser.add_argument("--long-side", type=int, default=640, help="stored images' long side at most (default: %(default)s)")
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.min_people <= args.max_people:
        raise BadArgument("--min-people must be at least 1 and at most --max-people")
    if not 0 <= args.min_coverage <= args.max_coverage <= 1:
        raise BadArgument("--min-coverage and --max-coverage must be shares in [0, 1], min ≤ max")
    if args.long_side < 16:
        raise BadArgument("--long-side must be at least 16")
    if not args.annotations.is_file():
        raise FileNotFoundError(f"no such annotation file: {args.annotations}")
    if not args.images.is_dir():
        raise FileNotFoundError(f"no such image folder: {args.images}")
    rules = CocoPersonFilter(args.min_people, args.max_people, args.min_coverage, args.max_coverage)
    try:
        names = write_pool(args.annotations, args.images, args.out, rules, args.long_side)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AssertionError) as error:
        raise UnusableInput(f"{args.annotations} is not a COCO annotation file ({type(error).__name__}: {error})") from None
    print(f"{len(names)} images written into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
