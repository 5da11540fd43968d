"""The Roboflow detector against a stand-in for Roboflow's hosted API on 127.0.0.1.

The stand-in answers as the documented object-detection endpoint does: ``POST /{model}/{version}
?api_key=...&confidence=...`` with a base64 image as the body, answering
``{"predictions": [{"x", "y", "width", "height", "confidence", "class", ...}], "image": {...}}``
with box centres in the pixels of the image it received. Each test scripts its replies (errors,
delays, malformed bodies). Nothing here reaches the internet.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from numpy.typing import NDArray
from PIL import Image

from face_analysis import Analyzer, AnalyzerConfig, ErrorCode, ImageResult
from face_analysis.cli import main
from face_analysis.detection.roboflow import RoboflowDetector, RoboflowSettings, _retry_after
from face_analysis.models import ModelPaths
from services_support import free_port

KEY = "rf-TEST-key-8c1f2e0a9d"  # must never show up in a result, a message or a log line
MODEL, VERSION = "faces-abc", 3
FACE = (180, 58, 271, 176)  # the astronaut's face in astronaut.jpg (512 x 512)


@dataclass
class Reply:
    """One scripted answer. body None: the face predictions for the uploaded image."""

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    include_image_size: bool = True
    extra: list[dict[str, Any]] = field(default_factory=list)  # more predictions, in upload pixels


@dataclass
class Seen:
    """What the stand-in received in one request."""

    path: str
    query: dict[str, str]
    content_type: str
    body_bytes: int
    image_size: tuple[int, int] | None  # (width, height) of the decoded upload


class FakeRoboflow:
    """A loopback HTTP server playing Roboflow's hosted detection API.

    Replies are used in order; the last one repeats. `original` is the size of the image the
    client analyses and `face` the face's box in it: they place the face in the (possibly
    resized) upload.
    """

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply()]
        self.seen: list[Seen] = []
        self.original = (512, 512)
        self.face: tuple[float, float, float, float] = FACE
        self.stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake.handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # the fake stays quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        size = None
        try:
            with Image.open(io.BytesIO(base64.b64decode(body, validate=True))) as image:
                size = image.size
        except Exception:
            pass
        self.seen.append(
            Seen(
                path=parts.path,
                query=dict(urllib.parse.parse_qsl(parts.query)),
                content_type=handler.headers.get("Content-Type", ""),
                body_bytes=len(body),
                image_size=size,
            )
        )
        reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
        if reply.delay:
            self.stop.wait(reply.delay)
        payload = reply.body if reply.body is not None else self.answer(size, reply)
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:  # the client gave up (timeout) and closed the connection
            pass

    def answer(self, size: tuple[int, int] | None, reply: Reply) -> bytes:
        """The documented success answer: the astronaut's face, in the pixels of the upload."""
        width, height = size or self.original
        sx, sy = width / self.original[0], height / self.original[1]
        x1, y1, x2, y2 = self.face[0] * sx, self.face[1] * sy, self.face[2] * sx, self.face[3] * sy
        face = {"x": (x1 + x2) / 2, "y": (y1 + y2) / 2, "width": x2 - x1, "height": y2 - y1}
        predictions = [
            {**face, "confidence": 0.913, "class": "face", "class_id": 0, "detection_id": "a1"},
            # below the default min_confidence of 0.5: dropped by the client
            {"x": 40.0, "y": 40.0, "width": 20.0, "height": 20.0, "confidence": 0.2, "class": "face"},
            *reply.extra,
        ]
        answer: dict[str, Any] = {"inference_id": "x", "time": 0.05, "predictions": predictions}
        if reply.include_image_size:
            answer["image"] = {"width": width, "height": height}
        return json.dumps(answer).encode()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to the stand-in must not go through a proxy set in the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("ROBOFLOW_API_KEY", KEY)


@pytest.fixture
def fake() -> Iterator[FakeRoboflow]:
    server = FakeRoboflow()
    server.thread.start()
    yield server
    server.stop.set()
    server.server.shutdown()
    server.server.server_close()


def settings(url: str, **overrides: Any) -> RoboflowSettings:
    """Fast settings for tests: short timeout, tiny backoff."""
    options: dict[str, Any] = {"timeout": 2.0, "retries": 2, "backoff": 0.01, "max_backoff": 0.05}
    return RoboflowSettings(model=MODEL, version=VERSION, api_url=url, **{**options, **overrides})


