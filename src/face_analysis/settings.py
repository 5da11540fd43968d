"""The analysis settings: one typed object, each option defined once.

Every option is a field of a `SettingsModel` with its type, default and constraints, and a
`description` (its help text). From that one definition come its environment variable (the
model's `env_prefix` + the field's name upper-cased), its command-line option (`--` + the
model's `cli_prefix` + the name with dashes) and the services' table of variables. Fields
without a description are settings for Python callers only (e.g. the decode limits).

Usage::

    config = AnalyzerConfig(detect_size=1024)               # validated; ValueError when wrong
    config = AnalyzerConfig.from_env()                      # FACE_ANALYSIS_* and ROBOFLOW_*
    [(o.env, o.flag, o.help) for o in AnalyzerConfig.options()]

A new analysis option is one field here (plus its use); the CLI, the services, the README
check and the compose/.env.example checks pick it up.

This module imports nothing heavy (no NumPy, no model runtime): the command line builds its
options from it before any model code is loaded.
"""

from __future__ import annotations

import os
import re
import types
import typing
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from .errors import SettingsError

__all__ = [
    "DETECTORS",
    "PRECISIONS",
    "PRESETS",
    "RUNTIMES",
    "AnalyzerConfig",
    "Cli",
    "DecodeLimits",
    "DetectorName",
    "Option",
    "Precision",
    "Preset",
    "RoboflowSettings",
    "Runtime",
    "SettingsModel",
]

DetectorName = Literal["centerface", "roboflow"]
Preset = Literal["fast", "accurate"]
Runtime = Literal["onnxruntime", "openvino"]
Precision = Literal["auto", "fp32", "int8"]
DETECTORS: tuple[str, ...] = get_args(DetectorName)
PRESETS: tuple[str, ...] = get_args(Preset)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True, slots=True)
class Cli:
    """How an option shows on the command line, where the defaults do not suit (Annotated metadata).

    flag: the option's name instead of the derived one; metavar: the placeholder in --help.
    """

    flag: str | None = None
    metavar: str | None = None


@dataclass(frozen=True, slots=True)
class Option:
    """One option as the outside sees it: where it sits, its variable, its flag and its help."""

    path: tuple[str, ...]  # field names from the top model down, e.g. ("roboflow", "model")
    env: str
    flag: str
    help: str
    field: FieldInfo
    metavar: str | None

    @property
    def name(self) -> str:
        """The command line's parameter name: the path joined by underscores."""
        return "_".join(self.path)

    @property
    def default(self) -> Any:
        return self.field.get_default(call_default_factory=True)

    @property
    def annotation(self) -> Any:
        """The field's type without `None` (an optional option is simply not given)."""
        kind = self.field.annotation
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kinds = [k for k in get_args(kind) if k is not type(None)]
            kind = kinds[0] if len(kinds) == 1 else kind
        return kind

    @property
    def bounds(self) -> dict[str, float]:
        """The numeric constraints: any of ge, gt, le, lt."""
        found: dict[str, float] = {}
        for item in self.field.metadata:
            for kind, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
                if isinstance(item, kind):
                    found[key] = getattr(item, key)
        return found

    @property
    def is_sequence(self) -> bool:
        return typing.get_origin(self.annotation) is tuple

    def parse(self, raw: str) -> Any:
        """An environment variable's text as the field takes it (sequences: space/comma separated)."""
        return tuple(part for part in re.split(r"[,\s]+", raw) if part) if self.is_sequence else raw


