"""The image input service: finds images, queues them, drives each job through the other three.

- Watches the input folder: a file is queued once its size and mtime held still for one poll
  (never read half-written), once per version (its job id derives from path, size and mtime).
  On start, and every `rescan_interval_s` or when Redis lost everything, every input without
  an up-to-date result that is not in the queue is queued again: the folders are the truth.
- Drivers (`max_in_flight` threads) read jobs from the Redis stream's consumer group, put the
  image bytes in Redis, call face landmark -> age gender -> data storage with deadlines and
  retries with backoff, and acknowledge a job only after data storage has written its JSON.
  A job that keeps failing ends as an `internal_error` result after `max_attempts`; jobs of a
  crashed replica are taken over (XAUTOCLAIM) after `claim_idle_s`.
- Serves the public API (image_input.proto): Submit, GetResult, Analyze.
- On SIGTERM: stops queueing and taking jobs, lets jobs in flight finish within the grace
  period, hands back (requeues) the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import redis

from ..batch import Job, PlanError, is_up_to_date, plan_jobs
from ..errors import AnalysisError, ErrorCode
from ..imaging import DecodeLimits, probe_image, read_image_file
from ..results import ResultError
from .common import Metrics, job_id_problem, log, name_problem, redis_unavailable, reject_invalid, run_server
from .convert import error_to_proto
from .data_storage import API_RESULTS_FOLDER
from .generated import (
    age_gender_pb2,
    age_gender_pb2_grpc,
    aggregator_pb2,
    aggregator_pb2_grpc,
    image_input_pb2,
    image_input_pb2_grpc,
    landmark_detection_pb2,
    landmark_detection_pb2_grpc,
)
from .settings import Settings, SettingsError
from .store import JobStore, QueuedJob, StreamEntry, api_job_id, folder_job_id

__all__ = ["FolderWatcher", "ImageInputService", "JobDriver", "serve"]

SERVICE_NAME = "faceanalysis.v1.ImageInput"

# Worth retrying without counting an attempt: the service is down or busy (e.g. restarting).
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Our intermediates vanished (TTL, flushed Redis): start the job again.
_LOST = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})
_BACKOFF_START_S, _BACKOFF_MAX_S = 0.1, 2.0
_T = TypeVar("_T")
_Reply = TypeVar("_Reply")


class HandBack(Exception):
    """The service is stopping and the grace period is over: requeue the job."""


class JobFailed(Exception):
    """The job could not even be ended with an error result (data storage unreachable)."""


@dataclass
class _Clients:
    landmark: landmark_detection_pb2_grpc.FaceLandmarkStub
    age_gender: age_gender_pb2_grpc.AgeGenderStub
    storage: aggregator_pb2_grpc.DataStorageStub
    channels: list[grpc.Channel]

    @classmethod
    def connect(cls, settings: Settings) -> _Clients:
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


class JobDriver:
    """Runs one job through face landmark -> age gender -> data storage (thread-safe)."""

    def __init__(self, settings: Settings, store: JobStore, clients: _Clients, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients
        self.metrics = metrics
        self.abandon = threading.Event()  # set when the shutdown grace period is over

    def run(
        self, job: QueuedJob, image: Callable[[], bytes], deadline: float, prior_attempts: int = 0
    ) -> aggregator_pb2.AnalysisResult:
        """The job's result (possibly an error result); raises HandBack or JobFailed.

        `image` gives the image bytes, raising AnalysisError when they cannot be had.
        """
        started_at = time.time()
        clock = time.perf_counter()
        attempts = prior_attempts
        last_problem = "no attempt finished"
        while True:
            if attempts >= self.settings.max_attempts or time.monotonic() >= deadline:
                why = "took too long" if time.monotonic() >= deadline else f"failed {attempts} times"
                return self._give_up(
                    job, started_at, ResultError(ErrorCode.INTERNAL_ERROR, f"the job {why}: {last_problem}")
                )
            try:
                return self._attempt(job, image, started_at, clock, deadline)
            except AnalysisError as exc:  # the input itself cannot be read
                return self._give_up(job, started_at, ResultError.of(exc))
            except _Deadline as exc:
                error = ResultError(ErrorCode.INTERNAL_ERROR, f"the job took too long: {exc}")
                return self._give_up(job, started_at, error)
            except grpc.RpcError as exc:
                code, details = _status(exc)
                last_problem = f"{code.name}: {details}"
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    attempts = self.settings.max_attempts  # retrying cannot help
                else:
                    attempts += 1
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
        if not self._redis(lambda: self.store.has_image(job_id), deadline):
            data = image()
            self._redis(lambda: self.store.put_image(job_id, data), deadline)
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
        request = _store_request(job, started_at, timings_ms={"total": (time.perf_counter() - clock) * 1000})
        reply = self._call("store", self.clients.storage.Store, request, deadline)
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
        except grpc.RpcError as exc:
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
                code, _ = _status(exc)
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

    def _redis(self, operation: Callable[[], _T], deadline: float) -> _T:
        """A Redis operation, retried with backoff while Redis is unreachable."""
        backoff = _BACKOFF_START_S
        while True:
            if self.abandon.is_set():
                raise HandBack
            try:
                return operation()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + backoff >= deadline:
                    raise _Deadline(f"redis unreachable: {exc}") from None
                log(logging.WARNING, "redis unreachable, retrying", error=str(exc))
                self._sleep(backoff, deadline)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _sleep(self, seconds: float, deadline: float) -> None:
        if self.abandon.wait(max(0.0, min(seconds, deadline - time.monotonic()))):
            raise HandBack


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call (UNKNOWN when the error carries none)."""
    if isinstance(exc, grpc.Call):
        return exc.code(), str(exc.details())
    return grpc.StatusCode.UNKNOWN, str(exc)


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


