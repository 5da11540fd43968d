"""Library types to protobuf messages and back, without loss.

Detections and estimates cross Redis as protobuf doubles: every float the library produces
(float32 boxes, scores and landmarks, float64 estimates) survives the trip exactly, so the
services' results equal the embedded mode's. A result crosses as a typed `AnalysisResult`
whose `result_json` is, byte for byte, the JSON written to the output folder.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from ..attributes._types import AgeGender
from ..detection._types import Detection
from ..errors import ErrorCode
from ..results import LANDMARK_NAMES, SCHEMA_VERSION, Face, ImageResult, ResultError, Stamp
from .generated import age_gender_pb2, aggregator_pb2, common_pb2, landmark_detection_pb2

__all__ = [
    "detections_from_proto",
    "detections_to_proto",
    "error_from_proto",
    "error_to_proto",
    "estimates_from_proto",
    "estimates_to_proto",
    "result_from_proto",
    "result_json",
    "result_to_proto",
    "stamp_from_proto",
    "stamp_to_proto",
    "timings_from_proto",
]


def error_to_proto(error: ResultError) -> common_pb2.AnalysisError:
    return common_pb2.AnalysisError(code=error.code.value, message=error.message)


def error_from_proto(error: common_pb2.AnalysisError) -> ResultError:
    """Raises ValueError for an unknown code."""
    return ResultError(ErrorCode(error.code), error.message)


def detections_to_proto(detections: list[Detection]) -> list[landmark_detection_pb2.DetectedFace]:
    return [
        landmark_detection_pb2.DetectedFace(
            box=common_pb2.Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
            score=d.score,
            landmarks=[]
            if d.landmarks is None
            else [common_pb2.Point(x=float(x), y=float(y)) for x, y in d.landmarks],
        )
        for d in detections
    ]


def detections_from_proto(message: landmark_detection_pb2.FaceDetections) -> list[Detection]:
    return [
        Detection(
            box=(face.box.x1, face.box.y1, face.box.x2, face.box.y2),
            score=face.score,
            landmarks=np.array([(p.x, p.y) for p in face.landmarks], dtype=np.float32)
            if face.landmarks
            else None,
        )
        for face in message.faces
    ]


def estimates_to_proto(estimates: list[AgeGender]) -> list[age_gender_pb2.AgeGenderEstimate]:
    return [
        age_gender_pb2.AgeGenderEstimate(
            age_years=e.age_years,
            age_range=e.age_range,
            age_confidence=e.age_confidence,
            gender=e.gender,
            gender_confidence=e.gender_confidence,
        )
        for e in estimates
    ]


def estimates_from_proto(message: age_gender_pb2.AgeGenderEstimates) -> list[AgeGender]:
    return [
        AgeGender(
            age_years=e.age_years,
            age_range=e.age_range,
            age_confidence=e.age_confidence,
            gender=e.gender,
            gender_confidence=e.gender_confidence,
        )
        for e in message.estimates
    ]


def stamp_to_proto(stamp: Stamp) -> common_pb2.Stamp:
    """Raises ValueError for a setting the message has no field for (add it to common.proto)."""
    message = common_pb2.Stamp(models=[common_pb2.ModelId(name=k, id=v) for k, v in stamp.models.items()])
    if stamp.settings:
        values: dict[str, Any] = {
            k: 0 if k == "detect_size" and v is None else v for k, v in stamp.settings.items()
        }
        message.settings.CopyFrom(common_pb2.StampSettings(**values))
    return message


def stamp_from_proto(message: common_pb2.Stamp) -> Stamp:
    settings: dict[str, Any] = {}
    if message.HasField("settings"):
        present = {field.name for field, _ in message.settings.ListFields()}
        for field in message.settings.DESCRIPTOR.fields:  # declaration order: the JSON's order
            if not field.has_presence or field.name in present:
                settings[field.name] = getattr(message.settings, field.name)
        settings["detect_size"] = settings["detect_size"] or None
    return Stamp({model.name: model.id for model in message.models}, settings)


def timings_from_proto(message: common_pb2.Timings) -> dict[str, float]:
    """The timings set, in the order results list them."""
    return {field.name: value for field, value in message.ListFields()}  # in field-number order


def result_to_proto(job_id: str, result: ImageResult) -> aggregator_pb2.AnalysisResult:
    return aggregator_pb2.AnalysisResult(
        job_id=job_id,
        schema_version=SCHEMA_VERSION,
        image_id=result.image_id,
        width=result.width or 0,
        height=result.height or 0,
        faces=[
            aggregator_pb2.FaceResult(
                bbox=common_pb2.Box(x1=face.bbox[0], y1=face.bbox[1], x2=face.bbox[2], y2=face.bbox[3]),
                confidence=face.confidence,
                landmarks=[]
                if face.landmarks is None
                else [common_pb2.Point(x=x, y=y) for x, y in (face.landmarks[n] for n in LANDMARK_NAMES)],
                age=face.age,
                age_years=face.age_years,
                age_confidence=face.age_confidence,
                gender=face.gender,
                gender_confidence=face.gender_confidence,
            )
            for face in result.faces
        ],
        error=None if result.error is None else error_to_proto(result.error),
        processing_time=result.processing_time.isoformat(),
        timings=common_pb2.Timings(**result.timings_ms),
        stamp=stamp_to_proto(Stamp(result.models, result.settings)),
    )


def result_from_proto(message: aggregator_pb2.AnalysisResult) -> ImageResult:
    """Raises ValueError for an unknown error code or timestamp."""
    stamp = stamp_from_proto(message.stamp)
    return ImageResult(
        image_id=message.image_id,
        faces=tuple(
            Face(
                bbox=(int(f.bbox.x1), int(f.bbox.y1), int(f.bbox.x2), int(f.bbox.y2)),
                confidence=f.confidence,
                landmarks={n: (p.x, p.y) for n, p in zip(LANDMARK_NAMES, f.landmarks, strict=True)}
                if f.landmarks
                else None,
                age=f.age,
                age_years=f.age_years,
                age_confidence=f.age_confidence,
                gender=f.gender,
                gender_confidence=f.gender_confidence,
            )
            for f in message.faces
        ),
        width=message.width or None,
        height=message.height or None,
        processing_time=datetime.fromisoformat(message.processing_time),
        models=dict(stamp.models),
        settings=dict(stamp.settings),
        timings_ms=timings_from_proto(message.timings),
        error=error_from_proto(message.error) if message.HasField("error") else None,
    )


def result_json(message: aggregator_pb2.AnalysisResult) -> str:
    """The result JSON, exactly as the system writes it to the output folder."""
    return result_from_proto(message).to_json()
