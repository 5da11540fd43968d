"""Build the static int8 models from the pinned fp32 ones: CenterFace (`centerface-int8.onnx`),
age (`age-int8.onnx`) and gender (`gender-int8.onnx`).

Reproducible by construction: the calibration inputs are fixed augmentations (seeded) of the one
photo the package ships, `face_analysis/data/astronaut.jpg` (public domain), never an evaluation set:
crops and crowd mosaics for the detector, aligned face chips for age and gender. Ranges are
percentiles of the calibration activations, rounded to 4 significant digits so that last-bit
differences between CPUs do not change the file; weights are int8 per channel (QDQ). The parts
the outputs hang on directly stay fp32: the detector's heads, the classifiers' layers after their
last convolution. The results' sha256 are pinned in `face_analysis.models.INT8_MODELS`.

Usage::

    quantize_centerface(fp32_path, out_path)              # ~1 min on one core
    quantize_classifier(age_path, out_path, "age")    # a few seconds
    build_int8_models()                               # every pinned build, installed if it verifies
    # or: face-analysis models quantize

Only the `models quantize` command imports this module (it imports the model runtime and the
steps to feed them as they run; nothing imports it back).
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import version_converter

from .attributes.age_gender import AGE_CHIP, chip_blob, halve
from .attributes.alignment import extract_chip
from .data import CALIBRATION_PHOTO
from .detection.centerface import with_dynamic_size
from .errors import ModelError
from .models import INT8_BUILDS, BuiltModel, ModelPaths, sha256_of
from .runtime import load_model

__all__ = [
    "CALIBRATION_SAMPLES",
    "CALIBRATION_SIZE",
    "CHIP_SAMPLES",
    "WeightBits",
    "build_int8_models",
    "calibration_chips",
    "calibration_images",
    "default_calibration_photo",
    "prepare_classifier",
    "prepare_fp32",
    "quantize_centerface",
    "quantize_classifier",
]

CALIBRATION_SAMPLES = 72
CALIBRATION_SIZE = 512  # every calibration input is this square (a multiple of 32)
_SEED = 20240607
_OPSET = 13
_IR_VERSION = 8
_PERCENTILE = 99.9999
_SIGNIFICANT = 4
_CHUNK = 4
_MIN_CROP_AREA = 0.02  # share of the photo: its face then fills much of the view
CHIP_SAMPLES = 256
_CHIP_PERCENTILE = 99.99
_CHIPS_PER_BATCH = 16
# The astronaut's 5 points in the calibration photo (512 x 512) as the fp32 CenterFace places
# them; fixed here so that the chips, and so the build, depend on no detector run.
WeightBits = Literal[7, 8]
_ASTRONAUT_LANDMARKS = np.array(
    [[202.8, 101.7], [249.1, 102.6], [225.4, 124.7], [204.3, 144.1], [243.1, 144.7]], dtype=np.float64
)


def default_calibration_photo() -> Path:
    """The package's public-domain photo (`face_analysis/data/astronaut.jpg`)."""
    return CALIBRATION_PHOTO


def prepare_fp32(model_path: Path) -> onnx.ModelProto:
    """The fp32 CenterFace made quantisable: weights as constants (not graph inputs), symbolic
    batch/height/width, named nodes, opset 13 (per-channel QDQ needs it)."""
    model = with_dynamic_size(onnx.load(str(model_path)))
    graph = model.graph
    _fold_batch_norms(graph)
    _tidy(graph)
    converted: onnx.ModelProto = version_converter.convert_version(model, _OPSET)
    converted.ir_version = _IR_VERSION
    del converted.graph.value_info[:]
    return converted


