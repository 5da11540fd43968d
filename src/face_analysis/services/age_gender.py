"""The age gender service: `steps.build_estimator`'s step on a job's image and detections.

Reads `det:{job}` and the decoded pixels `rgb:{job}` (else `img:{job}`, decoded again), writes
`age:{job}` (AgeGenderEstimates with the estimator's stamp), replies with the face count. Builds
only the estimator: it needs the age and gender model files. Stateless: run as many replicas as
the CPUs allow.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import numpy as np

from ..errors import AnalysisError
from ..imaging import RGBImage, decode_image
from ..results import ResultError
from ..settings import DecodeLimits
from ..steps import EstimationStep, build_estimator
from .common import Metrics, job_id_problem, log, redis_unavailable, reject_invalid, run_server
from .convert import detections_from_proto, error_to_proto, estimates_to_proto, stamp_to_proto
from .generated import age_gender_pb2, age_gender_pb2_grpc
from .settings import Settings
from .store import JobStore

__all__ = ["AgeGenderService", "serve"]

SERVICE_NAME = "faceanalysis.v1.AgeGender"


class AgeGenderService(age_gender_pb2_grpc.AgeGenderServicer):
    def __init__(
        self,
        estimation: EstimationStep,
        limits: DecodeLimits,
        store: JobStore,
        metrics: Metrics,
        model_slots: int = 1,
    ) -> None:
        self.estimation = estimation
        self.limits = limits
        self.stamp = stamp_to_proto(estimation.stamp)
        self.store = store
        self.metrics = metrics
        # Runs at once: each already uses every onnxruntime thread, more would only contend for the
        # cores and hold one arena of activations each.
        self._slots = threading.BoundedSemaphore(model_slots)

    @redis_unavailable
    def Estimate(
        self, request: age_gender_pb2.EstimateRequest, context: grpc.ServicerContext
    ) -> age_gender_pb2.EstimateReply:
        reject_invalid(context, self.metrics, job_id_problem(request.job_id))
        job_id = request.job_id
        detected = self.store.get_detections(job_id)
        # The pixels the face landmark service decoded, else the image bytes (decoded again).
        source: RGBImage | bytes | None = self.store.get_pixels(job_id) if detected is not None else None
        data = source if source is not None else self.store.get_image(job_id)
        if data is None or detected is None:
            self.metrics.error("NOT_FOUND")
            missing = "image" if data is None else "detections"
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"no {missing} for job {job_id} in Redis (expired or lost)"
            )
        if detected.HasField("error"):
            self.metrics.error("FAILED_PRECONDITION")
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {job_id} has no faces to estimate: {detected.error.code}",
            )
        message = age_gender_pb2.AgeGenderEstimates(stamp=self.stamp)
        error: ResultError | None = None
        clock = time.perf_counter()
        try:
            detections = detections_from_proto(detected)
            if detections:
                image = data if isinstance(data, np.ndarray) else decode_image(data, self.limits)
                with self._slots:
                    estimates = self.estimation.estimate(image, detections)
                message.estimates.extend(estimates_to_proto(estimates))
        except Exception as exc:  # as in the embedded mode: the image gets an error result
            if not isinstance(exc, AnalysisError):
                log(logging.ERROR, "estimation failed", job_id=job_id, error=repr(exc))
            error = ResultError.of(exc)
        message.timings.age_gender = (time.perf_counter() - clock) * 1000
        if error is not None:
            del message.estimates[:]
            message.error.CopyFrom(error_to_proto(error))
            self.metrics.error(error.code.value)
        self.store.put_estimates(job_id, message)
        self.metrics.stage("age_gender", time.perf_counter() - clock)
        self.metrics.image(error is None, len(message.estimates))
        return age_gender_pb2.EstimateReply(job_id=job_id, face_count=len(message.estimates))


def serve(settings: Settings) -> None:
    estimation = build_estimator(settings.analysis)
    estimation.warm_up()  # the first runs are slow
    store = JobStore(settings)
    limits = settings.analysis.limits
    service = AgeGenderService(estimation, limits, store, Metrics("age-gender"), settings.model_slots)
    run_server(
        "age-gender",
        settings,
        lambda server: age_gender_pb2_grpc.add_AgeGenderServicer_to_server(service, server),
        SERVICE_NAME,
        announce=lambda: store.announce("age-gender", service.stamp),
    )
