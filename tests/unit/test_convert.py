"""Results, stamps, detections and estimates through the services' protobuf messages and back."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc", reason="the services extra")

from face_analysis.attributes._types import AgeGender
from face_analysis.detection._types import Detection
from face_analysis.errors import ErrorCode
from face_analysis.models import MODELS, ModelFile
from face_analysis.results import Face, ImageResult, ResultError, Stamp, make_result
from face_analysis.services import convert
from face_analysis.services.generated import landmark_detection_pb2
from face_analysis.settings import AnalyzerConfig, RoboflowSettings
from face_analysis.steps import detector_stamp, estimator_stamp

ROBOFLOW = RoboflowSettings(model="faces", version=3)
CONFIGS = [
    AnalyzerConfig(),
    AnalyzerConfig(detect_size=None, min_confidence=0.05, preset="accurate", precision="fp32"),
    AnalyzerConfig(detector="roboflow", roboflow=ROBOFLOW, runtime="openvino", precision="int8"),
]
FILES = {name: ModelFile(Path(f"/m/{spec.filename}"), spec.sha256) for name, spec in MODELS.items()}


def _face(landmarks: bool) -> Face:
    points = {"left_eye": (10.25, 11.5), "right_eye": (20.0, 11.0), "nose": (15.125, 16.0)}
    points |= {"mouth_left": (12.0, 20.0), "mouth_right": (18.0, 20.5)}
    return Face(
        bbox=(3, 4, 30, 40),
        confidence=0.912345678,
        landmarks=points if landmarks else None,
        age="20-30",
        age_years=26.43219,
        age_confidence=0.38031234,
        gender="Female",
        gender_confidence=0.75029876,
    )


def _stamp(config: AnalyzerConfig) -> Stamp:
    return detector_stamp(config, {} if config.detector == "roboflow" else FILES).merge(
        estimator_stamp(FILES)
    )


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "native-accurate-fp32", "roboflow"])
def test_a_stamp_survives_protobuf_in_order(config: AnalyzerConfig) -> None:
    stamp = _stamp(config)
    back = convert.stamp_from_proto(convert.stamp_to_proto(stamp))
    assert list(back.models.items()) == list(stamp.models.items())
    assert list(back.settings.items()) == list(stamp.settings.items())
    assert list(stamp.models) == ["centerface", "age", "gender", "detector"]


@pytest.mark.parametrize(
    "result",
    [
        make_result(
            "photo.jpg",
            (_face(True), _face(False)),
            (640, 480),
            datetime(2026, 12, 3, 17, 20, 26, 190440),
            {"decode": 5.612, "detect": 18.7, "age_gender": 1.86, "total": 26.19},
            _stamp(CONFIGS[0]),
        ),
        make_result(
            "sub/cut.jpg",
            (),
            None,
            datetime(2026, 12, 3, 17, 20, 26),
            {"total": 0.4},
            _stamp(CONFIGS[2]),
            ResultError(ErrorCode.TRUNCATED_IMAGE, "the image data is truncated"),
        ),
    ],
    ids=["faces", "error"],
)
def test_a_result_survives_protobuf_as_the_same_json(result: ImageResult) -> None:
    message = convert.result_to_proto("job-1", result)
    assert message.job_id == "job-1" and message.image_id == result.image_id
    assert convert.result_json(message) == result.to_json()
    assert ImageResult.from_json(result.to_json()).to_json() == result.to_json()


def test_detections_and_estimates_survive_exactly() -> None:
    rng = np.random.default_rng(3)
    points = rng.uniform(0, 500, (5, 2)).astype(np.float32)
    x1, y1, x2, y2 = map(float, rng.uniform(0, 500, 4).astype(np.float32))
    detections = [
        Detection(box=(x1, y1, x2, y2), score=0.7, landmarks=points),
        Detection(box=(1.0, 2.0, 3.0, 4.0), score=0.5, landmarks=None),
    ]
    message = landmark_detection_pb2.FaceDetections(faces=convert.detections_to_proto(detections))
    back = convert.detections_from_proto(message)
    assert [d.box for d in back] == [d.box for d in detections] and back[1].landmarks is None
    assert back[0].landmarks is not None and np.array_equal(back[0].landmarks, points)
    estimates = [AgeGender(26.4321987, "20-30", 0.38, "Female", 0.750298)]
    from face_analysis.services.generated import age_gender_pb2

    again = convert.estimates_from_proto(
        age_gender_pb2.AgeGenderEstimates(estimates=convert.estimates_to_proto(estimates))
    )
    assert again == estimates


def test_timings_merge_in_the_results_order() -> None:
    from face_analysis.services.generated import common_pb2

    merged = common_pb2.Timings()
    for part in (common_pb2.Timings(total=9.0), common_pb2.Timings(decode=1.0, detect=2.0)):
        merged.MergeFrom(part)
    merged.MergeFrom(common_pb2.Timings(age_gender=3.0))
    assert list(convert.timings_from_proto(merged).items()) == [
        ("decode", 1.0),
        ("detect", 2.0),
        ("age_gender", 3.0),
        ("total", 9.0),
    ]