def _fold_batch_norms(graph: onnx.GraphProto) -> None:
    """Fold each BatchNormalization that follows a ConvTranspose into it (scaled weights, a bias):
    one op less, and the quantiser would otherwise quantise the BN parameters."""
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    producer = {node.output[0]: node for node in graph.node}
    dropped = []
    for bn in [node for node in graph.node if node.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "ConvTranspose" or len(conv.input) != 2:
            continue
        if sum(bn.input[0] in node.input for node in graph.node) != 1:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[name]) for name in bn.input[1:5])
        factor = gamma / np.sqrt(var + eps)
        weight_init = inits[conv.input[1]]
        weight = numpy_helper.to_array(weight_init) * factor[None, :, None, None]  # (C_in, C_out, kh, kw)
        weight_init.CopyFrom(numpy_helper.from_array(weight.astype(np.float32), weight_init.name))
        bias_name = f"{conv.input[1]}.folded_bias"
        bias = (beta - mean * factor).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(bias, bias_name))
        conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        dropped.append(bn)
    for bn in dropped:
        graph.node.remove(bn)


def prepare_classifier(model_path: Path) -> onnx.ModelProto:
    """The dlib age or gender model made quantisable: each convolution's affine layer (dlib's
    batch norm: a Mul by a per-channel scale, an Add of an offset) folded into its weights and
    bias, denormal weights zeroed (`load_model`), named nodes."""
    model = load_model(model_path)
    _fold_affines(model.graph)
    _tidy(model.graph)
    return model


