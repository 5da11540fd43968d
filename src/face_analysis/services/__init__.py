"""The distributed mode: four gRPC services with Redis between them (DESIGN.md section 2).

- image input (`image_input.py`: the public API; `watcher.py`, `workers.py`, `driver.py`):
  watches the input folder, serves the public API, drives jobs
- face landmark (`face_landmark.py`): decode + `steps.build_detector`'s step
- age gender (`age_gender.py`): `steps.build_estimator`'s step
- data storage (`data_storage.py`): `results.faces_of` + `results.make_result` + `write_json_atomic`

Each is a thin adapter around the library and builds only its own step; `store.py` is the
Redis layout, `convert.py` the protobuf forms, `settings.py` the environment variables,
`health.py` the health check, `stack.py` the local launcher. Needs the `services` extra.

Usage::

    face-analysis serve face-landmark          # one service, configured from FACE_ANALYSIS_* vars
    face-analysis stack up --input in/ --output out/
"""

from __future__ import annotations

import importlib

from .settings import SERVICES, ServiceName, Settings

__all__ = ["SERVICES", "ServiceName", "Settings", "serve"]


def serve(service: ServiceName, settings: Settings) -> None:
    """Run one service until SIGTERM/SIGINT (logs as JSON lines on stderr)."""
    from .common import configure_logging

    configure_logging(service, settings.log_level)
    module = importlib.import_module(f".{service.replace('-', '_')}", __name__)
    module.serve(settings)
