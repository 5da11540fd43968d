"""Non-maximum suppression, greedy and weighted, on hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from face_analysis.detection.nms import nms, overlaps, weighted_nms


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_overlaps_are_intersection_over_union() -> None:
    boxes = _boxes((0, 0, 10, 10), (5, 0, 15, 10), (20, 20, 30, 30), (0, 0, 10, 10))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ious = overlaps(boxes, areas, np.intp(0), np.arange(1, 4))
    assert ious.tolist() == pytest.approx([50 / 150, 0.0, 1.0])


def test_nms_keeps_the_best_of_each_overlapping_group_best_first() -> None:
    boxes = _boxes((0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (51, 50, 61, 60), (100, 0, 110, 10))
    scores = np.array([0.6, 0.9, 0.7, 0.8, 0.1], dtype=np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 3, 4]


def test_nms_keeps_boxes_overlapping_at_most_the_threshold() -> None:
    boxes = _boxes((0, 0, 10, 10), (5, 0, 15, 10))  # IoU 1/3
    scores = np.array([0.9, 0.8], dtype=np.float32)
    assert nms(boxes, scores, 0.34).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]


def test_nms_breaks_ties_in_input_order_and_handles_nothing() -> None:
    boxes = _boxes((0, 0, 10, 10), (0, 0, 10, 10))
    assert nms(boxes, np.array([0.5, 0.5], dtype=np.float32), 0.3).tolist() == [0]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).tolist() == []


def test_weighted_nms_averages_overlapping_boxes_and_keeps_separate_ones() -> None:
    boxes = _boxes((0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60))
    scores = np.array([0.9, 0.3, 0.5], dtype=np.float32)
    points = np.repeat(boxes[:, None, :2], 5, axis=1).astype(np.float32)
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, points, 0.4)
    assert out_scores.tolist() == pytest.approx([0.9, 0.5])
    assert out_boxes[0].tolist() == pytest.approx([0.25, 0.25, 10.25, 10.25])
    assert out_points[0, 0].tolist() == pytest.approx([0.25, 0.25])
    assert out_boxes[1].tolist() == pytest.approx([50, 50, 60, 60])


def test_weighted_nms_keeps_a_degenerate_box_alone() -> None:
    boxes = _boxes((5, 5, 5, 5), (0, 0, 10, 10))  # zero area: overlaps nothing, not even itself
    scores = np.array([0.9, 0.8], dtype=np.float32)
    points = np.zeros((2, 5, 2), dtype=np.float32)
    out_boxes, out_scores, _ = weighted_nms(boxes, scores, points, 0.4)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8])
    np.testing.assert_allclose(out_boxes, [[5, 5, 5, 5], [0, 0, 10, 10]])


def test_weighted_nms_of_nothing_is_nothing() -> None:
    empty = np.zeros((0, 4), np.float32)
    boxes, scores, points = weighted_nms(empty, np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32), 0.4)
    assert len(boxes) == len(scores) == len(points) == 0