def _tidy(graph: onnx.GraphProto) -> None:
    """Drop the initializers no node uses any more (folded away); name every node (the
    quantiser's exclusions are by name, and the originals have none)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type.lower()}_{index:03d}"


def _fold_affines(graph: onnx.GraphProto) -> None:
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(output: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(output, [])
        if len(users) == 1 and users[0].op_type == op_type and users[0].input[1] in inits:
            return users[0]
        return None

    dropped: list[onnx.NodeProto] = []
    for conv in [node for node in graph.node if node.op_type == "Conv" and len(node.input) == 3]:
        mul = only_consumer(conv.output[0], "Mul")
        add = mul and only_consumer(mul.output[0], "Add")
        if mul is None or add is None:
            continue
        scale = numpy_helper.to_array(inits[mul.input[1]]).reshape(-1)
        offset = numpy_helper.to_array(inits[add.input[1]]).reshape(-1)
        weight, bias = (numpy_helper.to_array(inits[name]) for name in conv.input[1:3])
        folded_weight = (weight * scale[:, None, None, None]).astype(np.float32)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(folded_weight, conv.input[1]))
        inits[conv.input[2]].CopyFrom(
            numpy_helper.from_array((bias * scale + offset).astype(np.float32), conv.input[2])
        )
        conv.output[0] = add.output[0]
        dropped += [mul, add]
    for node in dropped:
        graph.node.remove(node)


def _jitter(image: NDArray[np.uint8], rng: np.random.Generator) -> NDArray[np.uint8]:
    """Random flip, contrast, brightness and gamma."""
    out = image[:, ::-1] if rng.random() < 0.5 else image
    values = out.astype(np.float32) / 255.0
    values = values ** float(rng.uniform(0.7, 1.4))
    values = values * float(rng.uniform(0.7, 1.3)) + float(rng.uniform(-0.12, 0.12))
    return np.asarray(np.clip(values * 255.0 + 0.5, 0, 255), dtype=np.uint8)


def _crop(photo: NDArray[np.uint8], rng: np.random.Generator, size: int) -> NDArray[np.uint8]:
    """A random crop (2-100 % of the area, log-uniform) resized to size x size as the detector
    resizes (area averaging down, bilinear up): faces from medium to filling the view, as when
    a small portrait is enlarged to the detection size (without such close-ups int8 misses
    those faces: UTKFace age MAE 6.4 y instead of 6.0)."""
    height, width = photo.shape[:2]
    area = float(np.exp(rng.uniform(np.log(_MIN_CROP_AREA), 0.0))) * height * width
    aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    crop_w = min(width, max(32, round(np.sqrt(area * aspect))))
    crop_h = min(height, max(32, round(np.sqrt(area / aspect))))
    x = int(rng.integers(0, width - crop_w + 1))
    y = int(rng.integers(0, height - crop_h + 1))
    patch = photo[y : y + crop_h, x : x + crop_w]
    interpolation = cv2.INTER_AREA if crop_w >= size else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(patch, (size, size), interpolation=interpolation), dtype=np.uint8)


def _crowd(photo: NDArray[np.uint8], rng: np.random.Generator, size: int) -> NDArray[np.uint8]:
    """A mosaic of random crops (clutter) with 4-40 scaled-down copies of the photo pasted on it:
    small faces among texture, as in crowds."""
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    cells = int(rng.integers(2, 6))
    step = -(-size // cells)
    for row in range(cells):
        for col in range(cells):
            tile = _jitter(_crop(photo, rng, step), rng)
            canvas[row * step : (row + 1) * step, col * step : (col + 1) * step] = tile[
                : size - row * step, : size - col * step
            ]
    for _ in range(int(rng.integers(4, 41))):
        side = int(rng.integers(16, size // 3))
        small = np.asarray(cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA), dtype=np.uint8)
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        canvas[y : y + side, x : x + side] = _jitter(small, rng)
    return canvas


def calibration_images(
    photo: NDArray[np.uint8], samples: int = CALIBRATION_SAMPLES, size: int = CALIBRATION_SIZE
) -> Iterator[NDArray[np.uint8]]:
    """`samples` deterministic augmentations of `photo` (RGB): alternately crops and crowds."""
    rng = np.random.default_rng(_SEED)
    for index in range(samples):
        image = _crop(photo, rng, size) if index % 2 == 0 else _crowd(photo, rng, size)
        yield _jitter(image, rng)


def calibration_chips(
    photo: NDArray[np.uint8],
    landmarks: NDArray[np.float64] = _ASTRONAUT_LANDMARKS,
    size: int = AGE_CHIP,
    samples: int = CHIP_SAMPLES,
) -> Iterator[NDArray[np.uint8]]:
    """`samples` deterministic size x size face chips of `photo` (RGB), whose face has the 5
    points `landmarks`: the face at 15-100 % of its size, aligned from points moved as a
    detector errs (±20°, ±15 % scale, shifts of up to 10 % of the eye distance plus per-point
    noise), then colour, blur, flip, gamma, contrast and brightness jittered."""
    rng = np.random.default_rng(_SEED)
    eyes = float(np.hypot(*(landmarks[1] - landmarks[0])))
    centre = landmarks.mean(axis=0)
    for _ in range(samples):
        shrink = float(rng.uniform(0.15, 1.0))
        small = np.asarray(
            cv2.resize(photo, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA), np.uint8
        )
        angle, scale = np.deg2rad(float(rng.uniform(-20, 20))), float(rng.uniform(0.85, 1.15))
        turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = (landmarks - centre) @ turn.T + centre + rng.uniform(-0.1, 0.1, size=2) * eyes
        points = points + rng.normal(0.0, 0.03 * eyes, size=points.shape)
        chip = extract_chip(small, points * shrink, size).astype(np.float32)
        grey = chip.mean(axis=2, keepdims=True)
        chip = grey + (chip - grey) * float(rng.uniform(0.0, 1.5))
        chip = chip * rng.uniform(0.8, 1.2, size=3).astype(np.float32)
        chip_u8 = np.asarray(np.clip(chip + 0.5, 0, 255), dtype=np.uint8)
        if rng.random() < 0.5:
            chip_u8 = np.asarray(cv2.GaussianBlur(chip_u8, (0, 0), float(rng.uniform(0.3, 1.5))), np.uint8)
        yield _jitter(chip_u8, rng)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over input blobs."""

    def __init__(self, input_name: str, blobs: Iterator[NDArray[np.float32]]) -> None:
        self._input = input_name
        self._blobs = blobs

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        blob = next(self._blobs, None)
        return None if blob is None else {self._input: blob}


def _round(value: NDArray[np.float32]) -> NDArray[np.float32]:
    rounded = np.array([float(f"{float(v):.{_SIGNIFICANT}g}") for v in np.ravel(value)], np.float32)
    return rounded.reshape(np.shape(value))


