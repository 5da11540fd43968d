"""Result types, their JSON form, output naming and the atomic writer.

The JSON keeps the seed's keys and meanings (`image_id`, `faces[].bbox`, `confidence`, `age`,
`age_confidence`, `gender`, `gender_confidence`, `processing_time`) and adds landmarks,
`age_years`, image size, schema version, model ids, timings and an `error` object.
`schema/result.schema.json` describes it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .attributes._types import AgeGender
from .detection._types import Detection
from .errors import AnalysisError, ErrorCode

__all__ = [
    "LANDMARK_NAMES",
    "SCHEMA_VERSION",
    "Face",
    "ImageResult",
    "ResultError",
    "Stamp",
    "faces_of",
    "make_result",
    "output_names",
    "write_atomic",
    "write_json_atomic",
]

SCHEMA_VERSION = "1.0"
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True, slots=True)
class Face:
    """One face: box and landmarks in upright original-image pixels, estimates, confidences."""

    bbox: tuple[int, int, int, int]
    confidence: float
    landmarks: dict[str, tuple[float, float]] | None
    age: str
    age_years: float
    age_confidence: float
    gender: str
    gender_confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": list(self.bbox),
            "confidence": round(self.confidence, 4),
            "landmarks": None
            if self.landmarks is None
            else {k: [round(x, 1), round(y, 1)] for k, (x, y) in self.landmarks.items()},
            "age": self.age,
            "age_years": round(self.age_years, 1),
            "age_confidence": round(self.age_confidence, 4),
            "gender": self.gender,
            "gender_confidence": round(self.gender_confidence, 4),
        }


@dataclass(frozen=True, slots=True)
class ResultError:
    """Why an image has no analysis: a stable machine-readable code and a message for people."""

    code: ErrorCode
    message: str

    @classmethod
    def of(cls, exc: Exception) -> ResultError:
        """The error result of a step that raised `exc`: its own code and message for an
        `AnalysisError`, else `internal_error` naming the exception."""
        if isinstance(exc, AnalysisError):
            return cls(exc.code, exc.message)
        return cls(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class Stamp:
    """Which models and settings a result comes from: its JSON's `models` and `settings`.

    Each step stamps what it runs (the detector its model, name and settings; the estimator its
    models); `merge` puts the parts together as results list them.
    """

    models: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def merge(self, other: Stamp) -> Stamp:
        """Both stamps' entries (`other`'s win), with the detector's name listed last."""
        models = {**self.models, **other.models}
        if "detector" in models:
            models["detector"] = models.pop("detector")
        return Stamp(models, {**self.settings, **other.settings})


@dataclass(frozen=True, slots=True)
class ImageResult:
    """Everything known about one input image: its faces, or the error that stopped it."""

    image_id: str
    faces: tuple[Face, ...]
    width: int | None
    height: int | None
    processing_time: datetime
    models: dict[str, str]
    settings: dict[str, Any]
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: ResultError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "image_id": self.image_id,
            "width": self.width,
            "height": self.height,
            "faces": [face.to_dict() for face in self.faces],
            "processing_time": self.processing_time.isoformat(),
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "models": self.models,
            "settings": self.settings,
            "error": None
            if self.error is None
            else {"code": self.error.code.value, "message": self.error.message},
        }

    def to_json(self) -> str:
        """Exactly what `face-analysis analyze` writes."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ImageResult:
        """The result a JSON written by `to_json` describes (`to_json` gives the text back).

        Raises:
            ValueError: not such a JSON (e.g. an unknown error code, a missing key).
        """
        try:
            data = json.loads(text)
            error = data["error"]
            return cls(
                image_id=data["image_id"],
                faces=tuple(
                    Face(
                        bbox=tuple(face["bbox"]),
                        confidence=face["confidence"],
                        landmarks=None
                        if face["landmarks"] is None
                        else {k: (x, y) for k, (x, y) in face["landmarks"].items()},
                        age=face["age"],
                        age_years=face["age_years"],
                        age_confidence=face["age_confidence"],
                        gender=face["gender"],
                        gender_confidence=face["gender_confidence"],
                    )
                    for face in data["faces"]
                ),
                width=data["width"],
                height=data["height"],
                processing_time=datetime.fromisoformat(data["processing_time"]),
                models=data["models"],
                settings=data["settings"],
                timings_ms=data["timings_ms"],
                error=None if error is None else ResultError(ErrorCode(error["code"]), error["message"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a result JSON: {exc!r}") from None


def faces_of(detections: Sequence[Detection], estimates: Sequence[AgeGender]) -> tuple[Face, ...]:
    """Result faces from the detector's and the estimator's outputs, in detection order."""
    return tuple(
        Face(
            bbox=(round(d.box[0]), round(d.box[1]), round(d.box[2]), round(d.box[3])),
            confidence=d.score,
            landmarks=None
            if d.landmarks is None
            else {n: (float(x), float(y)) for n, (x, y) in zip(LANDMARK_NAMES, d.landmarks, strict=True)},
            age=e.age_range,
            age_years=e.age_years,
            age_confidence=e.age_confidence,
            gender=e.gender,
            gender_confidence=e.gender_confidence,
        )
        for d, e in zip(detections, estimates, strict=True)
    )


def make_result(
    image_id: str,
    faces: tuple[Face, ...],
    size: tuple[int, int] | None,
    started: datetime,
    timings: dict[str, float],
    stamp: Stamp,
    error: ResultError | None = None,
) -> ImageResult:
    """The result of one image: its faces (or error), its size (width, height; None if it was
    never decoded), when it started, its step timings in ms, and the stamp of what made it."""
    return ImageResult(
        image_id=image_id,
        faces=faces,
        width=None if size is None else size[0],
        height=None if size is None else size[1],
        processing_time=started,
        models=dict(stamp.models),
        settings=dict(stamp.settings),
        timings_ms=timings,
        error=error,
    )


def write_json_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) atomically, as `write_atomic` does."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file.

    `write` fills the open binary file; the result is readable by everyone the umask allows.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            # mkstemp makes the file private (0600); results are for everyone the umask allows.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o644 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def output_names(relative_inputs: Iterable[PurePosixPath]) -> dict[PurePosixPath, PurePosixPath]:
    """Result file name for each input path (relative to its input root).

    The seed's rule, `photo.jpg` -> `photo.json`, unless two inputs in one folder share a
    base name (`a.jpg`, `a.png`): then each keeps its extension (`a.jpg.json`, `a.png.json`).
    """
    inputs = list(relative_inputs)
    stems = Counter(path.with_suffix("") for path in inputs)
    return {
        path: path.with_suffix(".json")
        if stems[path.with_suffix("")] == 1
        else path.with_name(path.name + ".json")
        for path in inputs
    }
