"""The image input service's public API over real gRPC, through the real stack of services."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest

from face_analysis import Analyzer
from face_analysis.services.convert import result_json
from face_analysis.services.generated import aggregator_pb2, image_input_pb2, image_input_pb2_grpc
from services_support import (
    Services,
    address,
    astronaut,
    comparable,
    encode,
    free_port,
    metrics_url,
    wait_for,
    wait_healthy,
)


@pytest.fixture(scope="module")
def api(channels: dict[str, grpc.Channel]) -> image_input_pb2_grpc.ImageInputStub:
    return image_input_pb2_grpc.ImageInputStub(channels["image-input"])


def test_analyze_returns_the_embedded_modes_result(api, analyzer: Analyzer) -> None:  # type: ignore[no-untyped-def]
    data = encode(astronaut().resize((200, 200)), quality=88)
    result = api.Analyze(image_input_pb2.AnalyzeRequest(image=data, name="me.jpg"), timeout=60)
    assert comparable(result_json(result)) == comparable(analyzer.analyze(data, image_id="me.jpg").to_json())
    assert result.image_id == "me.jpg" and len(result.faces) == 1 and not result.HasField("error")
    assert result.width == 200 and result.faces[0].gender in ("Male", "Female")


def test_an_image_that_fails_to_decode_fully_gets_an_error_result(api) -> None:  # type: ignore[no-untyped-def]
    data = encode(astronaut().resize((200, 200)))
    result = api.Analyze(
        image_input_pb2.AnalyzeRequest(image=data[: len(data) // 2], name="cut.jpg"), timeout=60
    )
    assert (
        result.error.code == "truncated_image"
        and json.loads(result_json(result))["error"]["code"] == "truncated_image"
    )


def test_submit_then_get_result(api, analyzer: Analyzer) -> None:  # type: ignore[no-untyped-def]
    data = encode(astronaut().resize((160, 160)), "PNG")
    job_id = api.Submit(image_input_pb2.SubmitRequest(image=data, name="queued.png"), timeout=30).job_id
    seen = []

    def done() -> bool:
        seen.append(api.GetResult(aggregator_pb2.GetResultRequest(job_id=job_id), timeout=30))
        assert seen[-1].state in (image_input_pb2.JobStatus.PENDING, image_input_pb2.JobStatus.DONE)
        return bool(seen[-1].state == image_input_pb2.JobStatus.DONE)

    wait_for(done, 60, "the submitted job to be done")
    status = seen[-1]
    assert comparable(result_json(status.result)) == comparable(
        analyzer.analyze(data, image_id="queued.png").to_json()
    )


@pytest.mark.parametrize(
    ("image", "name", "status"),
    [
        (b"", "a.jpg", grpc.StatusCode.INVALID_ARGUMENT),
        (b"definitely not an image" * 4, "a.jpg", grpc.StatusCode.INVALID_ARGUMENT),
        (None, "", grpc.StatusCode.INVALID_ARGUMENT),
        (None, "../../x", grpc.StatusCode.INVALID_ARGUMENT),
        (None, "a\x00b.jpg", grpc.StatusCode.INVALID_ARGUMENT),
        (b"\xff" * (3 * 1024 * 1024), "big.jpg", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
    ids=[
        "empty-bytes",
        "non-image-bytes",
        "missing-name",
        "name-traversal",
        "name-control-char",
        "oversized",
    ],
)
@pytest.mark.parametrize("method", ["Analyze", "Submit"])
def test_bad_requests_get_a_clear_status_and_the_service_stays_up(  # type: ignore[no-untyped-def]
    api, services: Services, method: str, image: bytes | None, name: str, status: grpc.StatusCode
) -> None:
    data = encode(astronaut().resize((64, 64))) if image is None else image
    request_type = image_input_pb2.AnalyzeRequest if method == "Analyze" else image_input_pb2.SubmitRequest
    with pytest.raises(grpc.RpcError) as caught:
        getattr(api, method)(request_type(image=data, name=name), timeout=30)
    assert caught.value.code() == status
    services.assert_serving("image-input")


@pytest.mark.parametrize(
    ("job_id", "status"),
    [
        ("../../x", grpc.StatusCode.INVALID_ARGUMENT),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_get_result_of_a_bad_or_unknown_id(api, job_id: str, status: grpc.StatusCode) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        api.GetResult(aggregator_pb2.GetResultRequest(job_id=job_id), timeout=30)
    assert caught.value.code() == status


@pytest.mark.parametrize("service", ["image-input", "face-landmark", "age-gender", "data-storage"])
def test_every_service_is_healthy_and_exports_metrics(services: Services, service: str) -> None:
    wait_healthy(address(services.env, service), 5)
    with urllib.request.urlopen(metrics_url(services.env, service), timeout=5) as response:
        text = response.read().decode()
    for metric in ("face_analysis_images_total", "face_analysis_stage_seconds", "face_analysis_errors_total"):
        assert metric in text


def test_a_job_that_keeps_failing_ends_as_an_error_result(services: Services, tmp_path: Path) -> None:
    """An image input replica whose Redis keys the other services never see (a wrong
    FACE_ANALYSIS_KEY_PREFIX): every attempt fails, and after MAX_ATTEMPTS the job ends as an
    `internal_error` result instead of looping."""
    env = dict(services.env)
    env.update(
        {
            "FACE_ANALYSIS_KEY_PREFIX": "elsewhere",
            "FACE_ANALYSIS_MAX_ATTEMPTS": "3",
            "FACE_ANALYSIS_IMAGE_INPUT_PORT": str(free_port()),
            "FACE_ANALYSIS_IMAGE_INPUT_METRICS_PORT": "0",
        }
    )
    replica = Services(env, tmp_path)
    try:
        replica.start("image-input")
        with grpc.insecure_channel(address(env, "image-input")) as channel:
            api = image_input_pb2_grpc.ImageInputStub(channel)
            data = encode(astronaut().resize((128, 128)))
            result = api.Analyze(image_input_pb2.AnalyzeRequest(image=data, name="doomed.jpg"), timeout=60)
        assert result.error.code == "internal_error"
        assert "failed 3 times" in result.error.message and "NOT_FOUND" in result.error.message
        assert json.loads(result_json(result))["faces"] == []
    finally:
        replica.stop()
