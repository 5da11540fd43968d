"""The job driver's attempts, against scripted stand-ins for the three services over real gRPC
(on localhost) and a real Redis: what counts as an attempt, when a job ends as an error result,
and hand-back on shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the services extra")

from face_analysis.errors import AnalysisError, ErrorCode  # noqa: E402
from face_analysis.services.common import Metrics  # noqa: E402
from face_analysis.services.driver import Clients, HandBack, JobDriver  # noqa: E402
from face_analysis.services.generated import (  # noqa: E402
    age_gender_pb2,
    age_gender_pb2_grpc,
    aggregator_pb2,
    aggregator_pb2_grpc,
    landmark_detection_pb2,
    landmark_detection_pb2_grpc,
)
from face_analysis.services.settings import Settings  # noqa: E402
from face_analysis.services.store import JobStore, QueuedJob, api_job_id  # noqa: E402
from services_support import free_port, redis_server  # noqa: E402

OK = grpc.StatusCode.OK


@dataclass
class Script:
    """Status codes the stand-in face landmark service answers with, in order (the last repeats)."""

    detect: list[Any] = field(default_factory=lambda: [OK])
    detect_calls: int = 0
    stored: list[aggregator_pb2.StoreRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Landmark(landmark_detection_pb2_grpc.FaceLandmarkServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Detect(self, request: Any, context: Any) -> landmark_detection_pb2.DetectReply:
        with self.script.lock:
            code = self.script.detect[min(self.script.detect_calls, len(self.script.detect) - 1)]
            self.script.detect_calls += 1
        if code != OK:
            context.abort(code, f"scripted {code.name}")
        return landmark_detection_pb2.DetectReply(job_id=request.job_id, face_count=0)


class _AgeGender(age_gender_pb2_grpc.AgeGenderServicer):
    def Estimate(self, request: Any, context: Any) -> age_gender_pb2.EstimateReply:
        return age_gender_pb2.EstimateReply(job_id=request.job_id)


class _Storage(aggregator_pb2_grpc.DataStorageServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    def Store(self, request: Any, context: Any) -> aggregator_pb2.StoreReply:
        self.script.stored.append(request)
        result = aggregator_pb2.AnalysisResult(job_id=request.job_id, image_id=request.image_id)
        if request.HasField("error"):
            result.error.CopyFrom(request.error)
        return aggregator_pb2.StoreReply(result=result, written=True)

    def GetResult(self, request: Any, context: Any) -> aggregator_pb2.AnalysisResult:
        return aggregator_pb2.AnalysisResult(job_id=request.job_id)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def metrics() -> Metrics:
    return Metrics("image-input")  # registered once per process (Prometheus' global registry)


@pytest.fixture
def run(
    redis_url: str, metrics: Metrics
) -> Iterator[Callable[..., tuple[aggregator_pb2.AnalysisResult, Script]]]:
    """Run one job through scripted services: run(script, prior_attempts=0, image=...) ->
    (result, script)."""
    port = free_port()
    script = Script()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    landmark_detection_pb2_grpc.add_FaceLandmarkServicer_to_server(_Landmark(script), server)
    age_gender_pb2_grpc.add_AgeGenderServicer_to_server(_AgeGender(), server)
    aggregator_pb2_grpc.add_DataStorageServicer_to_server(_Storage(script), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    address = f"127.0.0.1:{port}"
    settings = Settings.from_env(
        {
            "FACE_ANALYSIS_REDIS_URL": redis_url,
            "FACE_ANALYSIS_MAX_ATTEMPTS": "3",
            "FACE_ANALYSIS_RPC_TIMEOUT_S": "5",
            **{
                f"FACE_ANALYSIS_{name}_ADDR": address
                for name in ("FACE_LANDMARK", "AGE_GENDER", "DATA_STORAGE")
            },
        }
    )
    clients = Clients.connect(settings)
    driver = JobDriver(settings, JobStore(settings), clients, metrics)

    def go(
        codes: list[Any], prior_attempts: int = 0, image: Callable[[], bytes] = lambda: b"img"
    ) -> tuple[aggregator_pb2.AnalysisResult, Script]:
        script.detect = codes
        job = QueuedJob(api_job_id(), "x.jpg", "x.json", "")
        result = driver.run(job, image, time.monotonic() + 30, prior_attempts=prior_attempts)
        return result, script

    go.driver = driver  # type: ignore[attr-defined]
    yield go
    clients.close()
    server.stop(0)


def test_a_job_that_succeeds_on_its_last_attempt_is_a_result(run: Any) -> None:
    result, script = run([grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL, OK])
    assert not result.HasField("error") and script.detect_calls == 3
    assert not script.stored[-1].HasField("error") and script.stored[-1].timings.HasField("total")


def test_a_job_failing_every_attempt_ends_as_an_internal_error_result(run: Any) -> None:
    result, script = run([grpc.StatusCode.INTERNAL])
    assert script.detect_calls == 3
    assert result.error.code == "internal_error"
    assert "failed 3 times" in result.error.message and "INTERNAL: scripted INTERNAL" in result.error.message


def test_attempts_of_earlier_deliveries_count(run: Any) -> None:
    result, script = run([grpc.StatusCode.INTERNAL], prior_attempts=2)
    assert script.detect_calls == 1 and "failed 3 times" in result.error.message
    result, script = run([OK], prior_attempts=3)  # a job delivered too often ends at once
    assert script.detect_calls == 1 and result.error.code == "internal_error"


def test_an_invalid_request_is_not_retried(run: Any) -> None:
    result, script = run([grpc.StatusCode.INVALID_ARGUMENT, OK])
    assert script.detect_calls == 1 and "INVALID_ARGUMENT" in result.error.message


def test_an_unavailable_service_is_waited_for_without_counting_an_attempt(run: Any) -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    result, script = run([unavailable] * 4 + [OK], prior_attempts=2)  # one attempt left
    assert not result.HasField("error") and script.detect_calls == 5


def test_an_unreadable_input_ends_as_its_own_error_at_once(redis_url: str, run: Any) -> None:
    def unreadable() -> bytes:
        raise AnalysisError(ErrorCode.UNREADABLE_FILE, "cannot read x.jpg: gone")

    result, script = run([OK], image=unreadable)
    assert script.detect_calls == 0 and result.error.code == "unreadable_file"


def test_a_job_is_handed_back_when_the_grace_period_ends(run: Any) -> None:
    run.driver.abandon.set()
    with pytest.raises(HandBack):
        run([grpc.StatusCode.UNAVAILABLE])
