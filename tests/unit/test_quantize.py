"""The int8 build's inputs (calibration images), without models."""

from __future__ import annotations

import numpy as np

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
