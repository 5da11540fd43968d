"""Each service builds only its own step: what it needs to start, and how it refuses to.

- data storage starts and serves with no model file at all; face landmark with the detector's
  model alone, age gender with the age and gender models alone;
- a misconfigured service exits once, with one line and the misconfiguration status (78,
  EX_CONFIG), and `face-analysis stack` stops instead of restarting it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from face_analysis.errors import EX_CONFIG
from face_analysis.models import MODELS, ModelPaths
from face_analysis.services.convert import result_json
from face_analysis.services.generated import aggregator_pb2, aggregator_pb2_grpc, common_pb2
from face_analysis.services.store import api_job_id
from services_support import Services, address, redis_server, service_environment


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _model_dir(tmp_path: Path, model_paths: ModelPaths, names: list[str]) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in names:
        (folder / MODELS[name].filename).symlink_to(model_paths.centerface.parent / MODELS[name].filename)
    return folder


def _serve(env: dict[str, str], service: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "face_analysis", "serve", service],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_data_storage_serves_without_any_model_file(redis_url: str, tmp_path: Path) -> None:
    env = service_environment(
        redis_url, None, tmp_path / "out", FACE_ANALYSIS_MODEL_DIR=str(tmp_path / "none")
    )
    running = Services(env, tmp_path)
    try:
        running.start("data-storage")
        with grpc.insecure_channel(address(env, "data-storage")) as channel:
            storage = aggregator_pb2_grpc.DataStorageStub(channel)
            request = aggregator_pb2.StoreRequest(
                job_id=api_job_id(),
                image_id="gave-up.jpg",
                output_name="gave-up.json",
                error=common_pb2.AnalysisError(code="internal_error", message="the job failed 3 times"),
            )
            reply = storage.Store(request, timeout=30)
        written = (tmp_path / "out" / "gave-up.json").read_text(encoding="utf-8")
        assert result_json(reply.result) == written
        assert json.loads(written)["error"]["code"] == "internal_error"
        running.assert_serving("data-storage")
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("service", "models"),
    [("face-landmark", ["centerface"]), ("age-gender", ["age", "gender"])],
)
def test_a_model_service_needs_only_its_own_models(
    redis_url: str, tmp_path: Path, model_paths: ModelPaths, service: str, models: list[str]
) -> None:
    folder = _model_dir(tmp_path, model_paths, models)
    env = service_environment(redis_url, None, tmp_path / "out", FACE_ANALYSIS_MODEL_DIR=str(folder))
    running = Services(env, tmp_path)
    try:
        running.start(service)
        running.assert_serving(service)
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("service", "extra", "message"),
    [
        ("face-landmark", {"FACE_ANALYSIS_DETECTOR": "roboflow"}, "needs a model id and a version"),
        (
            "face-landmark",
            {"FACE_ANALYSIS_DETECTOR": "roboflow", "ROBOFLOW_MODEL": "faces", "ROBOFLOW_VERSION": "1"},
            "ROBOFLOW_API_KEY",
        ),
        ("face-landmark", {"FACE_ANALYSIS_DETECT_SIZE": "12"}, "FACE_ANALYSIS_DETECT_SIZE='12'"),
        ("age-gender", {"FACE_ANALYSIS_MODEL_DIR": "/nonexistent"}, "age-v1.onnx is missing"),
        ("data-storage", {"FACE_ANALYSIS_LOG_LEVEL": "LOUD"}, "FACE_ANALYSIS_LOG_LEVEL='LOUD'"),
    ],
    ids=["roboflow-without-model", "roboflow-without-key", "bad-size", "no-models", "bad-log-level"],
)
def test_a_misconfigured_service_exits_once_with_one_line(
    redis_url: str, tmp_path: Path, service: str, extra: dict[str, str], message: str
) -> None:
    env = service_environment(redis_url, None, tmp_path / "out", **extra)
    env.pop("ROBOFLOW_API_KEY", None)
    done = _serve(env, service)
    assert done.returncode == EX_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    env["FACE_ANALYSIS_CONFIG_ERROR_STATUS"] = "0"  # as Compose sets it: `restart: on-failure` stops
    assert _serve(env, service).returncode == 0


def test_the_stack_stops_on_a_misconfigured_detector_instead_of_restarting_it(
    redis_url: str, tmp_path: Path
) -> None:
    """The Roboflow detector without its key: only face landmark finds out, when it builds it."""
    env = service_environment(redis_url, None, tmp_path / "out")
    env.pop("FACE_ANALYSIS_OUTPUT_DIR")
    env.pop("ROBOFLOW_API_KEY", None)
    env |= {"FACE_ANALYSIS_DETECTOR": "roboflow", "ROBOFLOW_MODEL": "faces", "ROBOFLOW_VERSION": "1"}
    command = ["stack", "up", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-m", "face_analysis", *command, "--redis-url", redis_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == EX_CONFIG, done.stderr[-2000:]
    entries = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    started = [e for e in entries if e.get("msg") == "service started" and e.get("child") == "face-landmark"]
    assert len(started) == 1, started
    assert any(e.get("msg") == "service cannot start; stopping the stack" for e in entries)
    assert [line for line in done.stderr.splitlines() if "ROBOFLOW_API_KEY" in line]
    assert not any(e.get("child") == "image-input" for e in entries if e.get("msg") == "service started")
