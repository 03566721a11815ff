"""Interrupt both commands at random moments and check, frame by frame, that nothing is lost.

    python benchmarks/interrupts.py --runs 50 --json benchmarks/results/interrupts.json

Each run starts `stream.video` (file mode) or `stream.webcam` (the loop, with a clip as its
source) writing .mp4, .mov or .mkv, waits until the output has begun, sends Ctrl-C after a
random delay, and reads the file back. The clip's frames carry their number as black and
white squares, and the model is an all-person network (every pixel kept), so each output
frame shows which source frame it is: the file must hold frames 0, 1, 2, … with none missing
or repeated, as many as the command's closing message says.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from engines.cli import run_cli
from engines.tiramisu import Tiramisu, save_weights
from stream.sinks import partial_path

ROOT = Path(__file__).resolve().parents[1]
SIZE, BITS, FRAMES = (320, 192), 10, 1024
COUNT_MESSAGES = (r"holds the first (\d+) frames", r"interrupted after (\d+) frames")


def numbered(index: int) -> np.ndarray:
    """A frame whose number is written as ten squares, white for 1."""
    image = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
    for bit in range(BITS):
        if index >> bit & 1:
            image[48:144, bit * 32 : bit * 32 + 32] = 255
    return image


def number(image: np.ndarray) -> int:
    """The number `numbered` wrote into a frame."""
    return sum(1 << bit for bit in range(BITS) if image[96, bit * 32 + 16].mean() > 127)


def write_clip(path: Path, frames: int = FRAMES) -> Path:
    """A clip of `frames` numbered frames, at 24 fps (at most 1024, so that each number is unique), long
    enough that file mode is still running when the Ctrl-C comes."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = *SIZE, "yuv420p"
        video.options = {"crf": "10"}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(numbered(index), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 24)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


def write_all_person_model(path: Path) -> None:
    model = Tiramisu.from_preset("compact")
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-20.0, 20.0]))
    save_weights(model, path)


def interrupted_run(command: list[str], output: Path, delay: float) -> dict:
    partial = partial_path(output)
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    finished_first = process.poll() is not None
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    said = [int(m.group(1)) for pattern in COUNT_MESSAGES for m in [re.search(pattern, stderr)] if m]
    with av.open(str(output)) as container:
        numbers = [number(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    missing = sorted(set(range(len(numbers))) - set(numbers))
    return {"exit": process.returncode, "finished_first": finished_first, "said": said[0] if said else None,
            "in_file": len(numbers),
            "in_order": numbers == list(range(len(numbers))), "missing": missing}


def run(args: argparse.Namespace) -> int:
    randomness = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        clip, model = folder / "numbered.mp4", folder / "all-person.safetensors"
        write_clip(clip)
        write_all_person_model(model)
        common = ["--bg", "green", "--smooth", "0", "--backend", "torch-cpu", "--model", str(model), "--quality", "10"]
        for index in range(args.runs):
            tool = ("video", "webcam")[index % 2]
            suffix = (".mp4", ".mov", ".mkv")[index // 2 % 3]
            output = folder / f"run{index}{suffix}"
            if tool == "video":
                command = [sys.executable, "-m", "stream.video", str(clip), "-o", str(output), *common]
            else:
                command = [sys.executable, "-m", "stream.webcam", "--source", str(clip), "--no-drop-stale",
                           "--sink", str(output), *common]
            delay = randomness.uniform(0.0, args.longest_delay)
            result = {"tool": tool, "container": suffix, "delay_s": round(delay, 3)}
            result |= interrupted_run(command, output, delay)
            results.append(result)
            ok = result["in_order"] and result["said"] == result["in_file"] and result["exit"] == 130
            print(f"{index + 1:>3} {tool:<6} {suffix:<4} Ctrl-C after {delay:.2f} s: {result['in_file']:>3} frames "
                  f"in the file, {result['said']} said, {len(result['missing'])} missing  {'ok' if ok else 'FAILED'}"
                  + ("  (it had finished before the Ctrl-C)" if result["finished_first"] else ""),
                  flush=True)
    failed = [r for r in results if not (r["in_order"] and r["said"] == r["in_file"] and r["exit"] == 130)]
    print(f"{len(results) - len(failed)} of {len(results)} interrupted runs kept every frame they counted")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "failed": len(failed)}, indent=1) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/interrupts.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--longest-delay", type=float, default=3.0,
                        help="Ctrl-C comes up to this many seconds after the output begins (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
