"""The age gender service over real gRPC, with real Redis and the real models."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from face_analysis import Analyzer
from face_analysis.services.convert import estimates_from_proto
from face_analysis.services.generated import (
    age_gender_pb2,
    age_gender_pb2_grpc,
    landmark_detection_pb2,
    landmark_detection_pb2_grpc,
)
from face_analysis.services.store import JobStore, api_job_id
from services_support import Services, astronaut, encode


@pytest.fixture(scope="module")
def stubs(
    channels: dict[str, grpc.Channel],
) -> tuple[landmark_detection_pb2_grpc.FaceLandmarkStub, age_gender_pb2_grpc.AgeGenderStub]:
    return (
        landmark_detection_pb2_grpc.FaceLandmarkStub(channels["face-landmark"]),
        age_gender_pb2_grpc.AgeGenderStub(channels["age-gender"]),
    )


def test_estimate_stores_the_libraries_estimates(stubs, store: JobStore, analyzer: Analyzer) -> None:  # type: ignore[no-untyped-def]
    landmark, age_gender = stubs
    data = encode(astronaut().resize((224, 224)), "PNG")
    job_id = api_job_id()
    store.put_image(job_id, data)
    assert landmark.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30).face_count == 1
    pixels = store.get_pixels(job_id)  # face landmark passed its decoded pixels on
    image = analyzer.load(data)
    assert pixels is not None and np.array_equal(pixels, image)
    reply = age_gender.Estimate(age_gender_pb2.EstimateRequest(job_id=job_id), timeout=30)
    assert reply.job_id == job_id and reply.face_count == 1
    stored = store.get_estimates(job_id)
    assert stored is not None and not stored.HasField("error")
    assert estimates_from_proto(stored) == analyzer.estimate(image, analyzer.detect(image))


def test_without_the_pixels_the_image_is_decoded_again(stubs, store: JobStore, analyzer: Analyzer) -> None:  # type: ignore[no-untyped-def]
    landmark, age_gender = stubs
    data = encode(astronaut().resize((180, 180)), quality=85)
    job_id = api_job_id()
    store.put_image(job_id, data)
    landmark.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30)
    store.client.delete(f"{store.prefix}:rgb:{job_id}")
    assert age_gender.Estimate(age_gender_pb2.EstimateRequest(job_id=job_id), timeout=30).face_count == 1
    stored = store.get_estimates(job_id)
    image = analyzer.load(data)
    assert stored is not None and estimates_from_proto(stored) == analyzer.estimate(
        image, analyzer.detect(image)
    )


def test_a_job_whose_detection_failed_has_nothing_to_estimate(stubs, store: JobStore) -> None:  # type: ignore[no-untyped-def]
    landmark, age_gender = stubs
    job_id = api_job_id()
    store.put_image(job_id, b"not an image")
    landmark.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        age_gender.Estimate(age_gender_pb2.EstimateRequest(job_id=job_id), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_job_without_detections_is_not_found(stubs, store: JobStore) -> None:  # type: ignore[no-untyped-def]
    _, age_gender = stubs
    job_id = api_job_id()
    store.put_image(job_id, encode(astronaut().resize((128, 128))))
    with pytest.raises(grpc.RpcError) as caught:
        age_gender.Estimate(age_gender_pb2.EstimateRequest(job_id=job_id), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("job_id", "status"),
    [
        ("../../x", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("a b", grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown-job", grpc.StatusCode.NOT_FOUND),
        ("x" * (3 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=["traversal", "missing", "space", "unknown", "oversized-message"],
)
def test_bad_requests_get_a_clear_status_and_the_service_stays_up(  # type: ignore[no-untyped-def]
    stubs, services: Services, job_id: str, status: grpc.StatusCode
) -> None:
    _, age_gender = stubs
    with pytest.raises(grpc.RpcError) as caught:
        age_gender.Estimate(age_gender_pb2.EstimateRequest(job_id=job_id), timeout=30)
    assert caught.value.code() == status
    services.assert_serving("age-gender")