@pytest.fixture
def analyze(model_paths: ModelPaths) -> Callable[..., ImageResult]:
    """Analyse an image with the Roboflow detector chosen in the config (key from the env)."""

    def run(source: Any, rf: RoboflowSettings) -> ImageResult:
        config = AnalyzerConfig(threads=1, model_dir=model_paths.age.parent, detector="roboflow", roboflow=rf)
        return Analyzer(config).analyze(source)

    return run


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert "api_key=" + KEY[:6] not in text


def test_success_maps_boxes_and_estimates_age_and_gender(
    fake: FakeRoboflow,
    analyze: Callable[..., ImageResult],
    astronaut_path: Path,
    result_schema: dict[str, object],
    box_iou: Callable[..., float],
) -> None:
    result = analyze(astronaut_path, settings(fake.url, max_upload_side=256))

    assert result.error is None
    [face] = result.faces
    assert all(abs(a - b) <= 1 for a, b in zip(face.bbox, FACE, strict=True)), face.bbox
    assert box_iou(face.bbox, FACE) > 0.95
    assert face.confidence == pytest.approx(0.913)
    assert face.landmarks is None  # Roboflow gives boxes only ...
    assert 20 <= face.age_years <= 50  # ... yet age and gender come out, aligned from the box
    assert face.gender in ("Male", "Female") and 0.5 <= face.gender_confidence <= 1
    assert 0 < face.age_confidence < 1
    assert result.models["detector"] == f"roboflow:{MODEL}/{VERSION}"
    data = json.loads(result.to_json())
    jsonschema.validate(data, result_schema)
    assert data["faces"][0]["landmarks"] is None

    [seen] = fake.seen
    assert seen.path == f"/{MODEL}/{VERSION}"
    assert seen.query["api_key"] == KEY
    assert seen.query["confidence"] == "50"  # percent: read the same by the legacy and v2 APIs
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.image_size == (256, 256)  # shrunk to max_upload_side before upload


def test_reply_without_image_size_uses_the_upload_scale(
    fake: FakeRoboflow, astronaut_rgb: NDArray[np.uint8]
) -> None:
    fake.replies = [Reply(include_image_size=False)]
    detector = RoboflowDetector(settings(fake.url, max_upload_side=200))
    [face] = detector.detect(astronaut_rgb, 0.5)
    assert fake.seen[0].image_size == (200, 200)
    assert np.allclose(face.box, FACE, atol=1.5), face.box
    assert face.landmarks is None


def test_big_image_is_resized_within_limits_and_mapped_back(
    fake: FakeRoboflow, astronaut_rgb: NDArray[np.uint8]
) -> None:
    big = np.asarray(Image.fromarray(astronaut_rgb).resize((3000, 3000)))
    fake.original = (3000, 3000)
    fake.face = (FACE[0] * 3000 / 512, FACE[1] * 3000 / 512, FACE[2] * 3000 / 512, FACE[3] * 3000 / 512)
    detector = RoboflowDetector(settings(fake.url))  # default max_upload_side 1280
    [face] = detector.detect(big, 0.5)
    assert fake.seen[0].image_size == (1280, 1280)
    assert np.allclose(face.box, np.array(FACE) * 3000 / 512, atol=4), face.box

    # A byte limit below what 1280 px take: the upload shrinks further until it fits.
    detector = RoboflowDetector(settings(fake.url, max_upload_bytes=60_000))
    [face] = detector.detect(big, 0.5)
    assert fake.seen[1].body_bytes <= 60_000
    width, height = fake.seen[1].image_size or (0, 0)
    assert width == height < 1280
    assert np.allclose(face.box, np.array(FACE) * 3000 / 512, atol=12), face.box


def test_non_square_image_maps_x_and_y(fake: FakeRoboflow, astronaut_rgb: NDArray[np.uint8]) -> None:
    wide = np.zeros((512, 1024, 3), np.uint8)
    wide[:, :512] = astronaut_rgb
    fake.original = (1024, 512)
    [face] = RoboflowDetector(settings(fake.url, max_upload_side=640)).detect(wide, 0.5)
    assert fake.seen[0].image_size == (640, 320)
    assert np.allclose(face.box, FACE, atol=1.5), face.box


