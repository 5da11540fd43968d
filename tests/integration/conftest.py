"""Fixtures for the services' integration tests: the four real services on localhost, once per
session, with a private redis-server (started and stopped here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services_support import Services, redis_server, service_environment


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """All four services (image input without a watched folder: API only).

    Messages are limited to 2 MiB so that the oversized-message tests stay small.
    """
    root = tmp_path_factory.mktemp("services")
    with redis_server(root / "redis") as url:
        env = service_environment(
            url,
            None,
            root / "output",
            FACE_ANALYSIS_MAX_MESSAGE_BYTES=str(2 * 1024 * 1024),
            FACE_ANALYSIS_THREADS="2",
        )
        running = Services(env, root)
        try:
            running.start("face-landmark", "age-gender", "data-storage", "image-input")
            yield running
        finally:
            running.stop()


@pytest.fixture(scope="session")
def output_dir(services: Services) -> Path:
    return Path(services.env["FACE_ANALYSIS_OUTPUT_DIR"])