class SettingsModel(BaseModel):
    """A frozen, validated group of settings whose described fields are options."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    env_prefix: ClassVar[str] = "FACE_ANALYSIS_"
    cli_prefix: ClassVar[str] = ""

    @classmethod
    def options(cls) -> list[Option]:
        """Every option of this model and of the settings models it holds, in field order."""
        return list(_options(cls, ()))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from environment variables; unset or empty ones keep their defaults.

        Raises:
            SettingsError: a variable has a value the option cannot take (one line naming it).
        """
        environ = os.environ if environ is None else environ
        values: dict[tuple[str, ...], Any] = {}
        labels: dict[tuple[str, ...], str] = {}
        for option in cls.options():
            raw = environ.get(option.env, "").strip()
            if raw:
                values[option.path] = option.parse(raw)
                labels[option.path] = f"{option.env}={raw!r}"
        return cls.from_values(values, labels)

    @classmethod
    def from_values(
        cls, values: Mapping[tuple[str, ...], Any], labels: Mapping[tuple[str, ...], str] | None = None
    ) -> Self:
        """The settings from option values by path (see `Option.path`); options not given keep
        their defaults.

        Raises:
            SettingsError: a value does not fit its option, or the values do not fit together;
                one line, naming the option by its label (e.g. its variable or flag) if given.
        """
        nested: dict[str, Any] = {}
        for path, value in values.items():
            target = nested
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = value
        try:
            return cls.model_validate(nested)
        except ValidationError as exc:
            error = exc.errors()[0]
            message = str(error["msg"]).removeprefix("Value error, ")
            where = (labels or {}).get(tuple(str(part) for part in error["loc"]))
            raise SettingsError(f"{where}: {message}" if where else message) from None

    @classmethod
    def variables(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every option: the README's tables."""
        return [(o.env, _default_text(o.default), o.help) for o in cls.options()]


def _options(model: type[SettingsModel], path: tuple[str, ...]) -> Iterator[Option]:
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, SettingsModel):
            yield from _options(kind, (*path, name))
            continue
        if field.description is None:
            continue  # a setting for Python callers only
        cli = next((m for m in field.metadata if isinstance(m, Cli)), Cli())
        yield Option(
            path=(*path, name),
            env=model.env_prefix + name.upper(),
            flag=cli.flag or "--" + model.cli_prefix + name.replace("_", "-"),
            help=field.description,
            field=field,
            metavar=cli.metavar,
        )


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


class DecodeLimits(SettingsModel):
    """Refuse inputs above these sizes before decoding them."""

    max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_pixels: int = Field(100_000_000, gt=0)


DEFAULT_ROBOFLOW_API_URL = "https://detect.roboflow.com"


class RoboflowSettings(SettingsModel):
    """Which Roboflow model to call and how; the API key is not here (`ROBOFLOW_API_KEY` only).

    timeout: seconds per attempt for connecting and for each read.
    retries: further attempts after a failed one (429, 5xx, connection error, timeout).
    backoff: first wait between attempts in seconds, doubled each time (with jitter), at most
        `max_backoff`; a longer ``Retry-After`` is honoured up to `max_retry_after`, beyond
        which the image fails at once rather than block the batch.
    max_upload_side: the image is shrunk so its long side is at most this before upload
        (models run at 640 px or less, so more pixels only cost upload time).
    max_upload_bytes: the base64 body is kept under this (the legacy hosted API's limit is 5 MB).
    """

    env_prefix: ClassVar[str] = "ROBOFLOW_"
    cli_prefix: ClassVar[str] = "roboflow-"

    model: Annotated[str | None, Cli(metavar="ID")] = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Roboflow model id, as in its URL https://detect.roboflow.com/ID/N.",
    )
    version: Annotated[int | None, Cli(metavar="N")] = Field(
        None, ge=0, description="Roboflow model version."
    )
    api_url: Annotated[str, Cli(metavar="URL")] = Field(
        DEFAULT_ROBOFLOW_API_URL,
        description="Roboflow inference server (https://serverless.roboflow.com or a self-hosted "
        "Roboflow Inference server answer the same call).",
    )
    classes: Annotated[tuple[str, ...], Cli(flag="--roboflow-class", metavar="NAME")] = Field(
        (),
        description="Keep only this Roboflow class (case-insensitive; repeat for several); "
        "default: every class.",
    )
    timeout: float = Field(10.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff: float = Field(0.5, ge=0)
    max_backoff: float = Field(8.0, ge=0)
    max_retry_after: float = Field(60.0, ge=0)
    max_upload_side: int = Field(1280, ge=32, le=8192)
    max_upload_bytes: int = Field(4_000_000, ge=10_000)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urllib.parse.urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"the Roboflow API URL must start with http:// or https://: {value!r}")
        return value

    @property
    def detector_name(self) -> str:
        """How results name this detector: roboflow:MODEL/VERSION."""
        return f"roboflow:{self.model}/{self.version}"

    def check_complete(self) -> None:
        """Raise ValueError unless a model id and version are set."""
        if self.model is None or self.version is None:
            model, version = (f"{self.env_prefix}{name.upper()}" for name in ("model", "version"))
            raise ValueError(
                "the Roboflow detector needs a model id and a version: --roboflow-model and "
                f"--roboflow-version, or ${model} and ${version}"
            )


