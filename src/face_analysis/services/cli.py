"""What `face-analysis serve` and `face-analysis stack up` run (kept apart from the core CLI so
that the embedded mode never imports gRPC or Redis).

A service that cannot start as configured (bad settings, a missing or corrupt model file, the
Roboflow detector without its key, a missing extra) prints one line and exits with
`FACE_ANALYSIS_CONFIG_ERROR_STATUS` (78, EX_CONFIG): restarting it cannot help, so `face-analysis
stack` stops, and Compose, which sets the status to 0, does not restart it (`restart:
on-failure`). Any other failure (e.g. the port is taken) exits 1, which is worth a restart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, cast

import click

from ..errors import ModelError, SettingsError
from .settings import ServiceName, Settings


def _fail(message: object, status: int) -> NoReturn:
    click.echo(f"error: {message}".replace("\n", " "), err=True)
    sys.exit(status)


def serve_command(service: str) -> None:
    misconfigured = Settings.config_error_status_of()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        _fail(exc, misconfigured)
    try:
        import grpc  # noqa: F401  (the services extra)
        import prometheus_client  # noqa: F401
        import redis  # noqa: F401

        from . import serve
    except ImportError as exc:
        _fail(f"{exc}; install the services extra: pip install 'face-analysis[services]'", misconfigured)
    try:
        serve(cast(ServiceName, service), settings)
    except (ModelError, SettingsError, ImportError, ValueError) as exc:  # restarting cannot help
        _fail(exc, settings.config_error_status)
    except OSError as exc:  # e.g. the port is taken: worth a restart later
        _fail(exc, 1)


def stack_up_command(input_dir: Path, output_dir: Path, redis_url: str) -> None:
    input_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    overrides = {
        "FACE_ANALYSIS_INPUT_DIR": str(input_dir.resolve()),
        "FACE_ANALYSIS_OUTPUT_DIR": str(output_dir.resolve()),
        "FACE_ANALYSIS_REDIS_URL": redis_url,
        "PYTHONUNBUFFERED": "1",
    }
    environ = {**os.environ, **overrides}
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        from .common import configure_logging
        from .stack import Stack
    except ImportError as exc:
        _fail(f"{exc}; install the services extra: pip install 'face-analysis[services]'", 2)
    configure_logging("stack", settings.log_level)
    sys.exit(Stack(settings, environ).run())
