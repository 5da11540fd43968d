"""Non-maximum suppression: greedy (one detector look) and score-weighted (several looks merged).

Usage::

    keep = nms(boxes, scores, iou=0.3)                  # indices of the kept boxes, best first
    boxes, scores, landmarks = weighted_nms(boxes, scores, landmarks, iou=0.4)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["Candidates", "nms", "overlaps", "weighted_nms"]

Candidates = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]


def overlaps(
    boxes: NDArray[np.float32], areas: NDArray[np.float32], best: np.intp, others: NDArray[np.intp]
) -> NDArray[np.float32]:
    """IoU of box `best` with each of `others`."""
    ix1 = np.maximum(boxes[best, 0], boxes[others, 0])
    iy1 = np.maximum(boxes[best, 1], boxes[others, 1])
    ix2 = np.minimum(boxes[best, 2], boxes[others, 2])
    iy2 = np.minimum(boxes[best, 3], boxes[others, 3])
    inter = (ix2 - ix1).clip(0) * (iy2 - iy1).clip(0)
    overlap: NDArray[np.float32] = inter / (areas[best] + areas[others] - inter + 1e-9)
    return overlap


def nms(boxes: NDArray[np.float32], scores: NDArray[np.float32], iou: float) -> NDArray[np.intp]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        order = rest[overlaps(boxes, areas, best, rest) <= iou]
    return np.asarray(keep, dtype=np.intp)


def weighted_nms(
    boxes: NDArray[np.float32], scores: NDArray[np.float32], landmarks: NDArray[np.float32], iou: float
) -> Candidates:
    """NMS that replaces each kept box (and its landmarks) by the score-weighted mean of the boxes
    it suppresses (itself included); the score stays the best one. Best first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out_boxes: list[NDArray[np.float32]] = []
    out_points: list[NDArray[np.float32]] = []
    out_scores: list[float] = []
    while order.size:
        best = order[0]
        overlap = overlaps(boxes, areas, best, order)
        group = order[overlap > iou]
        if group.size == 0:  # a degenerate (zero-area) box overlaps nothing, not even itself
            group = order[:1]
        weights = scores[group] / scores[group].sum()
        out_boxes.append((boxes[group] * weights[:, None]).sum(axis=0))
        out_points.append((landmarks[group] * weights[:, None, None]).sum(axis=0))
        out_scores.append(float(scores[best]))
        order = order[(overlap <= iou) & (order != best)]
    if not out_scores:
        return boxes[:0], scores[:0], landmarks[:0]
    return (
        np.asarray(out_boxes, dtype=np.float32),
        np.asarray(out_scores, dtype=np.float32),
        np.asarray(out_points, dtype=np.float32),
    )
