"""The job driver: one job through face landmark -> age gender -> data storage, over gRPC.

Each call has a deadline (the job's, and `rpc_timeout_s` per call); a service that is down or
busy (UNAVAILABLE, RESOURCE_EXHAUSTED) is waited for with backoff without counting an attempt;
any other failure counts one, and the job is tried again from the start (its intermediates may
be gone). After `max_attempts` or at the job's deadline the job ends as an `internal_error`
result; an image that cannot be read ends as its own error. Redis is reached through the
store, whose client follows the one retry policy (`store.redis_client`).

Usage::

    driver = JobDriver(settings, store, Clients.connect(settings), metrics)
    result = driver.run(job, read_image, deadline=time.monotonic() + 300)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from ..errors import AnalysisError, ErrorCode
from ..results import ResultError
from .common import Metrics, log
from .convert import error_to_proto
from .generated import (
    age_gender_pb2,
    age_gender_pb2_grpc,
    aggregator_pb2,
    aggregator_pb2_grpc,
    common_pb2,
    landmark_detection_pb2,
    landmark_detection_pb2_grpc,
)
from .settings import Settings
from .store import JobStore, QueuedJob

__all__ = ["Clients", "HandBack", "JobDriver", "JobFailed", "grpc_status"]

# Worth retrying without counting an attempt: the service is down or busy (e.g. restarting).
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Our intermediates vanished (TTL, flushed Redis): start the job again.
_LOST = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})
_BACKOFF_START_S, _BACKOFF_MAX_S = 0.1, 2.0
_Reply = TypeVar("_Reply")


class HandBack(Exception):
    """The service is stopping and the grace period is over: requeue the job."""


class JobFailed(Exception):
    """The job could not even be ended with an error result (data storage unreachable)."""


class _Deadline(Exception):
    """The job's own deadline passed before a call could be made."""


