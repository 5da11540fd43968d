"""The distributed mode: four gRPC services with Redis between them (DESIGN.md section 2).

- image input (`image_input.py`): watches the input folder, serves the public API, drives jobs
- face landmark (`face_landmark.py`): `Analyzer.load` + `Analyzer.detect`
- age gender (`age_gender.py`): `Analyzer.load` + `Analyzer.estimate`
- data storage (`data_storage.py`): `faces_of` + `Analyzer.result` + `write_json_atomic`

Each is a thin adapter around the library; `store.py` is the Redis layout, `settings.py` the
environment variables, `stack.py` the local launcher. Needs the `services` extra.

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
