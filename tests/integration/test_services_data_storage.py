"""The data storage service over real gRPC: the embedded mode's JSON, written once, atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from face_analysis import Analyzer
from face_analysis.services.convert import result_json
from face_analysis.services.generated import (
    age_gender_pb2,
    age_gender_pb2_grpc,
    aggregator_pb2,
    aggregator_pb2_grpc,
    common_pb2,
    landmark_detection_pb2,
    landmark_detection_pb2_grpc,
)
from face_analysis.services.store import JobStore, api_job_id
from services_support import Services, astronaut, comparable, encode


@pytest.fixture(scope="module")
def storage(channels: dict[str, grpc.Channel]) -> aggregator_pb2_grpc.DataStorageStub:
    return aggregator_pb2_grpc.DataStorageStub(channels["data-storage"])


def _run_stages(channels: dict[str, grpc.Channel], store: JobStore, data: bytes) -> str:
    job_id = api_job_id()
    store.put_image(job_id, data)
    landmark = landmark_detection_pb2_grpc.FaceLandmarkStub(channels["face-landmark"])
    reply = landmark.Detect(landmark_detection_pb2.DetectRequest(job_id=job_id), timeout=30)
    if reply.face_count:
        age_gender = age_gender_pb2_grpc.AgeGenderStub(channels["age-gender"])
        age_gender.Estimate(age_gender_pb2.EstimateRequest(job_id=job_id), timeout=30)
    return job_id


def test_store_writes_the_embedded_modes_json_once(  # type: ignore[no-untyped-def]
    channels, storage, store: JobStore, output_dir: Path, analyzer: Analyzer
) -> None:
    data = encode(astronaut().resize((240, 240)))
    job_id = _run_stages(channels, store, data)
    request = aggregator_pb2.StoreRequest(
        job_id=job_id, image_id="portrait.jpg", output_name="portrait.json", started_at=time.time()
    )
    reply = storage.Store(request, timeout=30)
    path = output_dir / "portrait.json"
    text = path.read_text(encoding="utf-8")
    assert reply.written and result_json(reply.result) == text
    assert comparable(text) == comparable(analyzer.analyze(data, image_id="portrait.jpg").to_json())
    assert reply.result.image_id == "portrait.jpg" and len(reply.result.faces) == 1
    face = json.loads(text)["faces"][0]
    assert reply.result.faces[0].gender == face["gender"] and reply.result.faces[0].age == face["age"]
    # The intermediates are gone; the result is queryable by id.
    assert store.get_image(job_id) is None and store.get_detections(job_id) is None
    assert store.get_pixels(job_id) is None and store.get_estimates(job_id) is None
    assert result_json(storage.GetResult(aggregator_pb2.GetResultRequest(job_id=job_id), timeout=30)) == text
    # Delivered again (e.g. after a crash): the file is up to date and is not written again.
    mtime = path.stat().st_mtime_ns
    again = storage.Store(request, timeout=30)
    assert not again.written and result_json(again.result) == text and path.stat().st_mtime_ns == mtime


def test_store_with_an_error_writes_an_error_result(storage, output_dir: Path) -> None:  # type: ignore[no-untyped-def]
    request = aggregator_pb2.StoreRequest(
        job_id=api_job_id(),
        image_id="gave-up.jpg",
        output_name="gave-up.json",
        error=common_pb2.AnalysisError(code="internal_error", message="the job failed 3 times"),
    )
    reply = storage.Store(request, timeout=30)
    result = json.loads((output_dir / "gave-up.json").read_text(encoding="utf-8"))
    assert result["faces"] == [] and result["error"] == {
        "code": "internal_error",
        "message": "the job failed 3 times",
    }
    assert reply.result.error.code == "internal_error"


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"job_id": "../../x"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"job_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"image_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"output_name": "../../escape.json"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"output_name": "/tmp/escape.json"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"output_name": "result.txt"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"output_name": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"source_name": "../../etc/passwd"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"error": common_pb2.AnalysisError(code="no_such_code")}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"job_id": "never-analysed"}, grpc.StatusCode.NOT_FOUND),
        ({"image_id": "x" * (3 * 1024 * 1024)}, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=[
        "job-traversal",
        "job-missing",
        "image-id-missing",
        "output-traversal",
        "output-absolute",
        "output-not-json",
        "output-missing",
        "source-traversal",
        "unknown-error-code",
        "no-intermediates",
        "oversized-message",
    ],
)
def test_bad_requests_get_a_clear_status_and_the_service_stays_up(  # type: ignore[no-untyped-def]
    storage, services: Services, output_dir: Path, fields: dict[str, object], status: grpc.StatusCode
) -> None:
    values: dict[str, object] = {"job_id": "job-1", "image_id": "a.jpg", "output_name": "bad-request.json"}
    values.update(fields)
    with pytest.raises(grpc.RpcError) as caught:
        storage.Store(aggregator_pb2.StoreRequest(**values), timeout=30)  # type: ignore[arg-type]
    assert caught.value.code() == status
    assert not (output_dir / "bad-request.json").exists()
    assert not (output_dir.parent / "escape.json").exists()
    services.assert_serving("data-storage")


@pytest.mark.parametrize(
    ("job_id", "status"),
    [
        ("../../x", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("nope", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_get_result_of_a_bad_or_unknown_id(storage, job_id: str, status: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        storage.GetResult(aggregator_pb2.GetResultRequest(job_id=job_id), timeout=30)
    assert caught.value.code() == status
