"""What `face-analysis serve` and `face-analysis stack up` run (kept apart from the core CLI so
that the embedded mode never imports gRPC or Redis)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import cast

import click

from ..errors import ModelError
from .settings import ServiceName, Settings, SettingsError


def _settings(environ: dict[str, str] | None = None) -> Settings:
    try:
        return Settings.from_env(environ)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def serve_command(service: str) -> None:
    settings = _settings()
    try:
        import grpc  # noqa: F401  (the services extra)
        import prometheus_client  # noqa: F401
        import redis  # noqa: F401

        from . import serve
    except ImportError as exc:
        click.echo(
            f"error: {exc}; install the services extra: pip install 'face-analysis[services]'", err=True
        )
        sys.exit(2)
    try:
        serve(cast(ServiceName, service), settings)
    except ModelError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    except SettingsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # e.g. the port is taken: worth a restart later
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


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
    settings = _settings(environ)
    try:
        from .common import configure_logging
        from .stack import Stack
    except ImportError as exc:
        click.echo(
            f"error: {exc}; install the services extra: pip install 'face-analysis[services]'", err=True
        )
        sys.exit(2)
    configure_logging("stack", settings.log_level)
    sys.exit(Stack(settings, environ).run())