@dataclass
class Clients:
    """gRPC stubs of the three services a job goes through."""

    landmark: landmark_detection_pb2_grpc.FaceLandmarkStub
    age_gender: age_gender_pb2_grpc.AgeGenderStub
    storage: aggregator_pb2_grpc.DataStorageStub
    channels: list[grpc.Channel]

    @classmethod
    def connect(cls, settings: Settings) -> Clients:
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # A restarted service is back within a second, not after gRPC's default backoff (up to 2 min).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # Spread calls over every replica the service name resolves to (Compose --scale).
            ("grpc.lb_policy_name", "round_robin"),
        ]
        channels = [
            grpc.insecure_channel(settings.address(name), options=options)
            for name in ("face-landmark", "age-gender", "data-storage")
        ]
        return cls(
            landmark_detection_pb2_grpc.FaceLandmarkStub(channels[0]),
            age_gender_pb2_grpc.AgeGenderStub(channels[1]),
            aggregator_pb2_grpc.DataStorageStub(channels[2]),
            channels,
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def grpc_status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call (UNKNOWN when the error carries none)."""
    if isinstance(exc, grpc.Call):
        return exc.code(), str(exc.details())
    return grpc.StatusCode.UNKNOWN, str(exc)


class JobDriver:
    """Runs one job through face landmark -> age gender -> data storage (thread-safe)."""

    def __init__(self, settings: Settings, store: JobStore, clients: Clients, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.metrics = metrics
        self.abandon = threading.Event()  # set when the shutdown grace period is over

    def run(
        self, job: QueuedJob, image: Callable[[], bytes], deadline: float, prior_attempts: int = 0
    ) -> aggregator_pb2.AnalysisResult:
        """The job's result (possibly an error result); raises HandBack or JobFailed, or a
        `redis.RedisError` when Redis stays unreachable (the job stays queued).

        `image` gives the image bytes, raising AnalysisError when they cannot be had;
        `prior_attempts` are those of earlier deliveries of the job (a replica that crashed).
        """
        started_at = time.time()
        clock = time.perf_counter()
        attempts = prior_attempts
        last_problem = "no attempt finished"
        while True:
            if attempts >= self.settings.max_attempts or time.monotonic() >= deadline:
                why = "took too long" if time.monotonic() >= deadline else f"failed {attempts} times"
                error = ResultError(ErrorCode.INTERNAL_ERROR, f"the job {why}: {last_problem}")
                return self._give_up(job, started_at, error)
            try:
                return self._attempt(job, image, started_at, clock, deadline)
            except AnalysisError as exc:  # the input itself cannot be read
                return self._give_up(job, started_at, ResultError.of(exc))
            except _Deadline as exc:
                error = ResultError(ErrorCode.INTERNAL_ERROR, f"the job took too long: {exc}")
                return self._give_up(job, started_at, error)
            except grpc.RpcError as exc:
                code, details = grpc_status(exc)
                last_problem = f"{code.name}: {details}"
                # Retrying cannot help a request refused as invalid.
                attempts = (
                    self.settings.max_attempts if code == grpc.StatusCode.INVALID_ARGUMENT else attempts + 1
                )
                log(
                    logging.WARNING,
                    "job attempt failed",
                    job_id=job.job_id,
                    attempt=attempts,
                    error=last_problem,
                )
                self._sleep(_BACKOFF_START_S * 2 ** min(attempts, 4), deadline)

    def _attempt(
        self, job: QueuedJob, image: Callable[[], bytes], started_at: float, clock: float, deadline: float
    ) -> aggregator_pb2.AnalysisResult:
        job_id = job.job_id
        if not self.store.has_image(job_id):
            self.store.put_image(job_id, image())
        detected = self._call(
            "detect",
            self.clients.landmark.Detect,
            landmark_detection_pb2.DetectRequest(job_id=job_id),
            deadline,
        )
        if not detected.HasField("error") and detected.face_count > 0:
            self._call(
                "age_gender",
                self.clients.age_gender.Estimate,
                age_gender_pb2.EstimateRequest(job_id=job_id),
                deadline,
            )
        timings = common_pb2.Timings(total=(time.perf_counter() - clock) * 1000)
        reply = self._call(
            "store", self.clients.storage.Store, _store_request(job, started_at, timings=timings), deadline
        )
        self.metrics.image(not reply.result.HasField("error"), len(reply.result.faces))
        if reply.result.HasField("error"):
            self.metrics.error(reply.result.error.code)
        return reply.result

    def _give_up(
        self, job: QueuedJob, started_at: float, error: ResultError
    ) -> aggregator_pb2.AnalysisResult:
        """End the job with an error result; retried while data storage is unreachable."""
        log(
            logging.WARNING,
            "job ends with an error",
            job_id=job.job_id,
            code=error.code.value,
            error=error.message,
        )
        request = _store_request(job, started_at, error=error_to_proto(error))
        deadline = time.monotonic() + self.settings.rpc_timeout_s * 2
        try:
            reply = self._call("store", self.clients.storage.Store, request, deadline)
        except (grpc.RpcError, _Deadline) as exc:
            raise JobFailed(f"cannot store the error result of {job.job_id}: {exc}") from None
        self.metrics.image(False)
        self.metrics.error(error.code.value)
        return reply.result

    def _call(self, stage: str, method: Callable[..., _Reply], request: object, deadline: float) -> _Reply:
        """One RPC with a deadline; waits out an unavailable service with backoff until `deadline`."""
        backoff = _BACKOFF_START_S
        while True:
            if self.abandon.is_set():
                raise HandBack
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.metrics.error("DEADLINE_EXCEEDED")
                raise _Deadline(f"the job's deadline passed before {stage}")
            clock = time.perf_counter()
            try:
                reply = method(
                    request, timeout=min(self.settings.rpc_timeout_s, remaining), wait_for_ready=True
                )
            except grpc.RpcError as exc:
                code, _ = grpc_status(exc)
                self.metrics.retry(stage, code.name)
                if code in _TRANSIENT:
                    self._sleep(backoff, deadline)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                    continue
                if code in _LOST:
                    log(logging.INFO, "intermediates lost, starting the job again", stage=stage)
                raise
            self.metrics.stage(stage, time.perf_counter() - clock)
            return reply

    def _sleep(self, seconds: float, deadline: float) -> None:
        if self.abandon.wait(max(0.0, min(seconds, deadline - time.monotonic()))):
            raise HandBack


def _store_request(job: QueuedJob, started_at: float, **fields: Any) -> aggregator_pb2.StoreRequest:
    """Data storage's request for `job`, with its result's `fields` (timings or error)."""
    return aggregator_pb2.StoreRequest(
        job_id=job.job_id,
        image_id=job.image_id,
        output_name=job.output_name,
        source_name=job.source_name,
        started_at=started_at,
        **fields,
    )
