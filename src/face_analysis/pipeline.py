"""The Analyzer: image in, ImageResult out. The one place the steps meet.

Usage::

    from face_analysis import Analyzer
    result = Analyzer().analyze("photo.jpg")
    print(result.to_json())
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from .attributes import AgeGender, AgeGenderEstimator
from .attributes.alignment import box_landmarks
from .detection import (
    ACCURATE_PASSES,
    CenterFace,
    Detection,
    FaceDetector,
    RoboflowDetector,
    RoboflowSettings,
)
from .errors import AnalysisError, ErrorCode
from .imaging import DecodeLimits, RGBImage, decode_image, read_image_file
from .models import MODELS, BuiltModel, ModelPaths, ModelSpec
from .results import LANDMARK_NAMES, Face, ImageResult, ResultError
from .runtime import RUNTIMES, Runtime

__all__ = ["PRECISIONS", "Analyzer", "AnalyzerConfig", "ImageSource", "Precision"]

ImageSource = str | os.PathLike[str] | bytes | RGBImage
_INT8_AUTO_MAX_SIZE = 640
Precision = Literal["auto", "fp32", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True, slots=True)
class AnalyzerConfig:
    """How images are analysed.

    detect_size: the detector sees the image with its long side at this many pixels
        (None: native size). 640 is fast and finds faces down to ~16 px in a 640 px image;
        1024 finds the small faces of big group photos at ~3x the detection cost.
    min_confidence: faces scoring below this are dropped.
    threads: onnxruntime threads per model (default: all cores).
    model_dir: folder with the model files (default: `face_analysis.models.default_model_dir`).
    detector: "centerface" (local, offline, boxes and landmarks) or "roboflow" (a hosted
        Roboflow model set by `roboflow`, key in $ROBOFLOW_API_KEY; boxes only, `detect_size`
        does not apply).
    preset: "fast" (one look at `detect_size`) or "accurate" (crowds: the fp32 CenterFace at 640
        and 2048 px, each keeping the face sizes it sees best, merged by weighted NMS; WIDER dev
        hard AP 0.737 instead of 0.443, at ~30x the detection time of fast; `detect_size` does
        not apply).
    runtime: "onnxruntime" or "openvino" (the `openvino` extra) runs the models.
    precision: "auto" (default): on a CPU with int8 dot-product units (VNNI, AMX, Arm
        dotprod), the int8 models that are built and verified (`face-analysis models
        quantize`): age and gender (~2x faster, UTKFace figures unchanged) and, in the fast
        preset with `detect_size` at most 640, CenterFace (WIDER AP within 0.005 of fp32 at
        1.4-2.4x the speed; UTKFace age MAE 6.0 y instead of 5.9; at 1024 int8 loses 0.010
        AP, so larger sizes keep fp32). With OpenVINO the fp32 models compute in bf16 on CPUs
        with bf16 units. "fp32": the original models in fp32 everywhere. "int8": every int8
        model on any CPU, in the build the CPU computes exactly (8-bit weights with int8 dot
        products, 7-bit weights without), and an error when one is not built.
    """

    detect_size: int | None = 640
    min_confidence: float = 0.5
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    model_dir: Path | None = None
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    detector: Literal["centerface", "roboflow"] = "centerface"
    roboflow: RoboflowSettings = field(default_factory=RoboflowSettings)
    preset: Literal["fast", "accurate"] = "fast"
    runtime: Runtime = "onnxruntime"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        if self.detect_size is not None and not 32 <= self.detect_size <= 8192:
            raise ValueError("detect_size must be between 32 and 8192 pixels")
        if not 0.0 < self.min_confidence < 1.0:
            raise ValueError("min_confidence must be between 0 and 1 (exclusive)")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.detector not in ("centerface", "roboflow"):
            raise ValueError(f"unknown detector {self.detector!r}: use 'centerface' or 'roboflow'")
        if self.detector == "roboflow":
            self.roboflow.check_complete()
        if self.preset not in ("fast", "accurate"):
            raise ValueError(f"unknown preset {self.preset!r}: use 'fast' or 'accurate'")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")


class Analyzer:
    """Loads the models once; analyses any number of images, one at a time.

    `analyze` never raises for a bad image: it returns a result whose `error` says why.
    Constructing it raises `ModelError` when a model is missing or corrupt, and ValueError when
    the Roboflow detector is chosen without $ROBOFLOW_API_KEY. `estimates=False` does not load
    the age and gender models, for a user that never estimates (a service that only detects, or
    only builds results).
    """

    def __init__(
        self,
        config: AnalyzerConfig | None = None,
        detector: FaceDetector | None = None,
        *,
        estimates: bool = True,
    ) -> None:
        self.config = config or AnalyzerConfig()
        paths = ModelPaths.resolve(self.config.model_dir)
        bf16 = self.config.precision != "fp32"
        int8 = _int8_models(self.config, paths, own_detector=detector is None)
        self.detector: FaceDetector = detector or (
            RoboflowDetector(self.config.roboflow)
            if self.config.detector == "roboflow"
            else CenterFace(
                int8.get("centerface", paths.centerface),
                self.config.detect_size,
                self.config.threads,
                runtime=self.config.runtime,
                passes=ACCURATE_PASSES if self.config.preset == "accurate" else (),
                bf16=bf16,
            )
        )
        self._estimator = (
            AgeGenderEstimator(
                int8.get("age", paths.age),
                int8.get("gender", paths.gender),
                self.config.threads,
                runtime=self.config.runtime,
                bf16=bf16,
            )
            if estimates
            else None
        )
        used: dict[str, ModelSpec | BuiltModel] = {**MODELS, **{n: paths.int8_specs[n] for n in int8}}
        self._models = {name: f"{spec.filename}@{spec.sha256[:12]}" for name, spec in used.items()}
        self._models["detector"] = self.detector.name
        self._settings: dict[str, Any] = {
            "detect_size": self.config.detect_size,
            "min_confidence": self.config.min_confidence,
        }
        if self.config.detector == "centerface":
            self._settings.update(preset=self.config.preset, runtime=self.config.runtime)
        self._settings["precision"] = self.config.precision

    @property
    def stamp(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The `models` and `settings` this analyzer's results carry (copies).

        The services pass the detecting analyzer's stamp on with its detections, so that the
        result built elsewhere says which detector and settings found its faces.
        """
        return dict(self._models), dict(self._settings)

    @property
    def estimator(self) -> AgeGenderEstimator:
        """The age and gender models; RuntimeError for an analyzer built with `estimates=False`."""
        if self._estimator is None:
            raise RuntimeError("this Analyzer was built without the age and gender models")
        return self._estimator

    @staticmethod
    def check_models(config: AnalyzerConfig) -> None:
        """Raise `ModelError` now if a model file `config` needs is missing or corrupt."""
        _int8_models(config, ModelPaths.resolve(config.model_dir), own_detector=True)

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
        return self.result(name, faces, size, started, timings, error), image

    # The steps, public so that the services run exactly these and nothing of their own.

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
        try:
            return self.detector.detect(image, self.config.min_confidence)
        except AnalysisError:
            raise
        except Exception as exc:
            raise AnalysisError(ErrorCode.DETECTOR_FAILED, f"face detection failed: {exc}") from exc

    def estimate(self, image: RGBImage, detections: Sequence[Detection]) -> list[AgeGender]:
        """Age and gender of each detected face (aligned from its box if it has no landmarks)."""
        points = [d.landmarks if d.landmarks is not None else box_landmarks(d.box) for d in detections]
        return self.estimator.estimate(image, points)

    def result(
        self,
        image_id: str,
        faces: tuple[Face, ...],
        size: tuple[int, int] | None,
        started: datetime,
        timings: dict[str, float],
        error: ResultError | None = None,
    ) -> ImageResult:
        """The result of one image, stamped with this analyzer's models and settings."""
        return ImageResult(
            image_id=image_id,
            faces=faces,
            width=None if size is None else size[0],
            height=None if size is None else size[1],
            processing_time=started,
            models=self._models,
            settings=self._settings,
            timings_ms=timings,
            error=error,
        )


