"""The two model steps, each built from the settings alone, and the stamp each puts on results.

Usage::

    detection = build_detector(config)       # only the detector's model (none for Roboflow)
    estimation = build_estimator(config)     # only the age and gender models
    found = detection.detect(image)
    faces = faces_of(found, estimation.estimate(image, found))
    result = make_result("a.jpg", faces, (w, h), started, timings, detection.stamp.merge(estimation.stamp))

Which file each model runs (`detector_files`, `estimator_files`) depends on the settings, the
CPU and which int8 builds are on disk; the stamps (`detector_stamp`, `estimator_stamp`) are pure
functions of the settings and those files. The embedded `Analyzer` builds both steps; each
service builds only its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import models
from .attributes._types import AgeGender
from .detection._types import Detection, FaceDetector
from .errors import AnalysisError, ErrorCode
from .imaging import RGBImage
from .models import INT8_BUILDS, MODELS, ModelFile, default_model_dir, verified_model
from .results import Stamp
from .settings import AnalyzerConfig

if TYPE_CHECKING:
    from .attributes.age_gender import AgeGenderEstimator

__all__ = [
    "DetectionStep",
    "EstimationStep",
    "build_detector",
    "build_estimator",
    "check_models",
    "detector_files",
    "detector_stamp",
    "estimator_files",
    "estimator_stamp",
    "settings_stamp",
]

# `precision=auto` runs the int8 detector only up to this detection size (at 1024 it loses 0.010 AP).
_INT8_AUTO_MAX_SIZE = 640
_ESTIMATOR_MODELS = ("age", "gender")


@dataclass
class DetectionStep:
    """The detector with the settings it runs at and the stamp its results carry."""

    detector: FaceDetector
    min_confidence: float
    stamp: Stamp
    local: bool = True  # runs here (False: a hosted API, never called just to warm up)

    def detect(self, image: RGBImage) -> list[Detection]:
        """Faces above `min_confidence`; raises `AnalysisError` when the detector fails."""
        try:
            return self.detector.detect(image, self.min_confidence)
        except AnalysisError:
            raise
        except Exception as exc:
            raise AnalysisError(ErrorCode.DETECTOR_FAILED, f"face detection failed: {exc}") from exc

    def warm_up(self) -> None:
        """Run a local detector once on a blank image (its first runs are slow)."""
        if self.local:
            self.detect(np.full((64, 64, 3), 128, dtype=np.uint8))


@dataclass
class EstimationStep:
    """The age and gender models and the stamp their results carry."""

    estimator: AgeGenderEstimator
    stamp: Stamp

    def estimate(self, image: RGBImage, detections: Sequence[Detection]) -> list[AgeGender]:
        """Age and gender of each detected face (aligned from its box if it has no landmarks)."""
        from .attributes.alignment import box_landmarks

        points = [d.landmarks if d.landmarks is not None else box_landmarks(d.box) for d in detections]
        return self.estimator.estimate(image, points)

    def warm_up(self) -> None:
        """Run the models once (their first runs are slow) on a blank image."""
        blank = np.full((64, 64, 3), 128, dtype=np.uint8)
        self.estimate(blank, [Detection(box=(8.0, 8.0, 56.0, 56.0), score=1.0, landmarks=None)])


def detector_files(config: AnalyzerConfig) -> dict[str, ModelFile]:
    """The verified model files the detector runs (none for Roboflow); raises `ModelError`."""
    if config.detector != "centerface":
        return {}
    int8 = config.preset == "fast" and (
        config.precision == "int8"
        or (config.detect_size is not None and config.detect_size <= _INT8_AUTO_MAX_SIZE)
    )
    return _files(config, ["centerface"], int8_candidates=["centerface"] if int8 else [])


def estimator_files(config: AnalyzerConfig) -> dict[str, ModelFile]:
    """The verified age and gender model files; raises `ModelError`."""
    return _files(config, _ESTIMATOR_MODELS, int8_candidates=_ESTIMATOR_MODELS)


def _files(
    config: AnalyzerConfig, names: Sequence[str], int8_candidates: Sequence[str]
) -> dict[str, ModelFile]:
    """Each model's file: its int8 build where the precision asks for it, else the fp32 file.

    `int8` takes the build this CPU computes exactly (a missing one is a `ModelError`). `auto`
    takes each int8 model where it was measured to keep fp32's accuracy: the full 8-bit build
    (CPUs with int8 dot products; the 7-bit one costs UTKFace age MAE +0.12 y, WIDER medium AP
    -0.007), when it is built and verifies.
    """
    folder = config.model_dir or default_model_dir()
    fp32 = {name: verified_model(name, folder) for name in names}
    build = models.int8_build_for_cpu()
    int8: dict[str, Path] = {}
    if config.precision == "int8":
        int8 = models.require_int8(int8_candidates, folder, build)
    elif config.precision == "auto" and build == "int8":
        int8 = models.verified_int8(int8_candidates, folder, build)
    return {
        name: ModelFile(int8[name], INT8_BUILDS[build][name].sha256)
        if name in int8
        else ModelFile(fp32[name], MODELS[name].sha256)
        for name in names
    }


def settings_stamp(config: AnalyzerConfig) -> dict[str, Any]:
    """The settings results name (those a detector without presets ignores are left out)."""
    stamp: dict[str, Any] = {"detect_size": config.detect_size, "min_confidence": config.min_confidence}
    if config.detector == "centerface":
        stamp.update(preset=config.preset, runtime=config.runtime)
    stamp["precision"] = config.precision
    return stamp


def detector_stamp(config: AnalyzerConfig, files: dict[str, ModelFile]) -> Stamp:
    """The detector's part of a result's stamp: its model, its name and the settings.

    Results list the CenterFace model even for another detector (the pinned fp32 file then).
    """
    spec = MODELS["centerface"]
    centerface = files["centerface"].id if "centerface" in files else f"{spec.filename}@{spec.sha256[:12]}"
    name = config.roboflow.detector_name if config.detector == "roboflow" else config.detector
    return Stamp({"centerface": centerface, "detector": name}, settings_stamp(config))


def estimator_stamp(files: dict[str, ModelFile]) -> Stamp:
    """The estimator's part of a result's stamp: its two models."""
    return Stamp({name: files[name].id for name in _ESTIMATOR_MODELS})


def build_detector(config: AnalyzerConfig) -> DetectionStep:
    """The configured detector, its model loaded.

    Raises:
        ModelError: its model file is missing or corrupt. ValueError: Roboflow without
        $ROBOFLOW_API_KEY. ImportError: OpenVINO chosen without the extra.
    """
    files = detector_files(config)
    detector: FaceDetector
    if config.detector == "roboflow":
        from .detection.roboflow import RoboflowDetector

        detector = RoboflowDetector(config.roboflow)
    else:
        from .detection.centerface import ACCURATE_PASSES, CenterFace

        detector = CenterFace(
            files["centerface"].path,
            config.detect_size,
            config.onnx_threads(),
            runtime=config.runtime,
            passes=ACCURATE_PASSES if config.preset == "accurate" else (),
            bf16=config.precision != "fp32",
        )
    stamp = detector_stamp(config, files)
    return DetectionStep(detector, config.min_confidence, stamp, local=config.detector != "roboflow")


def build_estimator(config: AnalyzerConfig) -> EstimationStep:
    """The age and gender models, loaded.

    Raises:
        ModelError: a model file is missing or corrupt. ImportError: OpenVINO without the extra.
    """
    from .attributes.age_gender import AgeGenderEstimator

    files = estimator_files(config)
    estimator = AgeGenderEstimator(
        files["age"].path,
        files["gender"].path,
        config.onnx_threads(),
        runtime=config.runtime,
        bf16=config.precision != "fp32",
    )
    return EstimationStep(estimator, estimator_stamp(files))


def check_models(config: AnalyzerConfig) -> None:
    """Raise `ModelError` now if a model file `config` needs is missing or corrupt (loads nothing)."""
    detector_files(config)
    estimator_files(config)
