"""The face landmark service: decode + `steps.build_detector`'s step on a job's image in Redis.

Reads `img:{job}`, writes `det:{job}` (FaceDetections with the detector's stamp, and the decode
or detector error if any), replies with the face count. Builds only the detector: it needs the
CenterFace model file (no model file at all for Roboflow). Stateless: run as many replicas as
the CPUs allow.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from ..errors import AnalysisError
from ..imaging import decode_image
from ..results import ResultError
from ..settings import DecodeLimits
from ..steps import DetectionStep, build_detector
from .common import Metrics, job_id_problem, log, redis_unavailable, reject_invalid, run_server
from .convert import detections_to_proto, error_to_proto, stamp_to_proto
from .generated import landmark_detection_pb2, landmark_detection_pb2_grpc
from .settings import Settings
from .store import JobStore

__all__ = ["FaceLandmarkService", "serve"]

SERVICE_NAME = "faceanalysis.v1.FaceLandmark"


class FaceLandmarkService(landmark_detection_pb2_grpc.FaceLandmarkServicer):
    def __init__(
        self,
        detection: DetectionStep,
        limits: DecodeLimits,
        store: JobStore,
        metrics: Metrics,
        model_slots: int = 1,
    ) -> None:
        self.detection = detection
        self.limits = limits
        self.store = store
        self.metrics = metrics
        # Runs at once: each already uses every onnxruntime thread, more would only contend for the
        # cores and hold one arena of activations each.
        self._slots = threading.BoundedSemaphore(model_slots)
        self.stamp = stamp_to_proto(detection.stamp)

    @redis_unavailable
    def Detect(
        self, request: landmark_detection_pb2.DetectRequest, context: grpc.ServicerContext
    ) -> landmark_detection_pb2.DetectReply:
        reject_invalid(context, self.metrics, job_id_problem(request.job_id))
        job_id = request.job_id
        data = self.store.get_image(job_id)
        if data is None:
            self.metrics.error("NOT_FOUND")
            context.abort(grpc.StatusCode.NOT_FOUND, f"no image for job {job_id} in Redis (expired or lost)")
        message = landmark_detection_pb2.FaceDetections(stamp=self.stamp)
        error: ResultError | None = None
        clock = time.perf_counter()
        try:
            image = decode_image(data, self.limits)
            message.width, message.height = int(image.shape[1]), int(image.shape[0])
            message.timings.decode = (time.perf_counter() - clock) * 1000
            step = time.perf_counter()
            with self._slots:
                detections = self.detection.detect(image)
            message.timings.detect = (time.perf_counter() - step) * 1000
            message.faces.extend(detections_to_proto(detections))
            if detections:
                self.store.put_pixels(job_id, image)
        except Exception as exc:  # as in the embedded mode: the image gets an error result
            if not isinstance(exc, AnalysisError):
                log(logging.ERROR, "detection failed", job_id=job_id, error=repr(exc))
            error = ResultError.of(exc)
        if error is not None:
            del message.faces[:]
            message.error.CopyFrom(error_to_proto(error))
            self.metrics.error(error.code.value)
        self.store.put_detections(job_id, message)
        self.metrics.stage("detect", time.perf_counter() - clock)
        self.metrics.image(error is None, len(message.faces))
        return landmark_detection_pb2.DetectReply(
            job_id=job_id,
            face_count=len(message.faces),
            error=None if error is None else message.error,
        )


def serve(settings: Settings) -> None:
    detection = build_detector(settings.analysis)
    detection.warm_up()  # the first runs are slow
    store = JobStore(settings)
    limits = settings.analysis.limits
    service = FaceLandmarkService(detection, limits, store, Metrics("face-landmark"), settings.model_slots)
    run_server(
        "face-landmark",
        settings,
        lambda server: landmark_detection_pb2_grpc.add_FaceLandmarkServicer_to_server(service, server),
        SERVICE_NAME,
        announce=lambda: store.announce("face-landmark", service.stamp),
    )