def quantize_centerface(
    fp32_path: Path,
    output: Path,
    photo_path: Path | None = None,
    samples: int = CALIBRATION_SAMPLES,
    weight_bits: WeightBits = 8,
) -> Path:
    """Write the int8 (QDQ, per-channel weights) CenterFace to `output`; returns `output`.

    Calibration: `samples` augmentations of `photo_path` (default: the package's astronaut),
    Percentile 99.9999 (symmetric, clamped to the observed min/max, so ReLU outputs get [0, t]).
    `weight_bits` 7 keeps weights within +-64, which CPUs without int8 dot products compute
    exactly (see `face_analysis.models.INT8_W7_MODELS`).
    """
    blobs = (
        np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        for image in calibration_images(_read_photo(photo_path), samples)
    )
    model = prepare_fp32(fp32_path)
    ranges = {"percentile": _PERCENTILE, "symmetric": True}
    return _quantize(model, output, blobs, _CHUNK, ranges, _head_nodes(model), weight_bits)


def quantize_classifier(
    fp32_path: Path,
    output: Path,
    kind: Literal["age", "gender"],
    samples: int = CHIP_SAMPLES,
    weight_bits: WeightBits = 8,
) -> Path:
    """Write the int8 (QDQ, per-channel weights) `kind` model to `output`; returns `output`.

    Calibration: `samples` face chips of the package's astronaut (`calibration_chips`), fed
    as the estimator feeds them (gender: the age chips halved; each chip also mirrored),
    Percentile 99.99. Everything after the last convolution (pooling, the fully connected
    layers, softmax) stays fp32: quantising the class scores flattens the probabilities
    (UTKFace dev age_confidence ECE 0.058 instead of 0.022). `weight_bits` as for
    `quantize_centerface`.
    """
    chips = calibration_chips(_read_photo(None), _ASTRONAUT_LANDMARKS, AGE_CHIP, samples)
    model = prepare_classifier(fp32_path)
    last_conv = max(i for i, node in enumerate(model.graph.node) if node.op_type == "Conv")
    head = [node.name for node in model.graph.node[last_conv + 1 :]]
    ranges = {"percentile": _CHIP_PERCENTILE, "symmetric": False}
    blobs = _chip_blobs(chips, halved=kind == "gender")
    return _quantize(model, output, blobs, 1, ranges, head, weight_bits)


def _chip_blobs(chips: Iterator[NDArray[np.uint8]], halved: bool) -> Iterator[NDArray[np.float32]]:
    while batch := list(itertools.islice(chips, _CHIPS_PER_BATCH)):
        stack = np.stack(batch)
        yield chip_blob(halve(stack) if halved else stack)


def _read_photo(photo_path: Path | None) -> NDArray[np.uint8]:
    photo_bgr = cv2.imread(str(photo_path or default_calibration_photo()), cv2.IMREAD_COLOR)
    if photo_bgr is None:
        raise FileNotFoundError(f"cannot read the calibration photo {photo_path}")
    return np.ascontiguousarray(photo_bgr[:, :, ::-1], dtype=np.uint8)


