"""`benchmarks/evaluate.py`: one row per folder for our model, and a peer through the same
scoring. The peer is a stand-in with Robust Video Matting's interface that finds the red
person only on its first three passes since its last reset."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import torch

from engines.metrics import error_by_distance
from tests.conftest import export_matting

EVALUATE = "benchmarks/evaluate.py"


class FreshOnly(torch.nn.Module):
    """Alpha is the red pixels while at most three frames were seen since the last reset."""

    def forward(self, src, r1i, r2i, r3i, r4i, downsample_ratio):
        seen = r1i.mean() + 1
        pha = (src[:, :1] > 0.5).float() * (seen <= 3).float() * downsample_ratio.clamp(max=1)
        return src, pha, r1i + 1, r2i, r3i, r4i


def paint_folder(root, count: int = 4) -> None:
    """Red people (an ellipse and a head) on green and blue noise, listed in `val.txt`."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for index in range(count):
        mask = np.zeros((96, 128), np.uint8)
        cv2.ellipse(mask, (40 + 12 * index, 96), (18, 50), 0, 180, 360, 255, -1)
        cv2.circle(mask, (40 + 12 * index, 34), 11, 255, -1)
        rgb = np.zeros((96, 128, 3), np.uint8)
        rgb[..., 1:] = rng.integers(0, 255, (96, 128, 2))
        rgb[mask > 0] = (255, 0, 0)
        cv2.imwrite(str(root / "images" / f"{index}.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 98])
        cv2.imwrite(str(root / "masks" / f"{index}.png"), mask)
    (root / "val.txt").write_text("".join(f"{index}\n" for index in range(count)))


def test_errors_are_told_apart_by_their_distance_from_the_true_edge():
    truth, known = np.zeros((100, 100), bool), np.ones((100, 100), bool)
    truth[20:60, 20:60] = True
    shifted = np.roll(truth, 2, axis=1)  # 80 false and 80 missed, all at the edge
    assert error_by_distance(shifted, truth, known).tolist() == [[80, 80], [0, 0], [0, 0]]
    wide = truth.copy()
    wide[20:60, 60:66] = True  # 240 false, a strip from the edge to 6 pixels beyond it
    assert error_by_distance(wide, truth, known).tolist() == [[120, 0], [120, 0], [0, 0]]
    blob = shifted.copy()
    blob[80:96, 80:96] = True  # a region 20 pixels away: 256 false, beyond 10 pixels
    assert error_by_distance(blob, truth, known).tolist() == [[80, 80], [0, 0], [256, 0]]
    hole = truth.copy()
    hole[35:45, 35:45] = False  # 100 missed in the middle, 15 or more pixels from the edge
    assert error_by_distance(hole, truth, known).tolist() == [[0, 0], [0, 0], [0, 100]]
    known[30:50, 30:50] = False  # unknown pixels count for nothing and make no edge
    assert error_by_distance(hole, truth, known).tolist() == [[0, 0], [0, 0], [0, 0]]
    assert error_by_distance(blob, truth, known).tolist() == [[80, 80], [0, 0], [256, 0]]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EVALUATE, *args], capture_output=True, text=True)


def test_a_peer_is_scored_like_our_model_each_image_afresh(tmp_path):
    data, peer = tmp_path / "people", export_matting(FreshOnly(), tmp_path / "rvm.onnx")
    paint_folder(data)
    done = run("--peer", str(peer), "--data", str(data), "--json", str(tmp_path / "peer.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "peer.json").read_text())
    row = report["folders"]["people"]
    assert report["peer"] == str(peer) and row["split"] == "val" and row["n"] == 4
    # Three passes on each image after a reset: every image found, none left blank.
    assert row["p10_iou"] > 97 and row["mean_iou"] > 97
    assert row["error_by_distance"]["beyond_10px"] == {"false": 0.0, "missed": 0.0}
    ours = run("--model", "compact", "--data", str(data), "--json", str(tmp_path / "ours.json"))
    assert ours.returncode == 0, ours.stderr
    report = json.loads((tmp_path / "ours.json").read_text())
    row = report["folders"]["people"]
    assert report["model"] == "compact" and report["long_side"] == 256 and report["mirror"] is False
    assert row["n"] == 4 and 0 <= row["mean_iou"] <= 100 and set(row["error_by_distance"]) == {
        "within_3px", "3_to_10px", "beyond_10px"}


def test_peer_arguments_that_cannot_apply_are_one_line_usage_errors(tmp_path):
    data, peer = tmp_path / "people", export_matting(FreshOnly(), tmp_path / "rvm.onnx")
    paint_folder(data, count=1)
    for extra, message in ((["--mirror"], "rvm.onnx is recurrent"),
                           (["--long-side", "320"], "a --peer sizes its own"),
                           (["--model", "compact"], "--peer scores a peer instead")):
        done = run("--peer", str(peer), "--data", str(data), *extra)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    missing = run("--peer", str(tmp_path / "none.onnx"), "--data", str(data))
    assert missing.returncode == 1 and "no teacher model at" in missing.stderr, missing.stderr
