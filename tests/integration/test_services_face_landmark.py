"""The face landmark service over real gRPC, with real Redis and the real models."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from face_analysis import Analyzer
from face_analysis.services.convert import detections_from_proto
from face_analysis.services.generated import landmark_detection_pb2, landmark_detection_pb2_grpc
from face_analysis.services.store import JobStore, api_job_id
from services_support import Services, astronaut, encode


@pytest.fixture(scope="module")
def stub(channels: dict[str, grpc.Channel]) -> landmark_detection_pb2_grpc.FaceLandmarkStub:
    return landmark_detection_pb2_grpc.FaceLandmarkStub(channels["face-landmark"])


def test_detect_stores_the_libraries_detections(stub, store: JobStore, analyzer: Analyzer) -> None:  # type: ignore[no-untyped-def]
    data = encode(astronaut().resize((256, 256)))
    job_id = api_job_id()
    store.put_image(job_id, data)
    reply = stub.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30)
    assert reply.job_id == job_id and reply.face_count == 1 and not reply.HasField("error")
    stored = store.get_detections(job_id)
    assert stored is not None and (stored.width, stored.height) == (256, 256)
    expected = analyzer.detect(analyzer.load(data))
    got = detections_from_proto(stored)
    assert [d.box for d in got] == [d.box for d in expected]
    assert [d.score for d in got] == [d.score for d in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.landmarks is not None and b.landmarks is not None
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "empty_file"), (b"plain text, not a picture" * 3, "not_an_image")],
)
def test_an_undecodable_image_is_an_analysis_error_not_an_rpc_error(  # type: ignore[no-untyped-def]
    stub, store: JobStore, data: bytes, code: str
) -> None:
    job_id = api_job_id()
    store.put_image(job_id, data)
    reply = stub.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30)
    assert reply.face_count == 0 and reply.error.code == code
    stored = store.get_detections(job_id)
    assert stored is not None and stored.error.code == code and stored.width == 0


@pytest.mark.parametrize(
    ("job_id", "status"),
    [
        ("../../x", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("a" * 65, grpc.StatusCode.INVALID_ARGUMENT),
        ("/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown-job", grpc.StatusCode.NOT_FOUND),
        ("x" * (3 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=["traversal", "missing", "too-long", "absolute", "unknown", "oversized-message"],
)
def test_bad_requests_get_a_clear_status_and_the_service_stays_up(  # type: ignore[no-untyped-def]
    stub, services: Services, job_id: str, status: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30)
    assert caught.value.code() == status
    services.assert_serving("face-landmark")
