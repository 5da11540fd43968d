"""The services' settings: one frozen object, read from `FACE_ANALYSIS_*` environment variables.

Usage::

    settings = Settings.from_env()          # os.environ; raises SettingsError on a bad value
    settings.redis_url, settings.port("face-landmark"), settings.address("age-gender")

Every field is the variable `FACE_ANALYSIS_` + its name upper-cased (`redis_url` ->
`FACE_ANALYSIS_REDIS_URL`); `_HELP` says what the README's table says.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["ENV_PREFIX", "SERVICES", "ServiceName", "Settings", "SettingsError"]

ENV_PREFIX = "FACE_ANALYSIS_"
ServiceName = Literal["image-input", "face-landmark", "age-gender", "data-storage"]
SERVICES: tuple[ServiceName, ...] = get_args(ServiceName)


class SettingsError(ValueError):
    """An environment variable has a value the services cannot use."""


_HELP = {
    "redis_url": "Redis holding queues and intermediates",
    "key_prefix": "prefix of every Redis key (several stacks can share one Redis)",
    "input_dir": "folder the image input service watches (unset: API only)",
    "output_dir": "folder the data storage service writes results to (required)",
    "image_input_port": "gRPC port of the image input service (the public API)",
    "face_landmark_port": "gRPC port of the face landmark service",
    "age_gender_port": "gRPC port of the age gender service",
    "data_storage_port": "gRPC port of the data storage service",
    "grpc_workers": "threads serving RPCs per service (concurrent requests beyond it queue)",
    "max_in_flight": "folder jobs one image input replica drives at once",
    "max_attempts": "attempts before a failing job ends as an `internal_error` result",
    "rpc_timeout_s": "deadline of one call to a service",
    "intermediate_ttl_s": "lifetime of image bytes and partial results in Redis",
    "result_ttl_s": "how long results stay queryable by job id in Redis",
    "consumer_name": "this replica's name in the Redis consumer group (default host-pid)",
    "threads": "onnxruntime threads per model (0: one per core)",
    "model_slots": "model runs one face landmark or age gender process does at once (more: more memory)",
    "detector": "`centerface` (local) or `roboflow` (hosted; set the CLI's `ROBOFLOW_*` variables)",
    "preset": "`fast` or `accurate` (crowds), as `face-analysis analyze --preset` (the same variable)",
    "runtime": "`onnxruntime` or `openvino` runs the models, as `--runtime` (the same variable)",
    "precision": "`auto` (int8 models, bf16 where the CPU keeps accuracy), `fp32` or `int8`: `--precision`",
    "detect_size": "long side, in pixels, the detector sees each image at",
    "min_confidence": "detections scoring below this are dropped",
    "log_level": "DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr",
    "bind_host": "address the gRPC and metrics servers listen on (0.0.0.0 in containers)",
    "face_landmark_addr": "where the image input service reaches face landmark (default 127.0.0.1:its port)",
    "age_gender_addr": "where the image input service reaches age gender (default 127.0.0.1:its port)",
    "data_storage_addr": "where the image input service reaches data storage (default 127.0.0.1:its port)",
    "image_input_metrics_port": "Prometheus metrics port of the image input service (0: off)",
    "face_landmark_metrics_port": "Prometheus metrics port of the face landmark service (0: off)",
    "age_gender_metrics_port": "Prometheus metrics port of the age gender service (0: off)",
    "data_storage_metrics_port": "Prometheus metrics port of the data storage service (0: off)",
    "max_message_bytes": "largest gRPC message accepted (an image sent to the API)",
    "job_timeout_s": "a job not done after this long ends as an `internal_error` result",
    "claim_idle_s": "a queued job held this long by a silent (crashed) replica is taken over",
    "poll_interval_s": "how often the input folder is listed (a file is read once its size and mtime hold)",
    "rescan_interval_s": "how often every input without a result is checked against the queue",
    "shutdown_grace_s": "on SIGTERM, time given to jobs in flight before they are handed back",
    "model_dir": "folder with the model files (default ~/.cache/face-analysis/models)",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the services read from the environment (see the README's table)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "fa"
    input_dir: Path | None = None
    output_dir: Path | None = None
    bind_host: str = "127.0.0.1"
    image_input_port: int = 50051
    face_landmark_port: int = 50052
    age_gender_port: int = 50053
    data_storage_port: int = 50054
    face_landmark_addr: str = ""
    age_gender_addr: str = ""
    data_storage_addr: str = ""
    image_input_metrics_port: int = 9101
    face_landmark_metrics_port: int = 9102
    age_gender_metrics_port: int = 9103
    data_storage_metrics_port: int = 9104
    grpc_workers: int = 8
    max_message_bytes: int = 32 * 1024 * 1024
    max_in_flight: int = 4
    max_attempts: int = 3
    rpc_timeout_s: float = 30.0
    job_timeout_s: float = 300.0
    claim_idle_s: float = 30.0
    poll_interval_s: float = 0.5
    rescan_interval_s: float = 30.0
    intermediate_ttl_s: int = 3600
    result_ttl_s: int = 86400
    shutdown_grace_s: float = 20.0
    consumer_name: str = ""
    threads: int = 0
    model_slots: int = 1
    detector: str = "centerface"
    preset: str = "fast"
    runtime: str = "onnxruntime"
    precision: str = "auto"
    detect_size: int = 640
    min_confidence: float = 0.5
    model_dir: Path | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", self.key_prefix):
            raise SettingsError(f"{ENV_PREFIX}KEY_PREFIX must be 1-32 of [A-Za-z0-9_.:-]")
        for name in (
            "grpc_workers",
            "max_in_flight",
            "max_attempts",
            "max_message_bytes",
            "detect_size",
            "model_slots",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
        for name in (
            "rpc_timeout_s",
            "job_timeout_s",
            "claim_idle_s",
            "poll_interval_s",
            "rescan_interval_s",
            "intermediate_ttl_s",
            "result_ttl_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be positive")
        if self.threads < 0 or self.shutdown_grace_s < 0:
            raise SettingsError(f"{ENV_PREFIX}THREADS and SHUTDOWN_GRACE_S must not be negative")
        for name, allowed in (
            ("preset", ("fast", "accurate")),
            ("runtime", ("onnxruntime", "openvino")),
            ("precision", ("auto", "fp32", "int8")),
        ):
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be one of {', '.join(allowed)}")
        if self.detector not in ("centerface", "roboflow"):
            raise SettingsError(f"{ENV_PREFIX}DETECTOR must be centerface or roboflow")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        for service in SERVICES:
            for port in (self.port(service), self.metrics_port(service)):
                if not 0 <= port <= 65535:
                    raise SettingsError(f"port {port} of {service} is out of range")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from `FACE_ANALYSIS_*` variables; unset or empty ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(ENV_PREFIX + spec.name.upper(), "").strip()
            if not raw:
                continue
            kind = type(spec.default) if spec.default is not MISSING and spec.default is not None else Path
            try:
                values[spec.name] = Path(raw) if kind is Path else kind(raw)
            except ValueError:
                raise SettingsError(
                    f"{ENV_PREFIX}{spec.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        return cls(**values)

    @staticmethod
    def variables() -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every setting: the README's table."""
        return [
            (
                ENV_PREFIX + spec.name.upper(),
                "" if spec.default is None else str(spec.default),
                _HELP[spec.name],
            )
            for spec in fields(Settings)
        ]

    def port(self, service: ServiceName) -> int:
        """The gRPC port `service` listens on."""
        port: int = getattr(self, service.replace("-", "_") + "_port")
        return port

    def metrics_port(self, service: ServiceName) -> int:
        """The Prometheus port of `service` (0: no metrics server)."""
        port: int = getattr(self, service.replace("-", "_") + "_metrics_port")
        return port

    def address(self, service: ServiceName) -> str:
        """Where to reach `service`: its `*_ADDR` setting, else 127.0.0.1 and its port."""
        address: str = getattr(self, service.replace("-", "_") + "_addr", "")
        return address or f"127.0.0.1:{self.port(service)}"

    def consumer(self) -> str:
        """This replica's consumer name in the job stream's group."""
        return self.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

    def onnx_threads(self) -> int:
        return self.threads or os.cpu_count() or 1