class _Deadline(Exception):
    """The job's own deadline passed before a call could be made."""


class FolderWatcher:
    """Queues every stable input of the input folder that has no up-to-date result."""

    def __init__(
        self, settings: Settings, store: JobStore, metrics: Metrics, input_dir: Path, output_dir: Path
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.input_dir = input_dir.resolve()
        self.output_dir = output_dir.resolve()
        self._seen: dict[Path, tuple[int, int]] = {}  # last poll's (size, mtime_ns)
        self._queued: dict[Path, str] = {}  # job id we queued or found done, per input
        self._next_rescan = 0.0
        self._last_listing: dict[str, tuple[int, int]] = {}
        self._undecided = True

    def _listing(self) -> dict[str, tuple[int, int]]:
        """Name -> (size, mtime_ns) of the folder's visible files: a cheap change detector."""
        found: dict[str, tuple[int, int]] = {}
        try:
            with os.scandir(self.input_dir) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            found[entry.name] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            pass
        return found

    def poll(self) -> int:
        """One look at the folder; returns how many inputs were queued."""
        now = time.monotonic()
        if now >= self._next_rescan or self.store.lost_everything():
            if self._next_rescan:
                log(logging.INFO, "rescanning the input folder")
            self.store.ensure_group()
            self._queued.clear()
            self._last_listing = {}
            self._next_rescan = now + self.settings.rescan_interval_s
        listing = self._listing()
        if listing == self._last_listing and not self._undecided and self._queued:
            return 0  # nothing changed since every input was decided: skip the planning
        self._last_listing = listing
        try:
            jobs = plan_jobs([self.input_dir], self.output_dir)
        except (PlanError, OSError) as exc:
            log(logging.ERROR, "cannot list the input folder", error=str(exc))
            return 0
        seen: dict[Path, tuple[int, int]] = {}
        queued = 0
        self._undecided = False
        for job in jobs:
            try:
                stat = job.source.stat()
            except OSError:
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            seen[job.source] = signature
            settled = time.time() - stat.st_mtime >= self.settings.poll_interval_s
            if self._seen.get(job.source) != signature or not settled:
                self._undecided = True
                continue  # new or still changing: look again next poll
            job_id = folder_job_id(job.image_id, stat.st_size, stat.st_mtime_ns)
            if self._queued.get(job.source) == job_id:
                continue
            if not is_up_to_date(job) and self._queue(job, job_id):
                queued += 1
            self._queued[job.source] = job_id
        self._seen = seen
        return queued

    def _queue(self, job: Job, job_id: str) -> bool:
        entry = QueuedJob(
            job_id=job_id,
            image_id=job.image_id,
            output_name=job.output.relative_to(self.output_dir).as_posix(),
            source_name=job.image_id,  # its path relative to the input folder
        )
        if not self.store.queue_input(entry):
            return False
        log(logging.INFO, "queued", job_id=job_id, image_id=job.image_id)
        return True


class ImageInputService(image_input_pb2_grpc.ImageInputServicer):
    """The public API, the folder watcher and the job drivers."""

    def __init__(self, settings: Settings, store: JobStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clients = _Clients.connect(settings)
        self.driver = JobDriver(settings, store, self.clients, metrics)
        self.consumer = settings.consumer()
        self.limits = DecodeLimits()
        self.stop_taking = threading.Event()
        self._in_flight: dict[str, StreamEntry] = {}
        self._calls = 0  # Analyze calls running (they finish before a graceful stop, too)
        self._in_flight_lock = threading.Lock()
        self._taken_over: queue.Queue[StreamEntry] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.watcher: FolderWatcher | None = None
        if settings.input_dir is not None:
            if settings.output_dir is None:
                raise SettingsError("watching FACE_ANALYSIS_INPUT_DIR needs FACE_ANALYSIS_OUTPUT_DIR")
            self.watcher = FolderWatcher(settings, store, metrics, settings.input_dir, settings.output_dir)

    # Background work.

    def start(self) -> None:
        self.store.ensure_group()
        targets: list[tuple[str, Callable[[], None]]] = [("reclaimer", self._reclaim_loop)]
        targets += [(f"driver-{i}", self._drive_loop) for i in range(self.settings.max_in_flight)]
        if self.watcher is not None:
            targets.append(("watcher", self._watch_loop))
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop taking work; let jobs in flight finish within the grace period; hand back the rest."""
        self.stop_taking.set()
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while (self._in_flight or self._calls) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.driver.abandon.set()
        for thread in self._threads:
            thread.join(timeout=5)
        while not self._taken_over.empty():  # taken over but not started: hand back too
            self._hand_back(self._taken_over.get_nowait())
        self.clients.close()

    def _watch_loop(self) -> None:
        assert self.watcher is not None
        while not self.stop_taking.is_set():
            try:
                self.watcher.poll()
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while watching", error=str(exc))
            self.stop_taking.wait(self.settings.poll_interval_s)

    def _reclaim_loop(self) -> None:
        idle = self.settings.claim_idle_s
        next_take_over = time.monotonic() + min(idle, 5.0)
        while not self.stop_taking.wait(min(idle / 3, 2.0)):
            try:
                with self._in_flight_lock:
                    mine = list(self._in_flight)
                self.store.keep_alive(self.consumer, mine)
                if (
                    time.monotonic() >= next_take_over
                    and self._taken_over.qsize() < self.settings.max_in_flight
                ):
                    for entry in self.store.take_over(self.consumer, idle, count=self.settings.max_in_flight):
                        log(
                            logging.INFO,
                            "took over a job",
                            job_id=entry.job.job_id,
                            deliveries=entry.deliveries,
                        )
                        self._taken_over.put(entry)
                    next_take_over = time.monotonic() + idle / 2
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while reclaiming", error=str(exc))

    def _next_entry(self) -> StreamEntry | None:
        try:
            return self._taken_over.get_nowait()
        except queue.Empty:
            pass
        entries = self.store.read(self.consumer, count=1, block_ms=500)
        return entries[0] if entries else None

    def _drive_loop(self) -> None:
        while not self.stop_taking.is_set():
            try:
                entry = self._next_entry()
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while reading jobs", error=str(exc))
                self.stop_taking.wait(1.0)
                continue
            if entry is None:
                continue
            if self.stop_taking.is_set():
                self._hand_back(entry)
                break
            self._drive(entry)

    def _drive(self, entry: StreamEntry) -> None:
        job = entry.job
        with self._in_flight_lock:
            self._in_flight[entry.entry_id] = entry
        self.metrics.in_flight(1)
        try:
            deadline = time.monotonic() + self.settings.job_timeout_s
            prior = max(0, entry.deliveries - 1)
            self.driver.run(job, lambda: self._input_bytes(job), deadline, prior_attempts=prior)
            self._redis_retry(lambda: self.store.ack(entry))
        except HandBack:
            self._hand_back(entry)
        except Exception as exc:  # left pending: taken over again after claim_idle_s
            log(logging.ERROR, "job left in the queue", job_id=job.job_id, error=repr(exc))
        finally:
            with self._in_flight_lock:
                self._in_flight.pop(entry.entry_id, None)
            self.metrics.in_flight(-1)

    def _hand_back(self, entry: StreamEntry) -> None:
        try:
            self.store.hand_back(entry)
            log(logging.INFO, "job handed back", job_id=entry.job.job_id)
        except redis.RedisError as exc:  # still pending: taken over after claim_idle_s
            log(logging.WARNING, "cannot hand back a job", job_id=entry.job.job_id, error=str(exc))

    def _redis_retry(self, operation: Callable[[], None], tries: int = 20) -> None:
        for i in range(tries):
            try:
                operation()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if i == tries - 1:
                    raise
                time.sleep(min(_BACKOFF_START_S * 2**i, _BACKOFF_MAX_S))

    def _input_bytes(self, job: QueuedJob) -> bytes:
        if not job.source_name:
            raise AnalysisError(ErrorCode.UNREADABLE_FILE, "the image sent to the API is no longer in Redis")
        assert self.settings.input_dir is not None
        return read_image_file(self.settings.input_dir / job.source_name, self.limits)

    # The public API.

    def _check(self, image: bytes, name: str, context: grpc.ServicerContext) -> None:
        problem = name_problem(name)
        if problem is None and not image:
            problem = "image is missing (empty)"
        if problem is None:
            try:
                probe_image(image, self.limits)
            except AnalysisError as exc:
                problem = f"{exc.code.value}: {exc.message}"
        reject_invalid(context, self.metrics, problem)

    def _new_api_job(self, image: bytes, name: str, context: grpc.ServicerContext) -> QueuedJob:
        """A job for an image sent to the API, once it passed the checks."""
        self._check(image, name, context)
        if self.stop_taking.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        job_id = api_job_id()
        return QueuedJob(job_id, name, f"{API_RESULTS_FOLDER}/{job_id}.json", "")

    def Submit(
        self, request: image_input_pb2.SubmitRequest, context: grpc.ServicerContext
    ) -> image_input_pb2.SubmitReply:
        job = self._new_api_job(request.image, request.name, context)
        try:
            self.store.put_image(job.job_id, request.image)
            self.store.mark_pending(job.job_id)
            self.store.enqueue(job)
        except redis.RedisError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot queue the image: {exc}")
        log(logging.INFO, "submitted", job_id=job.job_id, image_id=job.image_id)
        return image_input_pb2.SubmitReply(job_id=job.job_id)

    def Analyze(
        self, request: image_input_pb2.AnalyzeRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.AnalysisResult:
        clock = time.perf_counter()
        job = self._new_api_job(request.image, request.name, context)
        remaining = context.time_remaining()
        budget = (
            self.settings.job_timeout_s if remaining is None else min(self.settings.job_timeout_s, remaining)
        )
        image = request.image
        with self._in_flight_lock:
            self._calls += 1
        try:
            result = self.driver.run(job, lambda: image, time.monotonic() + budget)
        except HandBack:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        except JobFailed as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except redis.RedisError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"redis: {exc}")
        finally:
            with self._in_flight_lock:
                self._calls -= 1
        self.metrics.stage("analyze", time.perf_counter() - clock)
        return result

    @redis_unavailable
    def GetResult(
        self, request: aggregator_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> image_input_pb2.JobStatus:
        reject_invalid(context, self.metrics, job_id_problem(request.job_id))
        try:
            result = self.clients.storage.GetResult(request, timeout=self.settings.rpc_timeout_s)
            return image_input_pb2.JobStatus(
                job_id=request.job_id, state=image_input_pb2.JobStatus.DONE, result=result
            )
        except grpc.RpcError as exc:
            code, details = _status(exc)
            if code != grpc.StatusCode.NOT_FOUND:
                context.abort(code, f"data storage: {details}")
        if self.store.is_pending(request.job_id):
            return image_input_pb2.JobStatus(job_id=request.job_id, state=image_input_pb2.JobStatus.PENDING)
        context.abort(grpc.StatusCode.NOT_FOUND, f"no job {request.job_id}")


def serve(settings: Settings) -> None:
    metrics = Metrics("image-input")
    store = JobStore(settings)
    service = ImageInputService(settings, store, metrics)
    service.start()
    run_server(
        "image-input",
        settings,
        lambda server: image_input_pb2_grpc.add_ImageInputServicer_to_server(service, server),
        SERVICE_NAME,
        on_stop=service.stop,
    )