class AnalyzerConfig(SettingsModel):
    """How images are analysed: every option of `face-analysis analyze` and of the services.

    Python callers may also set `detect_size=None` (the native size), `limits` (decode limits)
    and the Roboflow client's timeouts in `roboflow`; the API key only ever comes from
    $ROBOFLOW_API_KEY.
    """

    detect_size: int | None = Field(
        640,
        ge=32,
        le=8192,
        description="Long side, in pixels, the detector sees each image at. Larger finds smaller "
        "faces but is slower: 1024 finds the small faces of big group photos at ~3x the "
        "detection time.",
    )
    min_confidence: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Drop detections scoring below this (use 0.05 for precision-recall curves).",
    )
    preset: Preset = Field(
        "fast",
        description="Detection preset. fast: one look at --detect-size. accurate (crowds): looks "
        "at 640 and 2048 px (fp32 model), each keeping the face sizes it sees best, merged by "
        "weighted NMS; on the WIDER dev subset hard AP 0.737 instead of 0.443, at ~30x the "
        "detection time of fast (--detect-size does not apply).",
    )
    runtime: Runtime = Field(
        "onnxruntime",
        description="Inference runtime of the models: onnxruntime, or OpenVINO (needs the "
        "`openvino` extra; no telemetry is sent).",
    )
    precision: Precision = Field(
        "auto",
        description="auto: where the CPU has int8 dot products (VNNI/AMX/Arm dotprod), the int8 "
        "models that are built (`face-analysis models quantize`, which set-up runs): age and "
        "gender (~2x faster, same UTKFace accuracy) and the detector in the fast preset up to "
        "--detect-size 640 (1.4-2.4x faster, same WIDER AP; UTKFace age MAE 6.0 y instead of "
        "5.9); with --runtime openvino the fp32 models in bf16 where the CPU has it. fp32: the "
        "original models everywhere. int8: every int8 model on any CPU, in the build it "
        "computes exactly (7-bit weights on CPUs without int8 dot products; an error if one is "
        "not built).",
    )
    threads: int = Field(
        0,
        ge=0,
        description="onnxruntime threads per model (0: one per core, shared out between "
        "--workers; threads never busy-wait).",
    )
    model_dir: Annotated[Path | None, Cli(metavar="DIR")] = Field(
        None,
        description="Folder with the model files (default: ~/.cache/face-analysis/models, or "
        "$XDG_CACHE_HOME/face-analysis/models).",
    )
    detector: DetectorName = Field(
        "centerface",
        description="Face detector: the local CenterFace model (offline, with landmarks), or a "
        "model hosted by Roboflow (online, boxes only; key in $ROBOFLOW_API_KEY, model and "
        "version in --roboflow-model and --roboflow-version).",
    )
    roboflow: RoboflowSettings = Field(default_factory=RoboflowSettings)
    limits: DecodeLimits = Field(default_factory=DecodeLimits)

    @model_validator(mode="after")
    def _detector_complete(self) -> Self:
        if self.detector == "roboflow":
            self.roboflow.check_complete()
        return self

    def onnx_threads(self) -> int:
        """Threads per model: `threads`, or one per core."""
        return self.threads or os.cpu_count() or 1