def _head_nodes(model: onnx.ModelProto) -> list[str]:
    """The output heads (heatmap, scale, offset, landmarks): tiny 1x1 convs whose precision the
    boxes depend on; they stay fp32 (they are a small share of the compute)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    heads = []
    for output in model.graph.output:
        node = producer[output.name]
        if node.op_type == "Sigmoid":
            heads.append(node.name)
            node = producer[node.input[0]]
        heads.append(node.name)
    return sorted(heads)


@contextlib.contextmanager
def _quiet_workdir() -> Iterator[Path]:
    """A temporary folder, with onnxruntime.quantization's notes ("consider pre-processing")
    and prints silenced."""
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="face-analysis-quant-") as tmp,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            yield Path(tmp)
    finally:
        root_logger.setLevel(level)


def _quantize(
    model: onnx.ModelProto,
    output: Path,
    blobs: Iterator[NDArray[np.float32]],
    chunk: int,
    ranges: dict[str, float | bool],
    exclude: list[str],
    weight_bits: WeightBits,
) -> Path:
    """Calibrate `model` on `blobs` (`chunk` at a time: activations are kept until collected),
    Percentile `ranges`, rounded; write the QDQ int8 model (weights of `weight_bits`, the nodes
    `exclude` left fp32) to `output` atomically."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import TensorData, save_tensors_data

    output.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_workdir() as tmp:
        input_name = model.graph.input[0].name
        prepared = tmp / "fp32.onnx"
        onnx.save(model, str(prepared))
        calibrator = create_calibrator(
            prepared,
            op_types_to_calibrate=None,
            augmented_model_path=str(tmp / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Percentile,
            providers=["CPUExecutionProvider"],
            extra_options={**ranges, "num_bins": 2048},
        )
        while (first := next(blobs, None)) is not None:
            calibrator.collect_data(
                _Reader(input_name, itertools.chain([first], itertools.islice(blobs, chunk - 1)))
            )
        found = calibrator.compute_data()
        for name in sorted(found.data):
            low, high = found.data[name].range_value
            found.data[name] = TensorData(lowest=_round(low), highest=_round(high))
        del calibrator
        cache = tmp / "ranges.json"
        save_tensors_data(found, cache)
        partial = output.with_name(output.name + ".part")
        quantize_static(
            prepared,
            str(partial),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            calibration_cache_path=cache,
            nodes_to_exclude=exclude,
            reduce_range=weight_bits == 7,  # onnxruntime's 7-bit weights: [-64, 64]
        )
        quantized = onnx.load(str(partial))
        quantized.producer_name = "face-analysis quantize"
        quantized.producer_version = ""
        del quantized.metadata_props[:]
        onnx.save(quantized, str(partial))
        os.replace(partial, output)
    return output


def build_int8_models(model_dir: Path | None = None) -> list[Path]:
    """Build every int8 model (`INT8_BUILDS`: full 8-bit and 7-bit weights) from the verified fp32
    ones; those already built are kept. Returns their paths.

    Both builds are made whatever this CPU is, so that a model folder (or a container image)
    serves any CPU it is taken to.

    Raises:
        ModelError: an fp32 model is missing, or a build's sha256 is not the pinned one (another
            onnxruntime/onnx version); that model is not installed then.
    """
    built: list[Path] = []
    for build, specs in INT8_BUILDS.items():
        paths = ModelPaths.resolve(model_dir, build)
        for name, spec in specs.items():
            target = paths.centerface.parent / spec.filename
            if name not in paths.int8:
                bits = spec.weight_bits
                makers: dict[str, Callable[[Path], Path]] = {
                    "centerface": functools.partial(quantize_centerface, paths.centerface, weight_bits=bits),
                    "age": functools.partial(quantize_classifier, paths.age, kind="age", weight_bits=bits),
                    "gender": functools.partial(
                        quantize_classifier, paths.gender, kind="gender", weight_bits=bits
                    ),
                }
                _install_build(makers[name], spec, target)
            built.append(target)
    return built


def _install_build(build: Callable[[Path], Path], spec: BuiltModel, target: Path) -> None:
    import onnxruntime as ort  # already loaded, telemetry off, by .runtime

    with tempfile.TemporaryDirectory(prefix="face-analysis-int8-") as tmp:
        made = build(Path(tmp) / spec.filename)
        digest = sha256_of(made)
        if digest != spec.sha256:
            raise ModelError(
                f"{spec.filename} built here has sha256 {digest}, not the pinned {spec.sha256} "
                f"(onnxruntime {ort.__version__}; the pins are for the `quantize` extra's versions: "
                "pip install 'face-analysis[quantize]'): not installed, the fp32 model stays in use"
            )
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(made.read_bytes())
        partial.replace(target)
