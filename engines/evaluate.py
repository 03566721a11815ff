"""Evaluate a model on a portrait folder the way the live loop runs it.

    python -m engines.evaluate --data ../shared/data/portraits --split test --json r.json

Each image goes through the loop's own stages (resize to the network size, the segmenter,
edge-aware upsampling to full resolution) and is scored at its full resolution: foreground
IoU at 0.5 and the boundary F-score within 3 pixels, in percent. `ms_per_image` is the
segmenter's median time alone. A contact sheet of the ten worst images is saved beside the
JSON (or as `worst.png`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from engines.data import read_mask, read_rgb, read_split
from engines.metrics import boundary_f, iou
from engines.segmenter import BACKENDS, DEFAULT_MODEL, open_segmenter
from stream.frames import guided_upsample, network_size, preprocess
from stream.pipeline import prepare_stages


def predict(segmenter, image: np.ndarray, long_side: int, upsample: str) -> tuple[np.ndarray, float]:
    """Full-resolution alpha (H×W float) for an RGB image, and the segmenter's milliseconds."""
    frame = torch.from_numpy(image).to(segmenter.device)
    small = preprocess(frame, network_size(*image.shape[:2], long_side=long_side))
    started = time.perf_counter()
    small_alpha = segmenter(small)
    if small_alpha.is_cuda:
        torch.cuda.synchronize()
    milliseconds = (time.perf_counter() - started) * 1e3
    if upsample == "guided":
        alpha = guided_upsample(small_alpha, small, frame)[..., 0]
    else:
        alpha = F.interpolate(small_alpha, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    return alpha.cpu().numpy(), milliseconds


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


def evaluate(segmenter, data: Path, split: str, model: str, long_side: int = 256, upsample: str = "guided",
             limit: int | None = None) -> tuple[dict, list]:
    """The report, and the ten worst (IoU, name) pairs."""
    names = read_split(data, split)[:limit]
    scores, edges, times, worst = [], [], [], []
    for name in tqdm(names, desc=f"evaluating {model} on {split}"):
        image = read_rgb(data / "images" / f"{name}.jpg")
        truth = read_mask(data / "masks" / f"{name}.png")
        alpha, milliseconds = predict(segmenter, image, long_side, upsample)
        predicted = alpha > 0.5
        scores.append(iou(predicted, truth))
        edges.append(boundary_f(predicted, truth))
        times.append(milliseconds)
        worst.append((scores[-1], name))
    report = {
        "model": str(model),
        "backend": segmenter.name,
        "split": split,
        "upsample": upsample,
        "n": len(names),
        "mean_iou": round(float(np.mean(scores)), 2),
        "median_iou": round(float(np.median(scores)), 2),
        "p10_iou": round(float(np.percentile(scores, 10)), 2),
        "boundary_f": round(float(np.mean(edges)), 2),
        "ms_per_image": round(float(np.median(times)), 2),
    }
    return report, sorted(worst)[:10]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score a model's mattes against hand-drawn masks.")
    parser.add_argument("--data", type=Path, required=True, help="portrait folder (images/, masks/, SPLIT.txt)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="shipped model name or a .safetensors/.onnx file")
    parser.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
    parser.add_argument("--upsample", default="guided", choices=("guided", "bilinear"))
    parser.add_argument("--long-side", type=int, default=256, help="network input's long side (default: %(default)s)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    segmenter = open_segmenter(args.backend, args.model)
    prepare_stages(segmenter.device)
    report, worst = evaluate(segmenter, args.data, args.split, args.model, args.long_side, args.upsample, args.limit)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    sheet_path = args.json.with_suffix(".worst.png") if args.json else Path("worst.png")
    rows = []
    for score, name in worst:
        image = read_rgb(args.data / "images" / f"{name}.jpg")
        alpha, _ = predict(segmenter, image, args.long_side, args.upsample)
        rows.append((image, read_mask(args.data / "masks" / f"{name}.png"), alpha, f"{name} IoU {score:.1f}"))
    cv2.imwrite(str(sheet_path), contact_sheet(rows))
    print(f"worst ten: {sheet_path}")


if __name__ == "__main__":
    main()