def test_classes_are_all_kept_unless_filtered(fake: FakeRoboflow, astronaut_rgb: NDArray[np.uint8]) -> None:
    person = {"x": 300.0, "y": 300.0, "width": 300.0, "height": 420.0, "confidence": 0.8, "class": "person"}
    fake.replies = [Reply(extra=[person])]
    assert len(RoboflowDetector(settings(fake.url)).detect(astronaut_rgb, 0.5)) == 2
    [face] = RoboflowDetector(settings(fake.url, classes=("Face",))).detect(astronaut_rgb, 0.5)
    assert np.allclose(face.box, FACE, atol=1.5)


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_is_an_error_result_that_never_shows_the_key(
    status: int,
    fake: FakeRoboflow,
    analyze: Callable[..., ImageResult],
    astronaut_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    # The worst case: the server echoes the request URL, key included, in its error.
    echo = json.dumps({"message": f"Unauthorized: /faces-abc/3?api_key={KEY}&confidence=50"}).encode()
    fake.replies = [Reply(status=status, body=echo)]
    result = analyze(astronaut_path, settings(fake.url))

    assert result.faces == ()
    assert result.error is not None and result.error.code == ErrorCode.DETECTOR_AUTH_FAILED
    assert f"HTTP {status}" in result.error.message and "ROBOFLOW_API_KEY" in result.error.message
    assert len(fake.seen) == 1  # a bad key is not retried
    out, err = capfd.readouterr()
    assert_no_key(result.error.message, result.to_json(), caplog.text, out, err)


def test_429_is_retried_after_retry_after(
    fake: FakeRoboflow,
    analyze: Callable[..., ImageResult],
    astronaut_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.replies = [
        Reply(status=429, body=b'{"message": "rate limited"}', headers={"Retry-After": "0.4"}),
        Reply(),
    ]
    start = time.perf_counter()
    result = analyze(astronaut_path, settings(fake.url))
    elapsed = time.perf_counter() - start

    assert result.error is None and len(result.faces) == 1
    assert len(fake.seen) == 2
    assert elapsed >= 0.4  # the backoff alone is <= 0.05 s: the wait came from Retry-After
    assert "429" in caplog.text and "retrying" in caplog.text
    assert_no_key(caplog.text)


def test_retry_after_beyond_the_limit_fails_at_once(
    fake: FakeRoboflow, astronaut_rgb: NDArray[np.uint8]
) -> None:
    fake.replies = [Reply(status=429, body=b"{}", headers={"Retry-After": "120"})]
    detector = RoboflowDetector(settings(fake.url, max_retry_after=1.0))
    with pytest.raises(Exception) as caught:
        detector.detect(astronaut_rgb, 0.5)
    assert getattr(caught.value, "code", None) == ErrorCode.DETECTOR_UNAVAILABLE
    assert "120" in str(caught.value)
    assert len(fake.seen) == 1


def test_500_forever_is_an_error_result_after_every_attempt(
    fake: FakeRoboflow, analyze: Callable[..., ImageResult], astronaut_path: Path
) -> None:
    fake.replies = [Reply(status=500, body=b"Internal Server Error")]
    result = analyze(astronaut_path, settings(fake.url, retries=2))

    assert result.error is not None and result.error.code == ErrorCode.DETECTOR_UNAVAILABLE
    assert "HTTP 500" in result.error.message and "3 attempts" in result.error.message
    assert len(fake.seen) == 3
    assert_no_key(result.error.message)


def test_timeout_is_retried_then_an_error_result(
    fake: FakeRoboflow, analyze: Callable[..., ImageResult], astronaut_path: Path
) -> None:
    fake.replies = [Reply(delay=1.5)]
    start = time.perf_counter()
    result = analyze(astronaut_path, settings(fake.url, timeout=0.3, retries=1))
    elapsed = time.perf_counter() - start

    assert result.error is not None and result.error.code == ErrorCode.DETECTOR_UNAVAILABLE
    assert "timed out" in result.error.message and "2 attempts" in result.error.message
    assert len(fake.seen) == 2
    assert elapsed < 1.4  # gave up at the client's timeout, not the server's pace
    assert_no_key(result.error.message)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"predictions": [', "malformed JSON"),
        (b"<html>Bad gateway</html>", "malformed JSON"),
        (b'{"error": "nope"}', "'predictions'"),
        (b'{"predictions": [{"x": "a"}]}', "malformed prediction"),
    ],
)
def test_malformed_answers_are_a_clear_error(
    body: bytes, words: str, fake: FakeRoboflow, analyze: Callable[..., ImageResult], astronaut_path: Path
) -> None:
    fake.replies = [Reply(body=body)]
    result = analyze(astronaut_path, settings(fake.url))
    assert result.error is not None and result.error.code == ErrorCode.DETECTOR_FAILED
    assert words in result.error.message
    assert len(fake.seen) == 1


def test_404_names_the_model_and_is_not_retried(
    fake: FakeRoboflow, analyze: Callable[..., ImageResult], astronaut_path: Path
) -> None:
    fake.replies = [Reply(status=404, body=b'{"message": "Model not found"}')]
    result = analyze(astronaut_path, settings(fake.url))
    assert result.error is not None and result.error.code == ErrorCode.DETECTOR_FAILED
    assert "Model not found" in result.error.message and "version" in result.error.message
    assert len(fake.seen) == 1


def test_connection_refused_is_an_error_result(
    analyze: Callable[..., ImageResult], astronaut_path: Path
) -> None:
    port = free_port()  # a port nobody listens on
    result = analyze(astronaut_path, settings(f"http://127.0.0.1:{port}", retries=1))
    assert result.error is not None and result.error.code == ErrorCode.DETECTOR_UNAVAILABLE
    assert "connection failed" in result.error.message
    assert_no_key(result.error.message)


def test_missing_key_or_model_is_refused_up_front(
    monkeypatch: pytest.MonkeyPatch, model_paths: ModelPaths
) -> None:
    monkeypatch.delenv("ROBOFLOW_API_KEY")
    config = AnalyzerConfig(
        model_dir=model_paths.age.parent, detector="roboflow", roboflow=settings("http://x")
    )
    with pytest.raises(ValueError, match="ROBOFLOW_API_KEY"):
        Analyzer(config)
    with pytest.raises(ValueError, match="model id and a version"):
        AnalyzerConfig(detector="roboflow")

    runner = CliRunner()
    args = ["analyze", str(model_paths.age), "-o", "out", "--detector", "roboflow"]
    result = runner.invoke(main, [*args, "--roboflow-model", MODEL, "--roboflow-version", "3"])
    assert result.exit_code == 2 and "ROBOFLOW_API_KEY" in result.output
    result = runner.invoke(main, args, env={"ROBOFLOW_API_KEY": KEY})
    assert result.exit_code == 2 and "--roboflow-model" in result.output


def test_cli_selects_roboflow_from_flags_and_env(
    fake: FakeRoboflow, astronaut_path: Path, tmp_path: Path, model_paths: ModelPaths
) -> None:
    runner = CliRunner()
    env = {
        "ROBOFLOW_API_KEY": KEY,
        "ROBOFLOW_API_URL": fake.url,
        "FACE_ANALYSIS_MODEL_DIR": str(model_paths.age.parent),
    }
    flags = ["--detector", "roboflow", "--roboflow-model", MODEL, "--roboflow-version", str(VERSION)]
    result = runner.invoke(main, ["analyze", str(astronaut_path), "-o", str(tmp_path / "a"), *flags], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "a" / "astronaut.json").read_text())
    assert data["models"]["detector"] == f"roboflow:{MODEL}/{VERSION}"
    assert len(data["faces"]) == 1 and data["faces"][0]["landmarks"] is None

    env |= {"FACE_ANALYSIS_DETECTOR": "roboflow", "ROBOFLOW_MODEL": MODEL, "ROBOFLOW_VERSION": "7"}
    fake.replies = [Reply(status=401, body=json.dumps({"message": f"bad key {KEY}"}).encode())]
    result = runner.invoke(main, ["analyze", str(astronaut_path), "-o", str(tmp_path / "b")], env=env)
    assert result.exit_code == 1
    assert "detector_auth_failed" in result.output
    assert fake.seen[-1].path == f"/{MODEL}/7"
    assert_no_key(result.output, (tmp_path / "b" / "astronaut.json").read_text())


def test_retry_after_header_forms() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after("0.25") == 0.25
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now
    assert _retry_after("soon") is None and _retry_after(None) is None
