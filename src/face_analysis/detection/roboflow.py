"""Faces from a Roboflow-hosted object-detection model, over Roboflow's inference HTTP API.

Usage::

    settings = RoboflowSettings(model="my-faces", version=3)
    detector = RoboflowDetector(settings)          # the key comes from $ROBOFLOW_API_KEY
    faces = detector.detect(rgb, min_confidence=0.5)

The request is the documented hosted-inference call: ``POST {api_url}/{model}/{version}
?api_key=...&confidence=...`` with the base64 JPEG as the body (``Content-Type:
application/x-www-form-urlencoded``); the answer is ``{"predictions": [{"x", "y", "width",
"height", "confidence", "class", ...}], "image": {"width", "height"}}``, x/y being box centres
in the pixels of the image the server received.

- The image is shrunk before upload so its long side is at most `max_upload_side` (and the
  request stays under `max_upload_bytes`; the legacy hosted API takes at most 5 MB, the
  serverless v2 API 20 MB); the boxes are mapped back to original-image pixels.
- Boxes only: Roboflow object-detection models give no landmarks, so detections carry
  ``landmarks=None`` and the pipeline aligns those faces from the box (`box_landmarks`).
- All classes are kept unless `classes` names some (case-insensitive): a face model's classes
  are faces whatever it calls them ("face", "Face", "human-face", ...).
- Retries with exponential backoff on 408/429/5xx and connection errors and timeouts,
  honouring ``Retry-After``; 401/403 fail at once (`detector_auth_failed`), as does every
  other 4xx or a malformed answer (`detector_failed`); an API still failing after the last
  attempt gives `detector_unavailable`. The API key never appears in an error or a log line.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import http.client
import json
import logging
import math
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any, NoReturn

import cv2
import numpy as np

from ..errors import AnalysisError, ErrorCode
from ..imaging import RGBImage
from ..settings import DEFAULT_ROBOFLOW_API_URL, RoboflowSettings
from ._types import Detection
from .nms import nms

__all__ = [
    "DEFAULT_API_URL",
    "ROBOFLOW_API_KEY_ENV",
    "RoboflowDetector",
    "RoboflowSettings",
    "api_key_from_env",
]

# The key is read from the environment only, never from settings or the command line.
ROBOFLOW_API_KEY_ENV = "ROBOFLOW_API_KEY"
DEFAULT_API_URL = DEFAULT_ROBOFLOW_API_URL

_LOG = logging.getLogger(__name__)
_JPEG_QUALITY = 90
_SHRINK_STEP = 0.75  # when a JPEG is over the byte limit, shrink it by this and try again
_NMS_IOU = 0.5  # the API suppresses overlaps per class; this removes one face found as two classes
_SNIPPET = 200  # characters of an error answer quoted in a message
_KEY_PARAM = re.compile(r"(api_key=)[^&\s'\"]*", re.IGNORECASE)
_AUTH_HINT = f"check the key in ${ROBOFLOW_API_KEY_ENV} and that it may use this model"
_CLIENT_HINTS = {
    402: "the Roboflow plan's limit or quota is reached",
    404: "no such model or version: check the Roboflow model id and version",
    413: "the upload is too large: lower max_upload_side / max_upload_bytes",
    423: "the Roboflow workspace is locked (billing)",
}


def _retryable(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status != 501)


def api_key_from_env() -> str:
    """The Roboflow API key from ``$ROBOFLOW_API_KEY``; ValueError naming the variable if unset."""
    key = os.environ.get(ROBOFLOW_API_KEY_ENV, "").strip()
    if not key:
        raise ValueError(
            f"the Roboflow detector needs an API key: set the environment variable {ROBOFLOW_API_KEY_ENV}"
        )
    return key


class RoboflowDetector:
    """Face boxes (no landmarks) from a Roboflow-hosted object-detection model.

    `api_key` defaults to ``$ROBOFLOW_API_KEY`` (the only place the Analyzer and the CLI take
    it from). Failures raise `AnalysisError` with a detector error code; messages never hold
    the key.
    """

    def __init__(self, settings: RoboflowSettings, api_key: str | None = None) -> None:
        settings.check_complete()
        self.settings = settings
        self._key = api_key if api_key is not None else api_key_from_env()
        self.name = settings.detector_name
        self._endpoint = (
            f"{settings.api_url.rstrip('/')}/{urllib.parse.quote(str(settings.model))}/{settings.version}"
        )
        self._classes = frozenset(c.lower() for c in settings.classes)

    def detect(self, image: RGBImage, min_confidence: float) -> list[Detection]:
        height, width = image.shape[:2]
        body, (sent_w, sent_h) = self._encode(image)
        answer = self._post(body, min_confidence)
        served_w, served_h = _served_size(answer, (sent_w, sent_h))
        scale_x, scale_y = width / served_w, height / served_h
        boxes: list[list[float]] = []
        scores: list[float] = []
        for prediction in _predictions(answer):
            label = str(prediction.get("class", "")).lower()
            score = _number(prediction, "confidence")
            if score < min_confidence or (self._classes and label not in self._classes):
                continue
            cx, cy = _number(prediction, "x") * scale_x, _number(prediction, "y") * scale_y
            half_w, half_h = (
                _number(prediction, "width") * scale_x / 2,
                _number(prediction, "height") * scale_y / 2,
            )
            x1, x2 = max(0.0, cx - half_w), min(float(width), cx + half_w)
            y1, y2 = max(0.0, cy - half_h), min(float(height), cy + half_h)
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                boxes.append([x1, y1, x2, y2])
                scores.append(min(score, 1.0))
        if not boxes:
            return []
        box_array, score_array = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        return [
            Detection(
                box=(boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3]), score=scores[i], landmarks=None
            )
            for i in nms(box_array, score_array, _NMS_IOU)
        ]

    def _encode(self, image: RGBImage) -> tuple[bytes, tuple[int, int]]:
        """The base64 JPEG body, its long side at most `max_upload_side`, its size under the limit."""
        height, width = image.shape[:2]
        side = min(self.settings.max_upload_side, max(height, width))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        while True:
            scale = side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            resized = bgr if size == (width, height) else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
            if not ok:
                raise AnalysisError(
                    ErrorCode.DETECTOR_FAILED, "could not encode the image as JPEG for upload"
                )
            body = base64.b64encode(jpeg.tobytes())
            if len(body) <= self.settings.max_upload_bytes or side <= 32:
                return body, size
            side = max(32, math.floor(side * _SHRINK_STEP))

    def _post(self, body: bytes, min_confidence: float) -> dict[str, Any]:
        # The API reads confidence >= 1 as a percentage (the legacy API only knows 0-100), so
        # send whole percent, rounded down and at least 1; our own threshold is applied after.
        percent = max(1, math.floor(min_confidence * 100))
        query = urllib.parse.urlencode({"api_key": self._key, "confidence": percent, "format": "json"})
        attempts = self.settings.retries + 1
        for attempt in range(1, attempts + 1):
            raw, status, problem, retry_after = self._attempt(f"{self._endpoint}?{query}", body)
            if raw is not None:
                return self._parse(raw)
            if status is not None and not _retryable(status):
                self._fail_client(status, problem)
            if attempt == attempts:
                break
            delay = min(self.settings.max_backoff, self.settings.backoff * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            if retry_after is not None:
                if retry_after > self.settings.max_retry_after:
                    self._fail_unavailable(f"{problem}; it asks to wait {retry_after:g} s before retrying")
                delay = max(delay, retry_after)
            _LOG.warning(
                "Roboflow API %s: %s (attempt %d of %d); retrying in %.2f s",
                self.name,
                problem,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
        plural = "s" if attempts > 1 else ""
        self._fail_unavailable(f"{problem} (gave up after {attempts} attempt{plural})")

    def _attempt(self, url: str, body: bytes) -> tuple[bytes | None, int | None, str, float | None]:
        """One request: (answer body, None, "", None) on success, else (None, HTTP status or None
        for a connection failure, what went wrong (scrubbed), Retry-After seconds or None).

        Nothing raised here carries the request (whose URL holds the key) out of this method.
        """
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                raw: bytes = response.read()
            return raw, None, "", None
        except urllib.error.HTTPError as exc:
            with exc:
                detail = self._detail(exc)
                problem = f"HTTP {exc.code}" + (f" ({detail})" if detail else "")
                return None, exc.code, problem, _retry_after(exc.headers.get("Retry-After"))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            kind = "timed out" if isinstance(reason, TimeoutError) else "connection failed"
            text = str(reason) or type(reason).__name__
            return None, None, f"{kind}: {self._scrub(text)}", None

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            snippet = self._scrub(raw[:4096].decode("utf-8", "replace"))[:80]
            raise AnalysisError(
                ErrorCode.DETECTOR_FAILED,
                f"the Roboflow API ({self.name}) answered with malformed JSON: {snippet!r}",
            ) from None
        if not isinstance(answer, dict) or not isinstance(answer.get("predictions"), list):
            raise AnalysisError(
                ErrorCode.DETECTOR_FAILED,
                f"the Roboflow API ({self.name}) answered without a 'predictions' list: is the model an "
                "object-detection model?",
            )
        return answer

    def _detail(self, exc: urllib.error.HTTPError) -> str:
        """The server's own words about an error, shortened and scrubbed of the key."""
        try:
            text = exc.read(4096).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            return ""
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            text = str(parsed.get("message") or parsed.get("error") or parsed.get("detail") or text)
        text = self._scrub(" ".join(text.split()))  # scrub before cutting: no half key survives
        return text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else "")

    def _fail_client(self, status: int, problem: str) -> NoReturn:
        if status in (401, 403):
            raise AnalysisError(
                ErrorCode.DETECTOR_AUTH_FAILED,
                f"the Roboflow API ({self.name}) refused the API key: {problem}; {_AUTH_HINT}",
            )
        hint = _CLIENT_HINTS.get(status, "the API refused the request")
        raise AnalysisError(
            ErrorCode.DETECTOR_FAILED, f"the Roboflow API ({self.name}) answered {problem}: {hint}"
        )

    def _fail_unavailable(self, problem: str) -> NoReturn:
        raise AnalysisError(
            ErrorCode.DETECTOR_UNAVAILABLE, f"the Roboflow API ({self.name}) failed: {problem}"
        )

    def _scrub(self, text: str) -> str:
        """`text` without the API key (literally or as a URL parameter)."""
        if self._key:
            text = text.replace(self._key, "***").replace(urllib.parse.quote_plus(self._key), "***")
        return _KEY_PARAM.sub(r"\1***", text)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _malformed(what: str) -> NoReturn:
    raise AnalysisError(ErrorCode.DETECTOR_FAILED, f"the Roboflow API answered with a malformed {what}")


def _number(item: dict[str, Any], key: str) -> float:
    value = item.get(key)
    number = math.nan
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if not math.isfinite(number):
        _malformed(f"prediction (its {key!r} is {value!r})")
    return number


def _predictions(answer: dict[str, Any]) -> list[dict[str, Any]]:
    predictions: list[Any] = answer["predictions"]
    if not all(isinstance(p, dict) for p in predictions):
        _malformed("'predictions' list")
    return predictions


def _served_size(answer: dict[str, Any], sent: tuple[int, int]) -> tuple[float, float]:
    """The size of the image the server saw (its answer's ``image``), else the size we sent."""
    image = answer.get("image")
    try:
        width, height = float(image["width"]), float(image["height"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return float(sent[0]), float(sent[1])
    if math.isfinite(width) and math.isfinite(height) and width >= 1 and height >= 1:
        return width, height
    return float(sent[0]), float(sent[1])
