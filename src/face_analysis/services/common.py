"""What every service shares: JSON logs, Prometheus metrics, request validation, the gRPC server.

Usage (a service module)::

    def serve(settings: Settings) -> None:
        run_server("face-landmark", settings, register=lambda server: add_servicer(..., server))
"""

from __future__ import annotations

import functools
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, TypeVar, cast

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .settings import ServiceName, Settings

__all__ = [
    "JOB_ID_PATTERN",
    "Metrics",
    "configure_logging",
    "job_id_problem",
    "name_problem",
    "redis_unavailable",
    "reject_invalid",
    "relative_path_problem",
    "run_server",
]

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MAX_NAME = 255
_ANNOUNCE_EVERY_S = 10.0  # well within the stamp's TTL (store.STAMP_TTL_S)
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

logger = logging.getLogger("face_analysis.services")
_Handler = TypeVar("_Handler", bound=Callable[..., Any])


# Validation: every request field is checked; an id is never a path.


def job_id_problem(value: str) -> str | None:
    """Why `value` is not a job id (1-64 of [A-Za-z0-9_-]), or None when it is one."""
    if not value:
        return "job_id is missing"
    if not JOB_ID_PATTERN.fullmatch(value):
        return "job_id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'"
    return None


def reject_invalid(context: grpc.ServicerContext, metrics: Metrics, problem: str | None) -> None:
    """End the call with INVALID_ARGUMENT (counted in the metrics) when `problem` names one."""
    if problem is not None:
        metrics.error("INVALID_ARGUMENT")
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)


def name_problem(value: str, field: str = "name") -> str | None:
    """Why `value` is not an acceptable image name (a file name, not a path), or None."""
    if not value:
        return f"{field} is missing"
    if len(value) > _MAX_NAME:
        return f"{field} is longer than {_MAX_NAME} characters"
    if value in (".", "..") or "/" in value or "\\" in value:
        return f"{field} must be a file name, not a path"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{field} must not contain control characters"
    return None


def relative_path_problem(value: str, field: str) -> str | None:
    """Why `value` is not a safe relative path (no '..', not absolute), or None."""
    if not value:
        return f"{field} is missing"
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("/") or "\\" in value:
        return f"{field} must be relative"
    for part in path.parts:
        problem = name_problem(part, field)
        if problem is not None:
            return problem
    return None


# Logs.


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, message and the record's `fields`."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log(level: int, message: str, **fields: Any) -> None:
    """Log `message` with structured fields."""
    logger.log(level, message, extra={"fields": fields})


def redis_unavailable(handler: _Handler) -> _Handler:
    """An RPC handler whose Redis is unreachable answers UNAVAILABLE (callers retry), not UNKNOWN."""

    @functools.wraps(handler)
    def wrapper(self: object, request: object, context: grpc.ServicerContext) -> Any:
        try:
            return handler(self, request, context)
        except redis.RedisError as exc:
            log(logging.WARNING, "redis unreachable", error=str(exc))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"redis: {exc}")

    return cast(_Handler, wrapper)


# Metrics.


class Metrics:
    """The service's Prometheus metrics (all labelled with the service name)."""

    def __init__(self, service: ServiceName) -> None:
        self.service = service
        self._images = Counter(
            "face_analysis_images_total", "Images handled, by outcome", ["service", "outcome"]
        )
        self._faces = Counter("face_analysis_faces_total", "Faces found or estimated", ["service"])
        self._errors = Counter(
            "face_analysis_errors_total",
            "Errors: image error codes and gRPC status codes",
            ["service", "code"],
        )
        self._latency = Histogram(
            "face_analysis_stage_seconds",
            "Time spent per stage",
            ["service", "stage"],
            buckets=_STAGE_BUCKETS,
        )
        self._in_flight = Gauge("face_analysis_jobs_in_flight", "Jobs being worked on", ["service"])
        self._retries = Counter(
            "face_analysis_retries_total", "Calls retried, by stage and status", ["service", "stage", "code"]
        )

    def image(self, ok: bool, faces: int = 0) -> None:
        self._images.labels(self.service, "ok" if ok else "error").inc()
        if faces:
            self._faces.labels(self.service).inc(faces)

    def error(self, code: str) -> None:
        self._errors.labels(self.service, code).inc()

    def stage(self, stage: str, seconds: float) -> None:
        self._latency.labels(self.service, stage).observe(seconds)

    def retry(self, stage: str, code: str) -> None:
        self._retries.labels(self.service, stage, code).inc()

    def in_flight(self, delta: int) -> None:
        self._in_flight.labels(self.service).inc(delta)


# The server.


def _grpc_server(service: ServiceName, settings: Settings) -> grpc.Server:
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix=service),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port already taken is an error, not a silent share
            # Clients reconnect now and then, and so re-resolve the name and find new replicas.
            ("grpc.max_connection_age_ms", 60_000),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ],
        maximum_concurrent_rpcs=settings.grpc_workers * 8,
    )


def _announcer(announce: Callable[[], None] | None) -> Callable[[], float]:
    """Call `announce` (a Redis error is logged, not raised); returns when to call it next."""

    def announce_now() -> float:
        if announce is not None:
            try:
                announce()
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while announcing", error=str(exc))
        return time.monotonic() + _ANNOUNCE_EVERY_S

    return announce_now


def run_server(
    service: ServiceName,
    settings: Settings,
    register: Callable[[grpc.Server], None],
    grpc_service_name: str,
    on_stop: Callable[[], None] | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully.

    The standard health service reports SERVING while up; `announce` (say in Redis what this
    service runs) is called before that and every `_ANNOUNCE_EVERY_S`. On a signal: health goes
    NOT_SERVING, `on_stop` runs (stop taking work, finish or hand back what is in flight), then
    the server stops accepting RPCs and lets running ones finish within the grace period.
    """
    server = _grpc_server(service, settings)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    register(server)
    address = f"{settings.bind_host}:{settings.port(service)}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    metrics_port = settings.metrics_port(service)
    if metrics_port:
        start_http_server(metrics_port, addr=settings.bind_host)
    announce_now = _announcer(announce)
    next_announcement = announce_now()
    server.start()
    for name in ("", grpc_service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log(logging.INFO, "serving", address=address, metrics_port=metrics_port)

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log(logging.INFO, "stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop.wait(max(0.0, next_announcement - time.monotonic())):
        next_announcement = announce_now()
    started = time.monotonic()
    health_servicer.enter_graceful_shutdown()
    if on_stop is not None:
        on_stop()
    remaining = max(1.0, settings.shutdown_grace_s - (time.monotonic() - started))
    server.stop(remaining).wait()
    log(logging.INFO, "stopped", seconds=round(time.monotonic() - started, 3))