def _int8_models(config: AnalyzerConfig, paths: ModelPaths, own_detector: bool) -> dict[str, Path]:
    """The int8 models `config` runs, by name; raises `ModelError` for `int8` when one is missing.

    `int8` takes the build this CPU computes exactly (`paths.int8_build`). `auto` takes each
    where it was measured to keep fp32's accuracy: the full 8-bit build (CPUs with int8 dot
    products; the 7-bit one costs UTKFace age MAE +0.12 y, WIDER medium AP -0.007), built and
    verified; for CenterFace also only in the fast preset (the accurate one's small faces lose
    ~0.03 WIDER hard AP) at up to 640 px (at 1024 it loses 0.010 AP).
    """
    if config.precision == "fp32":
        return {}
    names = ["age", "gender"]
    if own_detector and config.detector == "centerface" and config.preset == "fast":
        detect_size_ok = config.detect_size is not None and config.detect_size <= _INT8_AUTO_MAX_SIZE
        if config.precision == "int8" or detect_size_ok:
            names.insert(0, "centerface")
    if config.precision == "int8":
        return paths.require_int8(names)
    if paths.int8_build != "int8":
        return {}
    return {name: paths.int8[name] for name in names if name in paths.int8}


def faces_of(detections: Sequence[Detection], estimates: Sequence[AgeGender]) -> tuple[Face, ...]:
    """Result faces from the detector's and the estimator's outputs, in detection order."""
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


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000
