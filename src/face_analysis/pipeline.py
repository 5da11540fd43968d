"""The Analyzer: image in, ImageResult out, in one process (the embedded mode).

It composes the steps (`steps.build_detector`, `steps.build_estimator`) with decoding and
`results.make_result`; the services compose the same pieces, one step each.

Usage::

    from face_analysis import Analyzer
    result = Analyzer().analyze("photo.jpg")
    print(result.to_json())
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .attributes._types import AgeGender
from .detection._types import Detection, FaceDetector
from .errors import AnalysisError, ErrorCode
from .imaging import RGBImage, decode_image, read_image_file
from .results import Face, ImageResult, ResultError, Stamp, faces_of, make_result
from .settings import PRECISIONS, AnalyzerConfig, Precision
from .steps import build_detector, build_estimator

if TYPE_CHECKING:
    from .attributes.age_gender import AgeGenderEstimator

__all__ = ["PRECISIONS", "Analyzer", "AnalyzerConfig", "ImageSource", "Precision"]

ImageSource = str | os.PathLike[str] | bytes | RGBImage


class Analyzer:
    """Loads the models once; analyses any number of images, one at a time.

    `analyze` never raises for a bad image: it returns a result whose `error` says why.
    Constructing it raises `ModelError` when a model is missing or corrupt, and ValueError when
    the Roboflow detector is chosen without $ROBOFLOW_API_KEY.
    """

    def __init__(self, config: AnalyzerConfig | None = None) -> None:
        self.config = config or AnalyzerConfig()
        self.detection = build_detector(self.config)
        self.estimation = build_estimator(self.config)
        self.stamp: Stamp = self.detection.stamp.merge(self.estimation.stamp)

    @property
    def detector(self) -> FaceDetector:
        return self.detection.detector

    @property
    def estimator(self) -> AgeGenderEstimator:
        """The age and gender models."""
        return self.estimation.estimator

    def analyze(self, source: ImageSource, image_id: str | None = None) -> ImageResult:
        """Analyse one image given as a path, encoded bytes or an RGB uint8 array (H x W x 3)."""
        return self.analyze_with_image(source, image_id)[0]

    def analyze_with_image(
        self, source: ImageSource, image_id: str | None = None
    ) -> tuple[ImageResult, RGBImage | None]:
        """`analyze`, also returning the decoded upright image (None if it could not be decoded).

        For work on the pixels the result describes (e.g. drawing it) without decoding twice.
        """
        started = datetime.now()
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        name = image_id or (
            Path(os.fspath(source)).name if isinstance(source, (str, os.PathLike)) else "image"
        )
        image: RGBImage | None = None
        faces: tuple[Face, ...] = ()
        error: ResultError | None = None
        try:
            image = self.load(source)
            timings["decode"] = _ms_since(clock)
            step = time.perf_counter()
            detections = self.detect(image)
            timings["detect"] = _ms_since(step)
            step = time.perf_counter()
            faces = faces_of(detections, self.estimate(image, detections))
            timings["age_gender"] = _ms_since(step)
        except Exception as exc:  # one bad image must never stop a batch
            error = ResultError.of(exc)
        timings["total"] = _ms_since(clock)
        size = None if image is None else (int(image.shape[1]), int(image.shape[0]))
        return make_result(name, faces, size, started, timings, self.stamp, error), image

    # The steps, public for callers that run them one at a time (benchmarks, tests).

    def load(self, source: ImageSource) -> RGBImage:
        """Decode a path, encoded bytes or an RGB array; raises `AnalysisError` for a bad image."""
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
                raise AnalysisError(ErrorCode.NOT_AN_IMAGE, "an array must be H x W x 3 uint8 RGB")
            return np.ascontiguousarray(source)
        if isinstance(source, bytes):
            return decode_image(source, self.config.limits)
        data = read_image_file(Path(os.fspath(source)), self.config.limits)
        return decode_image(data, self.config.limits)

    def detect(self, image: RGBImage) -> list[Detection]:
        """Faces above `min_confidence`; raises `AnalysisError` when the detector fails."""
        return self.detection.detect(image)

    def estimate(self, image: RGBImage, detections: Sequence[Detection]) -> list[AgeGender]:
        """Age and gender of each detected face (aligned from its box if it has no landmarks)."""
        return self.estimation.estimate(image, detections)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
