"""The steadiness figures of `benchmarks/temporal.py`, on mattes whose answers are known."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def temporal():
    spec = importlib.util.spec_from_file_location("temporal", ROOT / "benchmarks" / "temporal.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["temporal"] = module
    spec.loader.exec_module(module)
    return module


def moving_square(frames: int = 6) -> np.ndarray:
    truths = np.zeros((frames, 40, 60), bool)
    for t in range(frames):
        truths[t, 10:30, 5 + 4 * t : 25 + 4 * t] = True
    return truths


def test_a_perfect_matte_scores_perfectly(temporal):
    truths = moving_square()
    result = temporal.steadiness(truths.astype(np.float32), truths)
    assert (result["iou"], result["dtssd"], result["flicker"], result["changed_iou"]) == (100, 0, 0, 100)


def test_a_matte_one_frame_late_misses_every_changed_pixel(temporal):
    truths = moving_square()
    late = np.concatenate([truths[:1], truths[:-1]]).astype(np.float32)
    result = temporal.steadiness(late, truths)
    assert result["changed_iou"] == 0 and result["iou"] < 100


def test_a_blinking_region_is_flicker(temporal):
    truths = np.zeros((4, 20, 20), bool)
    alphas = np.zeros((4, 20, 20), np.float32)
    alphas[1::2, :10] = 0.4  # a ghost that comes and goes where nothing is
    result = temporal.steadiness(alphas, truths)
    assert result["flicker"] == pytest.approx(20.0) and result["iou"] == 100  # below 0.5: not in the IoU
    assert result["dtssd"] == pytest.approx(40 * np.sqrt(0.5), abs=1e-3)
