"""The int8 build's inputs (calibration images, prepared graph) and weighted NMS, without models."""

from __future__ import annotations

import numpy as np
import pytest

from face_analysis.detection.nms import weighted_nms
from face_analysis.quantize import CALIBRATION_SIZE, calibration_images, default_calibration_photo


def test_calibration_images_are_deterministic_augmentations_of_the_repo_photo(
    astronaut_rgb: np.ndarray,
) -> None:
    assert default_calibration_photo().name == "astronaut.jpg"
    first = list(calibration_images(np.array(astronaut_rgb), samples=6))
    second = list(calibration_images(np.array(astronaut_rgb), samples=6))
    assert len(first) == 6
    for a, b in zip(first, second, strict=True):
        assert a.shape == (CALIBRATION_SIZE, CALIBRATION_SIZE, 3)
        assert a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # augmented, not copies


def test_weighted_nms_averages_overlapping_boxes_and_keeps_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.3, 0.5], dtype=np.float32)
    points = np.repeat(boxes[:, None, :2], 5, axis=1).astype(np.float32)
    out_boxes, out_scores, out_points = weighted_nms(boxes, scores, points, 0.4)
    assert out_scores.tolist() == pytest.approx([0.9, 0.5])
    assert out_boxes[0].tolist() == pytest.approx([0.25, 0.25, 10.25, 10.25])
    assert out_points[0, 0].tolist() == pytest.approx([0.25, 0.25])
    assert out_boxes[1].tolist() == pytest.approx([50, 50, 60, 60])


def test_weighted_nms_of_nothing_is_nothing() -> None:
    empty = np.zeros((0, 4), np.float32)
    boxes, scores, points = weighted_nms(empty, np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32), 0.4)
    assert len(boxes) == len(scores) == len(points) == 0
