"""Label images and video frames with a teacher network, into a folder `engines.train` reads.

    pip download --no-deps mediapipe==0.10.21 -d teacher && pip install ai-edge-litert
    python -m engines.pseudo_label --teacher teacher/mediapipe-0.10.21-*.whl \\
        --out runs/fullbody --every 3 clips/ photos/

The teacher is MediaPipe's general selfie segmentation (Apache-2.0), run with ai-edge-litert
and averaged with its mirror image. It covers what the portrait set lacks: whole bodies,
people far from the camera and people in rooms. Every input becomes `images/NAME.jpg` and
`masks/NAME.png` (the teacher's probability, 0–255) listed in `SPLIT.txt`: the portrait
folder layout, so `engines.train --extra` and `engines.evaluate` take it as it is. Running
again into the same folder adds to the list.

Frames where the teacher is unsure are left out: those where it sees almost nobody, or where
the pixels it is unsure of (probability 0.2–0.8) exceed `--max-unsure` times those it calls
person.
"""
from __future__ import annotations

import argparse
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from engines.data import read_rgb
from engines.segmenter import BackendMissing
from stream.frames import network_size
from stream.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES


Teacher = Callable[[np.ndarray], np.ndarray]  # H×W×3 uint8 RGB → H×W float probability


WHEEL_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"


class SelfieTeacher:
    """MediaPipe selfie segmentation as a function of an RGB image, with mirror averaging.

    `model` is the .tflite file, or the mediapipe 0.10.21 wheel that holds it."""

    def __init__(self, model: Path, threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise BackendMissing("the teacher needs ai-edge-litert: pip install ai-edge-litert") from error
        if not Path(model).is_file():
            raise FileNotFoundError(f"no teacher model at {model}")
        if Path(model).suffix == ".whl":
            with zipfile.ZipFile(model) as wheel:
                content = wheel.read(WHEEL_MEMBER)
        else:
            content = Path(model).read_bytes()
        self._interpreter = Interpreter(model_content=content, num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._height, self._width = (int(v) for v in self._input["shape"][1:3])

    def _run(self, small: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], small[None])
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])[0, :, :, 0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, (self._width, self._height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        probability = 0.5 * (self._run(small) + self._run(np.ascontiguousarray(small[:, ::-1]))[:, ::-1])
        return cv2.resize(probability, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def _frames(path: Path, every: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB image) for an image file, or for every `every`-th frame of a video."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield path.stem, read_rgb(path)
        return
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every == 0:
                yield f"{path.stem}_{index:05d}", frame.to_ndarray(format="rgb24")


def _inputs(paths: list[Path]) -> list[Path]:
    """Image and video files among `paths`, folders searched recursively, in a stable order."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def confident(probability: np.ndarray, max_unsure: float, min_person: float = 0.01) -> bool:
    """Whether the teacher sees someone (`min_person` of the frame) and is sure of most of them."""
    person = float((probability > 0.8).mean())
    unsure = float(((probability > 0.2) & (probability <= 0.8)).mean())
    return person >= min_person and unsure <= max_unsure * person


def label(paths: list[Path], out: Path, teacher: Teacher, every: int = 8, split: str = "train",
          long_side: int = 640, max_unsure: float = 1.0) -> list[str]:
    """Write each confidently labelled input (long side at most `long_side`) and the teacher's
    mask; add their names to SPLIT.txt. Returns the names added."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    listing = out / f"{split}.txt"
    listed = listing.read_text().split() if listing.exists() else []
    names = []
    for path in tqdm(_inputs(paths), desc="labelling"):
        for name, image in _frames(path, every):
            if max(image.shape[:2]) > long_side:
                height, width = network_size(*image.shape[:2], long_side=long_side, multiple=1)
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            probability = teacher(image)
            if not confident(probability, max_unsure):
                continue
            mask = np.clip(probability * 255 + 0.5, 0, 255).astype(np.uint8)
            cv2.imwrite(str(out / "images" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(out / "masks" / f"{name}.png"), mask)
            names.append(name)
    listing.write_text("".join(f"{name}\n" for name in dict.fromkeys(listed + names)))
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="images, videos, or folders of them")
    parser.add_argument("--teacher", type=Path, required=True,
                        help="selfie_segmentation.tflite, or the mediapipe 0.10.21 wheel holding it")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=int, default=8, help="label every N-th video frame (default: %(default)s)")
    parser.add_argument("--split", default="train", help="name of the list file written (default: %(default)s)")
    parser.add_argument("--long-side", type=int, default=640, help="stored images' long side at most (default: %(default)s)")
    parser.add_argument("--max-unsure", type=float, default=1.0,
                        help="leave out frames with more unsure pixels than this times the person's (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    names = label(args.inputs, args.out, SelfieTeacher(args.teacher, args.threads), args.every, args.split,
                  args.long_side, args.max_unsure)
    print(f"{len(names)} images labelled into {args.out}")


if __name__ == "__main__":
    main()
