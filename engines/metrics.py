"""Segmentation metrics on boolean masks: foreground IoU, boundary F-score, and where the
wrong pixels lie (at the true edge, or far from it)."""
from __future__ import annotations

import cv2
import numpy as np
import torch


def batch_iou(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image foreground IoU in percent of N×… boolean tensors (100 when both are empty)."""
    predicted, truth = predicted.flatten(1), truth.flatten(1)
    intersection = (predicted & truth).sum(1).float()
    union = (predicted | truth).sum(1).float()
    return torch.where(union > 0, 100 * intersection / union.clamp(min=1), torch.full_like(union, 100.0))


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Foreground IoU in percent of two H×W boolean masks."""
    return float(batch_iou(torch.from_numpy(predicted[None]), torch.from_numpy(truth[None]))[0])


def _edges(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(np.uint8)
    return (m - cv2.erode(m, np.ones((3, 3), np.uint8))).astype(bool)


def boundary_f(predicted: np.ndarray, truth: np.ndarray, tolerance: int = 3) -> float:
    """F-score in percent of the predicted edge against the true edge, within `tolerance` pixels."""
    predicted_edge, true_edge = _edges(predicted), _edges(truth)
    if not predicted_edge.any() and not true_edge.any():
        return 100.0
    if not predicted_edge.any() or not true_edge.any():
        return 0.0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    near_true = cv2.dilate(true_edge.astype(np.uint8), kernel).astype(bool)
    near_predicted = cv2.dilate(predicted_edge.astype(np.uint8), kernel).astype(bool)
    precision = (predicted_edge & near_true).sum() / predicted_edge.sum()
    recall = (true_edge & near_predicted).sum() / true_edge.sum()
    if precision + recall == 0:
        return 0.0
    return float(200 * precision * recall / (precision + recall))


# Bands of distance from the true edge, in pixels, by name: errors at the edge are the
# upsampling's and the matte's softness; errors far from it are whole regions taken or missed
# (an object beside the person, a hat, a bystander).
DISTANCE_BANDS = {"within_3px": (0, 3), "3_to_10px": (3, 10), "beyond_10px": (10, None)}


def error_by_distance(predicted: np.ndarray, truth: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The wrong pixels among the `known` ones, counted by their distance from the true edge:
    a 3×2 array whose rows are `DISTANCE_BANDS` in order and whose columns are false person
    and missed person. The edge is the true mask's own (one pixel on either side), wherever
    unknown pixels lie."""
    edge = _edges(truth) | _edges(~truth)
    distance = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    false, missed = predicted & ~truth & known, truth & ~predicted & known
    rows = []
    for low, high in DISTANCE_BANDS.values():
        band = (distance >= low) & (distance < high if high is not None else True)
        rows.append(((false & band).sum(), (missed & band).sum()))
    return np.array(rows, np.int64)
