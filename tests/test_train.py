"""Training end to end on a tiny portrait folder the test paints: checkpoints, the
prediction grid, the best-validation weights, and resuming."""
from __future__ import annotations

import json

import cv2
import numpy as np

from engines.data import load_portraits
from engines.tiramisu import load_weights
from engines.train import main


def paint_portraits(root, count: int = 20) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for index in range(count):
        image = rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)
        mask = np.zeros((80, 60), np.uint8)
        cv2.ellipse(mask, (30, 80), (20 + index % 5, 45), 0, 180, 360, 255, -1)
        cv2.circle(mask, (30, 28), 12, 255, -1)
        image[mask > 0] = (200, 150, 120)
        name = f"{index:03d}"
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
        names.append(name)
    (root / "train.txt").write_text("\n".join(names) + "\n")


def test_train_writes_checkpoints_and_resumes(tmp_path):
    data, out = tmp_path / "portraits", tmp_path / "run"
    paint_portraits(data)
    common = ["--data", str(data), "--out", str(out), "--size", "48x64", "--batch", "6", "--threads", "1"]
    main([*common, "--epochs", "2"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]
    assert (out / "grid_002.png").exists() and (out / "last.pt").exists()
    model = load_weights(out / "best.safetensors")
    assert model.config.stem_stride == 4
    main([*common, "--epochs", "3", "--resume"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]


def test_images_of_another_shape_are_cropped_not_squashed(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, (height, width) in {"wide": (100, 200), "tall": (200, 100)}.items():
        image = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        cv2.circle(mask, (width // 2, height // 2), 30, 255, -1)
        cv2.imwrite(str(tmp_path / "images" / f"{name}.jpg"), image)
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask)
    _, masks = load_portraits(tmp_path, "train", (50, 50), ["wide", "tall"])
    for mask in masks[:, 0] > 127:
        rows, columns = mask.any(1).sum().item(), mask.any(0).sum().item()
        assert rows == columns and 28 <= rows <= 32  # still a circle, at the scale of the short side
