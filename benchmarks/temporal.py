"""Steadiness of the matte against the truth, on clips with a mask on every frame.

    python benchmarks/temporal.py --clips ../shared/data/clips --json benchmarks/results/temporal.json

For each clip (`images/`, `masks/`, `list.txt` in frame order), in live mode (`MatteChain`
with `TemporalSmoother`, one frame at a time) and file mode (`LookAheadChain`: batches,
look-ahead smoothing and, as `stream.video` by default, each frame averaged with its mirror
image; `--no-mirror` as with `stream.video --no-mirror`), at each `--smooth` strength, the
full-resolution mattes are scored:
- `iou`: foreground IoU at 0.5, in percent, averaged over frames;
- `dtssd` (×100): the RMS over pixels of the matte's change between frames minus the
  truth's change, averaged over frames (Erofeev et al. 2015);
- `flicker` (×100): the mean absolute change of the matte where the truth did not change;
- `changed_iou`: IoU, in percent, over the pixels where the truth changed since the previous
  frame (all frames pooled): how well the matte keeps up with motion, lower when it lags.
Prints a table, writes every number and the per-frame values to JSON, and plots them beside
it where matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from engines.cli import add_model_arguments, run_cli
from engines.data import read_split
from engines.errors import BadArgument
from engines.imaging import read_mask, read_rgb
from engines.segmenter import MirrorAveraged, open_segmenter
from stream.chain import LookAheadChain, MatteChain, prepare_stages
from stream.smoothing import TemporalSmoother


def read_clip(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The clip's RGB frames and its T×H×W bool masks, in order."""
    names = read_split(root, "list")
    return [read_rgb(root / "images" / f"{name}.jpg") for name in names], \
        np.stack([read_mask(root / "masks" / f"{name}.png") for name in names])


def live_mattes(segmenter, frames: list[np.ndarray], strength: float) -> np.ndarray:
    chain = MatteChain(segmenter, TemporalSmoother(strength))
    return np.stack([chain(frame).alpha[..., 0].cpu().numpy() for frame in frames])


def file_mattes(segmenter, frames: list[np.ndarray], strength: float, mirror: bool = True, batch: int = 8) -> np.ndarray:
    chain = LookAheadChain(MatteChain(MirrorAveraged(segmenter) if mirror else segmenter), batch, strength)
    released = [matte for index, frame in enumerate(frames) for _, matte in chain.add(index, frame)]
    released += [matte for _, matte in chain.finish()]
    return np.stack([matte.alpha[..., 0].cpu().numpy() for matte in released])


def steadiness(alphas: np.ndarray, truths: np.ndarray) -> dict:
    """The four figures for one run, and the per-frame IoU, dtSSD and flicker."""
    predicted = alphas > 0.5
    intersection = (predicted & truths).sum((1, 2))
    union = (predicted | truths).sum((1, 2))
    ious = 100 * np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    truth = truths.astype(np.float32)
    matte_change, truth_change = np.diff(alphas, axis=0), np.diff(truth, axis=0)
    dtssd = np.sqrt(((matte_change - truth_change) ** 2).mean((1, 2))) * 100
    still = truth_change == 0
    flicker = (np.abs(matte_change) * still).sum((1, 2)) / np.maximum(still.sum((1, 2)), 1) * 100
    changed = ~still
    moving_predicted, moving_truth = predicted[1:] & changed, truths[1:] & changed
    changed_union = (moving_predicted | moving_truth).sum()
    return {
        "iou": round(float(ious.mean()), 2),
        "dtssd": round(float(dtssd.mean()), 3),
        "flicker": round(float(flicker.mean()), 3),
        "changed_iou": round(float(100 * (moving_predicted & moving_truth).sum() / max(changed_union, 1)), 2),
        "per_frame": {"iou": ious.round(2).tolist(), "dtssd": dtssd.round(3).tolist(),
                      "flicker": flicker.round(3).tolist()},
    }


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print(f"no plot {path}: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = report["clips"]
    figure, axes = plt.subplots(len(clips), 2, figsize=(12, 3.6 * len(clips)), squeeze=False)
    for row, (clip, modes) in zip(axes, clips.items()):
        for mode, runs in modes.items():
            for strength, run in runs.items():
                label = f"{mode} {strength}"
                row[0].plot(run["per_frame"]["iou"], label=label, linewidth=1)
                row[1].plot(run["per_frame"]["flicker"], label=label, linewidth=1)
        row[0].set_title(f"{clip}: IoU per frame")
        row[1].set_title(f"{clip}: flicker ×100 per frame")
        row[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def run(args: argparse.Namespace) -> int:
    try:
        strengths = [float(text) for text in args.smooth.split(",")]
    except ValueError:
        strengths = [-1.0]
    if any(not 0 <= strength < 1 for strength in strengths):
        raise BadArgument(f"bad --smooth {args.smooth}: strengths in [0, 1), separated by commas")
    clips = sorted(path.parent for path in args.clips.glob("*/list.txt"))
    if not clips:
        raise FileNotFoundError(f"no clips (folders with list.txt) under {args.clips}")
    segmenter = open_segmenter(args.backend, args.model, args.threads)
    prepare_stages(segmenter.device)
    report: dict = {"model": str(args.model), "backend": segmenter.name, "file_mode_mirror": args.mirror, "clips": {}}
    print(f"{'clip':<8} {'mode':<5} {'smooth':>6} {'IoU':>6} {'dtSSD':>6} {'flicker':>7} {'changed IoU':>11}")
    for root in clips:
        frames, truths = read_clip(root)
        report["clips"][root.name] = {}
        runs = (("live", lambda strength: live_mattes(segmenter, frames, strength)),
                ("file", lambda strength: file_mattes(segmenter, frames, strength, args.mirror)))
        for mode, mattes in runs:
            report["clips"][root.name][mode] = {}
            for strength in strengths:
                result = steadiness(mattes(strength), truths)
                report["clips"][root.name][mode][str(strength)] = result
                print(f"{root.name:<8} {mode:<5} {strength:>6.2f} {result['iou']:>6.2f} {result['dtssd']:>6.2f} "
                      f"{result['flicker']:>7.3f} {result['changed_iou']:>11.2f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report) + "\n")
        plotted = plot(report, args.json.with_suffix(".png"))
        print(f"wrote {args.json}" + (f" and {args.json.with_suffix('.png')}" if plotted else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/temporal.py", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, required=True, help="a folder of clips, each with images/, masks/, list.txt")
    parser.add_argument("--smooth", default="0,0.5,0.7,0.9", help="smoothing strengths to compare (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write every number here, and a PNG beside it")
    parser.add_argument("--no-mirror", dest="mirror", action="store_false",
                        help="file mode without the mirror image, as stream.video --no-mirror")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
