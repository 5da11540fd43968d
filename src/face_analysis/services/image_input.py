"""The image input service: the public API (image_input.proto), the folder watcher and the
queue workers, composed.

- `watcher.py` queues the inputs of the watched folder;
- `workers.py` takes jobs from the Redis stream and drives each (`driver.py`) through face
  landmark -> age gender -> data storage;
- this module serves Submit, GetResult and Analyze, and starts and stops the others.

On SIGTERM: stops queueing and taking jobs, lets jobs in flight (and Analyze calls) finish within
the grace period, hands back (requeues) the rest.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import redis

from ..errors import AnalysisError, ErrorCode, SettingsError
from ..imaging import probe_image, read_image_file
from .common import Metrics, job_id_problem, log, name_problem, redis_unavailable, reject_invalid, run_server
from .data_storage import API_RESULTS_FOLDER
from .driver import Clients, HandBack, JobDriver, JobFailed, grpc_status
from .generated import aggregator_pb2, image_input_pb2, image_input_pb2_grpc
from .settings import Settings
from .store import JobStore, QueuedJob, api_job_id
from .watcher import FolderWatcher
from .workers import QueueWorkers

__all__ = ["ImageInputService", "serve"]

SERVICE_NAME = "faceanalysis.v1.ImageInput"


class ImageInputService(image_input_pb2_grpc.ImageInputServicer):
    """The public API; owns the driver, the queue workers and the folder watcher."""

    def __init__(self, settings: Settings, store: JobStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.limits = settings.analysis.limits
        self.clients = Clients.connect(settings)
        self.driver = JobDriver(settings, store, self.clients, metrics)
        self.stop_taking = threading.Event()
        self.workers = QueueWorkers(
            settings, store, self.driver, metrics, self._input_bytes, self.stop_taking
        )
        self._calls = 0  # Analyze calls running (they finish before a graceful stop, too)
        self._calls_lock = threading.Lock()
        self.watcher: FolderWatcher | None = None
        if settings.input_dir is not None:
            if settings.output_dir is None:
                raise SettingsError("watching FACE_ANALYSIS_INPUT_DIR needs FACE_ANALYSIS_OUTPUT_DIR")
            self.watcher = FolderWatcher(settings, store, metrics, settings.input_dir, settings.output_dir)
        self._watch_thread: threading.Thread | None = None

    def start(self) -> None:
        self.store.ensure_group()
        self.workers.start()
        if self.watcher is not None:
            self._watch_thread = threading.Thread(
                target=self.watcher.run, args=(self.stop_taking,), name="watcher", daemon=True
            )
            self._watch_thread.start()

    def stop(self) -> None:
        """Stop taking work; let jobs in flight finish within the grace period; hand back the rest."""
        self.stop_taking.set()
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while (self.workers.busy or self._calls) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.driver.abandon.set()
        self.workers.stop()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        self.clients.close()

    def _input_bytes(self, job: QueuedJob) -> bytes:
        if not job.source_name:
            raise AnalysisError(ErrorCode.UNREADABLE_FILE, "the image sent to the API is no longer in Redis")
        assert self.settings.input_dir is not None
        return read_image_file(self.settings.input_dir / job.source_name, self.limits)

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
        with self._calls_lock:
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
            with self._calls_lock:
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
            code, details = grpc_status(exc)
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
