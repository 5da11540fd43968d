"""Build the static int8 CenterFace (`centerface-int8.onnx`) from the pinned fp32 model.

Reproducible by construction: the calibration images are fixed augmentations (seeded) of the one
photo the repository ships, `tests/data/astronaut.jpg` (public domain), never an evaluation set;
ranges are Percentile 99.9999 on the calibration activations, rounded to 4 significant digits so
that last-bit differences between CPUs do not change the file; weights are int8 per channel
(QDQ, opset 13). The result's sha256 is pinned in `face_analysis.models.INT8_CENTERFACE`.

Usage::

    path = build_int8_centerface(fp32_path, out_path)   # ~1 min on one core
    # or: face-analysis models quantize
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import version_converter

from .detection.centerface import with_dynamic_size

__all__ = [
    "CALIBRATION_SAMPLES",
    "CALIBRATION_SIZE",
    "calibration_images",
    "default_calibration_photo",
    "prepare_fp32",
    "quantize_centerface",
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


def default_calibration_photo() -> Path:
    """The repository's public-domain photo (next to the package in a source checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "tests" / "data" / "astronaut.jpg"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "tests/data/astronaut.jpg not found: run from a source checkout or pass the photo"
    )


def prepare_fp32(model_path: Path) -> onnx.ModelProto:
    """The fp32 CenterFace made quantisable: weights as constants (not graph inputs), symbolic
    batch/height/width, named nodes, opset 13 (per-channel QDQ needs it)."""
    model = with_dynamic_size(onnx.load(str(model_path)))
    graph = model.graph
    _fold_batch_norms(graph)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for index, node in enumerate(graph.node):
        node.name = f"{node.op_type.lower()}_{index:03d}"
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


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over `calibration_images` (NCHW float)."""

    def __init__(self, input_name: str, images: Iterator[NDArray[np.uint8]]) -> None:
        self._input = input_name
        self._images = images

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        image = next(self._images, None)
        if image is None:
            return None
        return {self._input: np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)}


def _round(value: NDArray[np.float32]) -> NDArray[np.float32]:
    rounded = np.array([float(f"{float(v):.{_SIGNIFICANT}g}") for v in np.ravel(value)], np.float32)
    return rounded.reshape(np.shape(value))


def quantize_centerface(
    fp32_path: Path,
    output: Path,
    photo_path: Path | None = None,
    samples: int = CALIBRATION_SAMPLES,
) -> Path:
    """Write the int8 (QDQ, per-channel weights) CenterFace to `output`; returns `output`.

    Calibration: `samples` augmentations of `photo_path` (default: the repository's astronaut),
    Percentile 99.9999 (symmetric, clamped to the observed min/max, so ReLU outputs get [0, t]).
    """
    photo_bgr = cv2.imread(str(photo_path or default_calibration_photo()), cv2.IMREAD_COLOR)
    if photo_bgr is None:
        raise FileNotFoundError(f"cannot read the calibration photo {photo_path}")
    photo = np.ascontiguousarray(photo_bgr[:, :, ::-1], dtype=np.uint8)
    model = prepare_fp32(fp32_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    quiet = io.StringIO()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # onnxruntime.quantization's "consider pre-processing" notes
    try:
        with (
            tempfile.TemporaryDirectory(prefix="face-analysis-quant-") as tmp,
            contextlib.redirect_stdout(quiet),
        ):
            _quantize(model, output, photo, samples, Path(tmp))
    finally:
        root_logger.setLevel(level)
    return output


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


def _quantize(
    model: onnx.ModelProto, output: Path, photo: NDArray[np.uint8], samples: int, tmp: Path
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
    )
    from onnxruntime.quantization.calibrate import TensorData, save_tensors_data

    input_name = model.graph.input[0].name
    prepared = Path(tmp) / "fp32.onnx"
    onnx.save(model, str(prepared))
    calibrator = create_calibrator(
        prepared,
        op_types_to_calibrate=None,
        augmented_model_path=str(Path(tmp) / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        providers=["CPUExecutionProvider"],
        extra_options={"percentile": _PERCENTILE, "symmetric": True, "num_bins": 2048},
    )
    images = calibration_images(photo, samples)
    for _ in range(0, samples, _CHUNK):  # a few at a time: activations are kept until collected
        calibrator.collect_data(_Reader(input_name, itertools.islice(images, _CHUNK)))
    ranges = calibrator.compute_data()
    for name in sorted(ranges.data):
        low, high = ranges.data[name].range_value
        ranges.data[name] = TensorData(lowest=_round(low), highest=_round(high))
    del calibrator
    cache = Path(tmp) / "ranges.json"
    save_tensors_data(ranges, cache)
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
        nodes_to_exclude=_head_nodes(model),
    )
    quantized = onnx.load(str(partial))
    quantized.producer_name = "face-analysis quantize"
    quantized.producer_version = ""
    del quantized.metadata_props[:]
    onnx.save(quantized, str(partial))
    os.replace(partial, output)
