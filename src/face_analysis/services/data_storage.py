"""The data storage service: a job's pieces in Redis -> the result JSON on disk.

Builds the result with the library (`faces_of` + `Analyzer.result`, so it is the embedded
mode's JSON), writes it with `write_json_atomic`, keeps it queryable by job id (`res:{job}`)
and deletes the job's intermediates. Idempotent: a result already up to date on disk is not
written again (a job delivered twice, e.g. after a crash, writes its file once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import grpc

from ..batch import Job, is_up_to_date
from ..pipeline import faces_of
from ..results import ImageResult, write_json_atomic
from .common import (
    Metrics,
    job_id_problem,
    log,
    make_analyzer,
    name_problem,
    redis_unavailable,
    reject_invalid,
    relative_path_problem,
    run_server,
)
from .convert import detections_from_proto, error_from_proto, estimates_from_proto, result_from_json
from .generated import aggregator_pb2, aggregator_pb2_grpc, landmark_detection_pb2
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
        # Builds the results; they carry the stamp (models, settings) of the analyzer that
        # detected their faces, which comes with the detections.
        self.analyzer = make_analyzer(settings, "store")
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
        detected = self.store.get_detections(request.job_id)
        result = self._assemble(request, detected)
        if detected is not None and detected.stamp_json:
            stamp = json.loads(detected.stamp_json)
            result = replace(result, models=stamp["models"], settings=stamp["settings"])
        return result

    def _assemble(
        self, request: aggregator_pb2.StoreRequest, detected: landmark_detection_pb2.FaceDetections | None
    ) -> ImageResult:
        job_id = request.job_id
        started = datetime.fromtimestamp(request.started_at) if request.started_at > 0 else datetime.now()
        timings = dict(request.timings_ms)
        size = None if detected is None or detected.width <= 0 else (detected.width, detected.height)
        analyzer = self.analyzer
        if detected is not None and size is not None:  # no step timings for an image never decoded
            timings = {"decode": detected.decode_ms, "detect": detected.detect_ms, **timings}
        if request.HasField("error"):
            try:
                error = error_from_proto(request.error)
            except ValueError:
                raise _Invalid(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown error code {request.error.code!r}"
                ) from None
            return analyzer.result(request.image_id, (), size, started, timings, error)
        if detected is None:
            raise _Invalid(
                grpc.StatusCode.NOT_FOUND, f"no detections for job {job_id} in Redis (expired or lost)"
            )
        if detected.HasField("error"):
            return analyzer.result(
                request.image_id, (), size, started, timings, error_from_proto(detected.error)
            )
        if not detected.faces:
            return analyzer.result(request.image_id, (), size, started, timings)
        estimated = self.store.get_estimates(job_id)
        if estimated is None:
            raise _Invalid(
                grpc.StatusCode.NOT_FOUND, f"no estimates for job {job_id} in Redis (expired or lost)"
            )
        timings = {**timings, "age_gender": estimated.age_gender_ms}
        if "total" in timings:  # keep the embedded mode's order of keys
            timings["total"] = timings.pop("total")
        if estimated.HasField("error"):
            return analyzer.result(
                request.image_id, (), size, started, timings, error_from_proto(estimated.error)
            )
        faces = faces_of(detections_from_proto(detected), estimates_from_proto(estimated))
        return analyzer.result(request.image_id, faces, size, started, timings)

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
                if current:
                    text = output.read_text(encoding="utf-8")
                    written = False
                else:
                    result = self._build(request)
                    text = result.to_json()
                    write_json_atomic(output, text)
                    written = True
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
            self.store.put_result(request.job_id, text)
            self.store.delete_intermediates(request.job_id)
        except _Invalid as exc:
            self.metrics.error(exc.code.name)
            context.abort(exc.code, exc.message)
        except OSError as exc:
            self.metrics.error("UNAVAILABLE")
            log(logging.ERROR, "cannot write result", job_id=request.job_id, error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot write the result: {exc.strerror or exc}")
        self.metrics.stage("store", time.perf_counter() - clock)
        return aggregator_pb2.StoreReply(result=result_from_json(request.job_id, text), written=written)

    @redis_unavailable
    def GetResult(
        self, request: aggregator_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.AnalysisResult:
        reject_invalid(context, self.metrics, job_id_problem(request.job_id))
        text = self.store.get_result(request.job_id)
        if text is None:
            # An API job's result outlives Redis on disk; the id was checked, so this is no path trick.
            path = self.output_dir / API_RESULTS_FOLDER / f"{request.job_id}.json"
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no result for job {request.job_id}")
        return result_from_json(request.job_id, text)


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
