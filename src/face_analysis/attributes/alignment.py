"""Align a face to the chip the age and gender models were trained on.

The models expect dlib-style face chips (padding 0.2). CenterFace's 5 points (eye centres,
nose tip, mouth corners) are not dlib's, so `CHIP_TEMPLATE`, where those points sit in a chip,
was fitted on data: see `benchmarks/fit.py`. A least-squares similarity (Umeyama),
not a robust fit, maps the points onto it: with 5 points every point matters.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from ..imaging import RGBImage

__all__ = ["CHIP_TEMPLATE", "box_landmarks", "extract_chip", "similarity_transform"]

# (x, y) in chip units (0..1): left eye, right eye, nose tip, left and right mouth corner.
# The mean of CenterFace's points over the UTKFace dev faces, which dlib aligned into chips,
# detected as the default settings do (close-ups' landmarks re-read at ~160 px), as
# `benchmarks/fit.py` recomputes it; an earlier search over its scale and position, not part
# of fit.py, found no better fit.
CHIP_TEMPLATE: NDArray[np.float64] = np.array(
    [
        [0.2973, 0.3055],
        [0.7006, 0.3111],
        [0.4917, 0.5083],
        [0.3216, 0.6846],
        [0.6496, 0.6887],
    ]
)


def similarity_transform(src: NDArray[np.floating], dst: NDArray[np.floating]) -> NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) taking src onto dst.

    Umeyama (1991) in its 2-D closed form (points as complex numbers: dst ~ c * src + t), which
    needs no SVD: the same matrix, ~10x faster. Returns the 2 x 3 matrix for `cv2.warpAffine`.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    (sx, sy), (dx, dy) = (src - src_mean).T, (dst - dst_mean).T
    variance = float((sx * sx + sy * sy).sum())
    if variance > 0:
        a = float((sx * dx + sy * dy).sum()) / variance
        b = float((sx * dy - sy * dx).sum()) / variance
    else:
        a, b = 1.0, 0.0
    linear = np.array([[a, -b], [b, a]])
    translation = dst_mean - linear @ src_mean
    return np.hstack([linear, translation[:, None]])


def box_landmarks(box: tuple[float, float, float, float]) -> NDArray[np.float32]:
    """Where an upright face's 5 points sit in a detector box, for detectors without landmarks.

    The positions suit boxes drawn as CenterFace draws them (brow to chin). Checked on the UTKFace
    dev faces with whole CenterFace boxes (`benchmarks/accuracy.py utkface --pad 0.25
    --no-landmarks`): age MAE 7.1 y, against 5.9 y aligned from the landmarks. Refitting them
    there did not do clearly better: the mean place of CenterFace's points in its boxes lost
    0.1 y, a grid over the template's scale (0.9-1.1) and height (-0.04 to +0.02 box heights)
    gained 0.16 y at best. (On UTKFace as it is, the tight crops cut most boxes at the top.)
    """
    x1, y1, x2, y2 = box
    unit = np.array([[0.32, 0.42], [0.68, 0.42], [0.5, 0.6], [0.36, 0.78], [0.64, 0.78]])
    return (unit * [x2 - x1, y2 - y1] + [x1, y1]).astype(np.float32)


def extract_chip(
    image: RGBImage,
    landmarks: NDArray[np.floating],
    size: int,
    template: NDArray[np.float64] = CHIP_TEMPLATE,
) -> RGBImage:
    """The size x size aligned chip of the face whose 5 points are `landmarks`.

    A face much larger than the chip is first shrunk with area averaging, as dlib's
    pyramid does: bilinear sampling alone would alias and move the estimates.
    """
    matrix = similarity_transform(landmarks, template * size)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < 0.5:
        # Cut the chip's footprint out of the image, shrink it so the warp scale becomes ~0.5.
        inverse = cv2.invertAffineTransform(matrix)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], float)
        footprint = corners @ inverse.T
        x0, y0 = np.floor(footprint.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(footprint.max(axis=0)).astype(int) + 2
        height, width = image.shape[:2]
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if cx1 > cx0 and cy1 > cy0:
            shrink = 2 * scale
            roi = image[cy0:cy1, cx0:cx1]
            out_w = max(1, round(roi.shape[1] * shrink))
            out_h = max(1, round(roi.shape[0] * shrink))
            small = np.asarray(cv2.resize(roi, (out_w, out_h), interpolation=cv2.INTER_AREA), dtype=np.uint8)
            sx, sy = out_w / roi.shape[1], out_h / roi.shape[0]
            # Pixel centres: small pixel i covers image pixels [i/s, (i+1)/s), centred at
            # (i + 0.5)/s - 0.5; the chip matrix takes image coordinates, so compose with that.
            to_image = np.array(
                [[1 / sx, 0, cx0 + 0.5 / sx - 0.5], [0, 1 / sy, cy0 + 0.5 / sy - 0.5], [0, 0, 1]]
            )
            matrix = matrix @ to_image
            image = small
    chip = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return np.asarray(chip, dtype=np.uint8)
