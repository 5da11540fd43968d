from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from ..imaging import RGBImage

__all__ = ["Detection", "FaceDetector"]


@dataclass(frozen=True, slots=True)
class Detection:
    """One face in original-image pixels.

    `landmarks` is 5 x 2 (x, y): left eye, right eye, nose, left and right mouth corner,
    "left" meaning the image's left; None when the detector gives no landmarks.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: NDArray[np.float32] | None


class FaceDetector(Protocol):
    """What the pipeline needs from a detector."""

    name: str

    def detect(self, image: RGBImage, min_confidence: float) -> list[Detection]: ...
