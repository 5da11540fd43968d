"""The Analyzer: image in, ImageResult out. The one place the steps meet.

Usage::

    from face_analysis import Analyzer
    result = Analyzer().analyze("photo.jpg")
    print(result.to_json())
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .attributes import AgeGenderEstimator
from .attributes.alignment import box_landmarks
from .detection import CenterFace, Detection, FaceDetector
from .errors import AnalysisError, ErrorCode
from .imaging import DecodeLimits, RGBImage, decode_image
from .models import MODELS, ModelPaths
from .results import LANDMARK_NAMES, Face, ImageResult, ResultError

__all__ = ["Analyzer", "AnalyzerConfig", "ImageSource"]

ImageSource = str | os.PathLike[str] | bytes | RGBImage


@dataclass(frozen=True, slots=True)
class AnalyzerConfig:
    """How images are analysed.

    detect_size: the detector sees the image with its long side at this many pixels
        (None: native size). 640 is fast and finds faces down to ~16 px in a 640 px image;
        1024 finds the small faces of big group photos at ~3x the detection cost.
    min_confidence: faces scoring below this are dropped.
    threads: onnxruntime threads per model (default: all cores).
    model_dir: folder with the model files (default: `face_analysis.models.default_model_dir`).
    """

    detect_size: int | None = 640
    min_confidence: float = 0.5
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    model_dir: Path | None = None
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    def __post_init__(self) -> None:
        if self.detect_size is not None and not 32 <= self.detect_size <= 8192:
            raise ValueError("detect_size must be between 32 and 8192 pixels")
        if not 0.0 < self.min_confidence < 1.0:
            raise ValueError("min_confidence must be between 0 and 1 (exclusive)")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")


class Analyzer:
    """Loads the models once; analyses any number of images, one at a time.

    `analyze` never raises for a bad image: it returns a result whose `error` says why.
    Constructing it raises `ModelError` when a model is missing or corrupt.
    """

    def __init__(self, config: AnalyzerConfig | None = None, detector: FaceDetector | None = None) -> None:
        self.config = config or AnalyzerConfig()
        paths = ModelPaths.resolve(self.config.model_dir)
        self.detector: FaceDetector = detector or CenterFace(
            paths.centerface, self.config.detect_size, self.config.threads
        )
        self.estimator = AgeGenderEstimator(paths.age, paths.gender, threads=self.config.threads)
        self._models = {name: f"{spec.filename}@{spec.sha256[:12]}" for name, spec in MODELS.items()}
        self._models["detector"] = self.detector.name
        self._settings: dict[str, Any] = {
            "detect_size": self.config.detect_size,
            "min_confidence": self.config.min_confidence,
        }

    @staticmethod
    def check_models(config: AnalyzerConfig) -> None:
        """Raise `ModelError` now if a model file is missing or corrupt."""
        ModelPaths.resolve(config.model_dir)

    def analyze(self, source: ImageSource, image_id: str | None = None) -> ImageResult:
        """Analyse one image given as a path, encoded bytes or an RGB uint8 array (H x W x 3)."""
        started = datetime.now()
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        name = image_id or (
            Path(os.fspath(source)).name if isinstance(source, (str, os.PathLike)) else "image"
        )
        image: RGBImage | None = None
        try:
            image = self._load(source)
            timings["decode"] = _ms_since(clock)
            faces = self._faces(image, timings)
        except AnalysisError as exc:
            return self._result(name, (), image, started, timings, clock, ResultError(exc.code, exc.message))
        except Exception as exc:
            error = ResultError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
            return self._result(name, (), image, started, timings, clock, error)
        return self._result(name, faces, image, started, timings, clock, None)

    def detect(self, image: RGBImage) -> list[Detection]:
        return self.detector.detect(image, self.config.min_confidence)

    def _load(self, source: ImageSource) -> RGBImage:
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
                raise AnalysisError(ErrorCode.NOT_AN_IMAGE, "an array must be H x W x 3 uint8 RGB")
            return np.ascontiguousarray(source)
        if isinstance(source, bytes):
            return decode_image(source, self.config.limits)
        path = Path(os.fspath(source))
        try:
            size = path.stat().st_size
            if size > self.config.limits.max_bytes:
                raise AnalysisError(
                    ErrorCode.FILE_TOO_LARGE,
                    f"the file has {size:,} bytes; the limit is {self.config.limits.max_bytes:,}",
                )
            data = path.read_bytes()
        except OSError as exc:
            raise AnalysisError(ErrorCode.UNREADABLE_FILE, f"cannot read {path}: {exc.strerror}") from None
        return decode_image(data, self.config.limits)

    def _faces(self, image: RGBImage, timings: dict[str, float]) -> tuple[Face, ...]:
        clock = time.perf_counter()
        try:
            detections = self.detect(image)
        except AnalysisError:
            raise
        except Exception as exc:
            raise AnalysisError(ErrorCode.DETECTOR_FAILED, f"face detection failed: {exc}") from exc
        timings["detect"] = _ms_since(clock)
        clock = time.perf_counter()
        points = [d.landmarks if d.landmarks is not None else box_landmarks(d.box) for d in detections]
        estimates = self.estimator.estimate(image, points)
        timings["age_gender"] = _ms_since(clock)
        return tuple(
            Face(
                bbox=(round(d.box[0]), round(d.box[1]), round(d.box[2]), round(d.box[3])),
                confidence=d.score,
                landmarks=None
                if d.landmarks is None
                else {n: (float(x), float(y)) for n, (x, y) in zip(LANDMARK_NAMES, d.landmarks, strict=True)},
                age=e.age_range,
                age_years=e.age_years,
                age_confidence=e.age_confidence,
                gender=e.gender,
                gender_confidence=e.gender_confidence,
            )
            for d, e in zip(detections, estimates, strict=True)
        )

    def _result(
        self,
        name: str,
        faces: tuple[Face, ...],
        image: RGBImage | None,
        started: datetime,
        timings: dict[str, float],
        clock: float,
        error: ResultError | None,
    ) -> ImageResult:
        timings["total"] = _ms_since(clock)
        return ImageResult(
            image_id=name,
            faces=faces,
            width=None if image is None else int(image.shape[1]),
            height=None if image is None else int(image.shape[0]),
            processing_time=started,
            models=self._models,
            settings=self._settings,
            timings_ms=timings,
            error=error,
        )


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
