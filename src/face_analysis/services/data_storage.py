"""The data storage service: a job's pieces in Redis -> the result JSON on disk.

Builds the result with the library (`faces_of` + `make_result`, so it is the embedded mode's
JSON), stamped with what the steps that ran stamped (or, for a step that did not run, what that
service announces), writes it with `write_json_atomic`, keeps it queryable by job id
(`res:{job}`) and deletes the job's intermediates. Idempotent: a result already up to date on
disk is not written again (a job delivered twice, e.g. after a crash, writes its file once).
Needs no model file and loads no model runtime.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import datetime
from pathlib import Path

import grpc

from ..batch import Job, is_up_to_date
from ..results import Face, ImageResult, ResultError, Stamp, faces_of, make_result, write_json_atomic
from .common import (
    Metrics,
    job_id_problem,
    log,
    name_problem,
    redis_unavailable,
    reject_invalid,
    relative_path_problem,
    run_server,
)
from .convert import (
    detections_from_proto,
    error_from_proto,
    estimates_from_proto,
    result_to_proto,
    stamp_from_proto,
    timings_from_proto,
)
from .generated import age_gender_pb2, aggregator_pb2, aggregator_pb2_grpc, common_pb2, landmark_detection_pb2
from .settings import Settings, SettingsError
from .store import JobStore

__all__ = ["API_RESULTS_FOLDER", "DataStorageService", "serve"]

SERVICE_NAME = "faceanalysis.v1.DataStorage"
# Results of images sent to the API go to OUTPUT/api/{job_id}.json (folder inputs are top level).
API_RESULTS_FOLDER = "api"
_LOCK_STRIPES = 64


class _Invalid(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DataStorageService(aggregator_pb2_grpc.DataStorageServicer):
    def __init__(
        self, settings: Settings, store: JobStore, metrics: Metrics, output_dir: Path, input_dir: Path | None
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.output_dir = output_dir.resolve()
        self.input_dir = None if input_dir is None else input_dir.resolve()
        # One writer per result file at a time (striped locks: bounded memory).
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock(self, path: Path) -> threading.Lock:
        return self._locks[int(hashlib.sha1(str(path).encode()).hexdigest()[:8], 16) % _LOCK_STRIPES]

    def _paths(self, request: aggregator_pb2.StoreRequest) -> tuple[Path, Path | None]:
        for problem in (
            job_id_problem(request.job_id),
            name_problem(request.image_id.rsplit("/", 1)[-1], "image_id"),
            relative_path_problem(request.output_name, "output_name"),
            None if not request.source_name else relative_path_problem(request.source_name, "source_name"),
        ):
            if problem is not None:
                raise _Invalid(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if not request.output_name.endswith(".json"):
            raise _Invalid(grpc.StatusCode.INVALID_ARGUMENT, "output_name must end with .json")
        output = (self.output_dir / request.output_name).resolve()
        if not output.is_relative_to(self.output_dir):
            raise _Invalid(grpc.StatusCode.INVALID_ARGUMENT, "output_name leaves the output folder")
        source: Path | None = None
        if request.source_name:
            if self.input_dir is None:
                raise _Invalid(grpc.StatusCode.FAILED_PRECONDITION, "this service has no input folder")
            source = (self.input_dir / request.source_name).resolve()
            if not source.is_relative_to(self.input_dir):
                raise _Invalid(grpc.StatusCode.INVALID_ARGUMENT, "source_name leaves the input folder")
        return output, source

    def _build(self, request: aggregator_pb2.StoreRequest) -> ImageResult:
        """The job's result from its request and its intermediates in Redis."""
        detected = self.store.get_detections(request.job_id)
        estimated = None
        if request.HasField("error"):
            try:
                error: ResultError | None = error_from_proto(request.error)
            except ValueError:
                raise _Invalid(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown error code {request.error.code!r}"
                ) from None
        elif detected is None:
            raise _Invalid(
                grpc.StatusCode.NOT_FOUND,
                f"no detections for job {request.job_id} in Redis (expired or lost)",
            )
        elif detected.HasField("error"):
            error = error_from_proto(detected.error)
        else:
            if detected.faces:
                estimated = self.store.get_estimates(request.job_id)
                if estimated is None:
                    raise _Invalid(
                        grpc.StatusCode.NOT_FOUND,
                        f"no estimates for job {request.job_id} in Redis (expired or lost)",
                    )
            error = (
                None
                if estimated is None or not estimated.HasField("error")
                else error_from_proto(estimated.error)
            )
        faces: tuple[Face, ...] = ()
        if error is None and detected is not None and estimated is not None:
            faces = faces_of(detections_from_proto(detected), estimates_from_proto(estimated))
        timings = common_pb2.Timings()
        for part in (detected, estimated, request):
            if part is not None:
                timings.MergeFrom(part.timings)
        size = None if detected is None or detected.width <= 0 else (detected.width, detected.height)
        started = datetime.fromtimestamp(request.started_at) if request.started_at > 0 else datetime.now()
        stamp = self._stamp(detected, estimated)
        return make_result(request.image_id, faces, size, started, timings_from_proto(timings), stamp, error)

    def _stamp(
        self,
        detected: landmark_detection_pb2.FaceDetections | None,
        estimated: age_gender_pb2.AgeGenderEstimates | None,
    ) -> Stamp:
        """The stamps of the steps that ran for the job, else those their services announce."""
        detector = detected.stamp if detected is not None and detected.HasField("stamp") else None
        estimator = estimated.stamp if estimated is not None and estimated.HasField("stamp") else None
        detector = detector or self.store.announced("face-landmark")
        estimator = estimator or self.store.announced("age-gender")
        first, second = (
            Stamp() if part is None else stamp_from_proto(part) for part in (detector, estimator)
        )
        return first.merge(second)

    @redis_unavailable
    def Store(
        self, request: aggregator_pb2.StoreRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.StoreReply:
        clock = time.perf_counter()
        try:
            output, source = self._paths(request)
            with self._lock(output):
                current = (
                    is_up_to_date(Job(source=source, image_id=request.image_id, output=output))
                    if source is not None
                    else output.is_file()
                )
                result = _read_result(output) if current else None
                written = result is None
                if result is None:
                    result = self._build(request)
                    write_json_atomic(output, result.to_json())
                    self.metrics.image(result.ok, len(result.faces))
                    if result.error is not None:
                        self.metrics.error(result.error.code.value)
                    log(
                        logging.INFO,
                        "result written",
                        job_id=request.job_id,
                        image_id=request.image_id,
                        output=str(output),
                        faces=len(result.faces),
                        error=None if result.error is None else result.error.code.value,
                    )
            reply = result_to_proto(request.job_id, result)
            self.store.put_result(request.job_id, reply)
            self.store.delete_intermediates(request.job_id)
        except _Invalid as exc:
            self.metrics.error(exc.code.name)
            context.abort(exc.code, exc.message)
        except OSError as exc:
            self.metrics.error("UNAVAILABLE")
            log(logging.ERROR, "cannot write result", job_id=request.job_id, error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot write the result: {exc.strerror or exc}")
        self.metrics.stage("store", time.perf_counter() - clock)
        return aggregator_pb2.StoreReply(result=reply, written=written)

    @redis_unavailable
    def GetResult(
        self, request: aggregator_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.AnalysisResult:
        reject_invalid(context, self.metrics, job_id_problem(request.job_id))
        stored = self.store.get_result(request.job_id)
        if stored is not None:
            return stored
        # An API job's result outlives Redis on disk; the id was checked, so this is no path trick.
        path = self.output_dir / API_RESULTS_FOLDER / f"{request.job_id}.json"
        try:
            result = _read_result(path)
        except OSError:
            result = None
        if result is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no result for job {request.job_id}")
        return result_to_proto(request.job_id, result)


def _read_result(path: Path) -> ImageResult | None:
    """A result written earlier; None when the file is not one (e.g. hand-edited)."""
    try:
        return ImageResult.from_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def serve(settings: Settings) -> None:
    if settings.output_dir is None:
        raise SettingsError("the data storage service needs FACE_ANALYSIS_OUTPUT_DIR")
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics("data-storage")
    service = DataStorageService(
        settings, JobStore(settings), metrics, settings.output_dir, settings.input_dir
    )
    run_server(
        "data-storage",
        settings,
        lambda server: aggregator_pb2_grpc.add_DataStorageServicer_to_server(service, server),
        SERVICE_NAME,
    )
