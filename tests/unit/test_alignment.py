"""Face alignment: the Umeyama fit and the chips cut with it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from face_analysis.attributes.age_gender import halve
from face_analysis.attributes.alignment import CHIP_TEMPLATE, extract_chip, similarity_transform

CHIP = 64


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> NDArray[np.float64]:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def apply(matrix: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_recovers_a_known_similarity_exactly() -> None:
    src = np.random.default_rng(0).uniform(0, 100, size=(5, 2))
    expected = similarity(angle_deg=23.0, scale=1.7, tx=12.5, ty=-40.0)
    found = similarity_transform(src, apply(expected, src))
    np.testing.assert_allclose(found, expected, atol=1e-9)


def test_best_fit_is_never_a_reflection() -> None:
    src = np.random.default_rng(1).uniform(0, 100, size=(5, 2))
    mirrored = src * [-1, 1]
    found = similarity_transform(src, mirrored)
    assert np.linalg.det(found[:, :2]) > 0


def spot_centres(
    chip: NDArray[np.uint8], expected: NDArray[np.float64], radius: int = 5
) -> NDArray[np.float64]:
    """Brightness-weighted centre of the spot near each expected position."""
    grey = chip[:, :, 0].astype(np.float64)
    centres = []
    for x, y in expected:
        x0, y0 = round(x) - radius, round(y) - radius
        window = grey[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        assert window.sum() > 0, f"no spot near {(x, y)}"
        ys, xs = np.mgrid[0 : window.shape[0], 0 : window.shape[1]]
        centres.append((x0 + (xs * window).sum() / window.sum(), y0 + (ys * window).sum() / window.sum()))
    return np.array(centres)


def face_of_spots(
    image_size: int, face_width: float, angle_deg: float
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """A black image with a white spot at each of 5 landmarks of a rotated face `face_width` wide."""
    centre = image_size / 2
    place = similarity(angle_deg, face_width, 0, 0)
    points = apply(place, CHIP_TEMPLATE - 0.5) + centre
    image = np.zeros((image_size, image_size, 3), np.uint8)
    spot = max(2.0, face_width / CHIP * 1.2)  # about 1.2 chip pixels in radius
    shift = 4  # cv2 draws at 1/16-pixel precision
    for x, y in points:
        centre_fixed = (round(x * 2**shift), round(y * 2**shift))
        cv2.circle(image, centre_fixed, round(spot * 2**shift), (255, 255, 255), -1, cv2.LINE_AA, shift)
    return image, points


@pytest.mark.parametrize(
    ("image_size", "face_width", "angle_deg"),
    [
        (200, 90.0, 0.0),  # about chip-sized
        (300, 120.0, 25.0),  # rotated
        (2400, 1600.0, -15.0),  # 25x larger than the chip: the shrink-first path
    ],
)
def test_chip_puts_landmarks_on_the_template(image_size: int, face_width: float, angle_deg: float) -> None:
    image, points = face_of_spots(image_size, face_width, angle_deg)
    chip = extract_chip(image, points, CHIP)
    assert chip.shape == (CHIP, CHIP, 3)
    assert chip.dtype == np.uint8
    found = spot_centres(chip, CHIP_TEMPLATE * CHIP)
    np.testing.assert_allclose(found, CHIP_TEMPLATE * CHIP, atol=1.0)


def test_chip_of_a_shifted_face_moves_with_it() -> None:
    # Landmarks that do not match the spots must give a chip whose spots are off the template.
    image, points = face_of_spots(300, 120.0, 0.0)
    chip = extract_chip(image, points + np.array([12.0, 0.0]), CHIP)
    found = spot_centres(chip, CHIP_TEMPLATE * CHIP - [12 * CHIP / 120, 0], radius=4)
    assert np.abs(found - CHIP_TEMPLATE * CHIP).max() > 4


def test_halved_chips_keep_the_chip_alignment(astronaut_rgb: NDArray[np.uint8]) -> None:
    # Pixel j of the halved chip sits where pixel 2j of the chip sits (the template's grid):
    # on a ramp that is the ramp's value there (away from the border).
    ramp = np.broadcast_to((10 + 2 * np.arange(64))[None, :, None], (64, 64, 3)).astype(np.uint8)
    halved = halve(np.stack([ramp, astronaut_rgb[100:164, 200:264]]))
    assert halved.shape == (2, 32, 32, 3) and halved.dtype == np.uint8
    assert halved[0, 5, 2:-2, 0].tolist() == [10 + 4 * j for j in range(2, 30)]
    assert abs(float(halved[1].mean()) - float(astronaut_rgb[100:164, 200:264].mean())) < 1.0
