"""Library types to protobuf messages and back, without loss.

Detections and estimates cross Redis as protobuf doubles: every float the library produces
(float32 boxes, scores and landmarks, float64 estimates) survives the trip exactly, so the
services' results equal the embedded mode's.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..attributes import AgeGender
from ..detection import Detection
from ..errors import ErrorCode
from ..results import LANDMARK_NAMES, ResultError
from .generated import age_gender_pb2, aggregator_pb2, common_pb2, landmark_detection_pb2

__all__ = [
    "detections_from_proto",
    "detections_to_proto",
    "error_from_proto",
    "error_to_proto",
    "estimates_from_proto",
    "estimates_to_proto",
    "result_from_json",
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


def result_from_json(job_id: str, text: str) -> aggregator_pb2.AnalysisResult:
    """The API's view of a result JSON (which it carries verbatim in `json`)."""
    data: dict[str, Any] = json.loads(text)
    faces = []
    for face in data.get("faces", []):
        x1, y1, x2, y2 = face["bbox"]
        landmarks = face.get("landmarks") or {}
        faces.append(
            aggregator_pb2.FaceResult(
                bbox=common_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
                confidence=face["confidence"],
                landmarks=[
                    common_pb2.Point(x=landmarks[n][0], y=landmarks[n][1])
                    for n in LANDMARK_NAMES
                    if n in landmarks
                ],
                age=face["age"],
                age_years=face["age_years"],
                age_confidence=face["age_confidence"],
                gender=face["gender"],
                gender_confidence=face["gender_confidence"],
            )
        )
    error = data.get("error")
    return aggregator_pb2.AnalysisResult(
        job_id=job_id,
        image_id=data.get("image_id", ""),
        width=data.get("width") or 0,
        height=data.get("height") or 0,
        faces=faces,
        error=None
        if error is None
        else common_pb2.AnalysisError(code=error["code"], message=error["message"]),
        processing_time=data.get("processing_time", ""),
        json=text,
    )
