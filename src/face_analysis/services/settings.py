"""The services' settings: one frozen object, read from `FACE_ANALYSIS_*` environment variables.

Usage::

    settings = Settings.from_env()          # os.environ; raises SettingsError on a bad value
    settings.redis_url, settings.port("face-landmark"), settings.address("age-gender")
    settings.analysis                       # the AnalyzerConfig every service shares

Every option is the variable `FACE_ANALYSIS_` + its name upper-cased (`redis_url` ->
`FACE_ANALYSIS_REDIS_URL`), defined once below with its type, default and help; `analysis` holds
the analysis options, the same variables as `face-analysis analyze` reads (see
`face_analysis.settings`). The README's tables list them; a test checks the tables, compose's
defaults and .env.example against them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, field_validator

from ..errors import EX_CONFIG, SettingsError
from ..settings import AnalyzerConfig, SettingsModel

__all__ = ["ENV_PREFIX", "SERVICES", "ServiceName", "Settings", "SettingsError"]

ENV_PREFIX = "FACE_ANALYSIS_"
ServiceName = Literal["image-input", "face-landmark", "age-gender", "data-storage"]
SERVICES: tuple[ServiceName, ...] = get_args(ServiceName)


def _port(default: int, what: str) -> int:
    return Field(default, ge=0, le=65535, description=what)


class Settings(SettingsModel):
    """Everything the services read from the environment (see the README's tables)."""

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding queues and intermediates")
    key_prefix: str = Field(
        "fa",
        pattern=r"^[A-Za-z0-9_.:-]{1,32}$",
        description="prefix of every Redis key (several stacks can share one Redis)",
    )
    input_dir: Path | None = Field(
        None, description="folder the image input service watches (unset: API only)"
    )
    output_dir: Path | None = Field(
        None, description="folder the data storage service writes results to (required)"
    )
    bind_host: str = Field(
        "127.0.0.1", description="address the gRPC and metrics servers listen on (0.0.0.0 in containers)"
    )
    image_input_port: int = _port(50051, "gRPC port of the image input service (the public API)")
    face_landmark_port: int = _port(50052, "gRPC port of the face landmark service")
    age_gender_port: int = _port(50053, "gRPC port of the age gender service")
    data_storage_port: int = _port(50054, "gRPC port of the data storage service")
    face_landmark_addr: str = Field(
        "", description="where the image input service reaches face landmark (default 127.0.0.1:its port)"
    )
    age_gender_addr: str = Field(
        "", description="where the image input service reaches age gender (default 127.0.0.1:its port)"
    )
    data_storage_addr: str = Field(
        "", description="where the image input service reaches data storage (default 127.0.0.1:its port)"
    )
    image_input_metrics_port: int = _port(9101, "Prometheus metrics port of the image input service (0: off)")
    face_landmark_metrics_port: int = _port(
        9102, "Prometheus metrics port of the face landmark service (0: off)"
    )
    age_gender_metrics_port: int = _port(9103, "Prometheus metrics port of the age gender service (0: off)")
    data_storage_metrics_port: int = _port(
        9104, "Prometheus metrics port of the data storage service (0: off)"
    )
    grpc_workers: int = Field(
        8, ge=1, description="threads serving RPCs per service (concurrent requests beyond it queue)"
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024, ge=1, description="largest gRPC message accepted (an image sent to the API)"
    )
    max_in_flight: int = Field(4, ge=1, description="folder jobs one image input replica drives at once")
    max_attempts: int = Field(
        3, ge=1, description="attempts before a failing job ends as an `internal_error` result"
    )
    rpc_timeout_s: float = Field(30.0, gt=0, description="deadline of one call to a service")
    job_timeout_s: float = Field(
        300.0, gt=0, description="a job not done after this long ends as an `internal_error` result"
    )
    claim_idle_s: float = Field(
        30.0, gt=0, description="a queued job held this long by a silent (crashed) replica is taken over"
    )
    poll_interval_s: float = Field(
        0.5,
        gt=0,
        description="how often the input folder is listed (a file is read once its size and mtime hold)",
    )
    rescan_interval_s: float = Field(
        30.0, gt=0, description="how often every input without a result is checked against the queue"
    )
    intermediate_ttl_s: int = Field(
        3600, gt=0, description="lifetime of image bytes and partial results in Redis"
    )
    result_ttl_s: int = Field(86400, gt=0, description="how long results stay queryable by job id in Redis")
    shutdown_grace_s: float = Field(
        20.0, ge=0, description="on SIGTERM, time given to jobs in flight before they are handed back"
    )
    consumer_name: str = Field(
        "", description="this replica's name in the Redis consumer group (default host-pid)"
    )
    model_slots: int = Field(
        1,
        ge=1,
        description="model runs one face landmark or age gender process does at once (more: more memory)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr"
    )
    config_error_status: int = Field(
        EX_CONFIG,
        ge=0,
        le=255,
        description="exit status of a service whose settings or model files are wrong (78, EX_CONFIG: "
        "`face-analysis stack` stops; Compose sets 0, so that `restart: on-failure` does not "
        "restart a container that cannot start)",
    )
    analysis: AnalyzerConfig = Field(default_factory=AnalyzerConfig)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @staticmethod
    def config_error_status_of(environ: Mapping[str, str] | None = None) -> int:
        """`config_error_status` read on its own: a service must exit with it even when the
        other settings do not parse."""
        raw = (os.environ if environ is None else environ).get(ENV_PREFIX + "CONFIG_ERROR_STATUS", "")
        return int(raw) if raw.strip().isdigit() and int(raw) <= 255 else EX_CONFIG

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
