"""Fixtures for the services' integration tests: the four real services on localhost, once per
session, with a private redis-server (started and stopped here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services_support import SERVICE_NAMES, Services, address, redis_server, service_environment


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


# The services' packages (gRPC, Redis) are imported in the fixtures: the other integration tests
# here run without them.


@pytest.fixture(scope="session")
def store(services: Services) -> Any:
    """The services' Redis, as they see it (a JobStore)."""
    from face_analysis.services.settings import Settings
    from face_analysis.services.store import JobStore

    return JobStore(Settings.from_env(services.env))


@pytest.fixture(scope="session")
def channels(services: Services) -> Iterator[dict[str, Any]]:
    """A gRPC channel to each service, by name."""
    import grpc

    opened = {name: grpc.insecure_channel(address(services.env, name)) for name in SERVICE_NAMES}
    yield opened
    for channel in opened.values():
        channel.close()
