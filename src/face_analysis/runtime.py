"""Loading models and running them: onnxruntime (default) or OpenVINO (the `openvino` extra).

Both take the same ONNX bytes and give the same outputs, so a detector does not care which runs it.

Usage::

    model = load_model(paths.age)          # onnx.ModelProto, denormal weights flushed
    run = create_runner(model.SerializeToString(), threads=1, runtime="openvino")
    outputs = run(blob)                    # list of arrays, in the model's output order

The only module that imports onnxruntime for inference; it switches onnxruntime's usage
telemetry off first, so that the analysis stays offline.

OpenVINO sends no telemetry from here: only its runtime (`Core`) is used, never the model
conversion tools that carry telemetry, and the telemetry package is blocked from loading in this
process before `openvino` is first imported (its conversion tools then fall back to their stub).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# onnxruntime may send usage telemetry unless told not to; the analysis stays offline.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import numpy_helper

from .settings import RUNTIMES, Runtime

ort.disable_telemetry_events()

__all__ = [
    "RUNTIMES",
    "Runner",
    "Runtime",
    "create_runner",
    "create_session",
    "denormal_mask",
    "load_model",
    "openvino_available",
]

Runner = Callable[[NDArray[np.float32]], list[NDArray[np.float32]]]


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


def openvino_available() -> bool:
    """True when the `openvino` extra is installed."""
    try:
        _import_openvino()
    except ImportError:
        return False
    return True


def _import_openvino() -> Any:
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        # None in sys.modules makes `import openvino_telemetry` fail: nothing can send usage data.
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    import openvino

    return openvino


def create_runner(
    model: bytes,
    threads: int,
    runtime: Runtime = "onnxruntime",
    bf16: bool = True,
    static_shapes: bool = False,
) -> Runner:
    """A callable running `model` (ONNX bytes, one input) on the CPU with `threads` threads.

    Safe to call from several threads at once.

    bf16: with OpenVINO, let it compute an fp32 model in bf16 where the CPU has bf16 units
    (AVX-512 BF16 / AMX); for an int8 (QDQ) model, the parts that stay fp32.
    static_shapes: with OpenVINO, give each input shape seen again a compile of its own for that
    fixed shape (CenterFace: ~20% faster than the any-shape compile; ~0.3 s and ~30 MB per 640 x 480
    shape, for the first recurring shapes up to four such shapes' pixels). onnxruntime has no such
    gain.

    Raises:
        ValueError: unknown runtime. ImportError: OpenVINO chosen but the extra is not installed.
    """
    if runtime == "onnxruntime":
        session = create_session(model, threads)
        name = session.get_inputs()[0].name

        def run_ort(blob: NDArray[np.float32]) -> list[NDArray[np.float32]]:
            outputs: list[NDArray[np.float32]] = session.run(None, {name: blob})
            return outputs

        return run_ort
    if runtime != "openvino":
        raise ValueError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    try:
        ov = _import_openvino()
    except ImportError as exc:
        raise ImportError(
            "the OpenVINO runtime needs the `openvino` extra: pip install 'face-analysis[openvino]'"
        ) from exc
    return _OpenVinoRunner(ov.Core(), model, threads, bf16, static_shapes)


_Shape = tuple[int, ...]


class _OpenVinoRunner:
    """An OpenVINO model compiled for any input shape and, with `static_shapes`, for each of the
    first few recurring shapes on its own (fixed shapes let OpenVINO pick faster kernels).

    A fixed-shape compile costs ~0.3 s and memory in proportion to the shape's pixels (CenterFace:
    ~30 MB at 640 x 480, ~200 MB at 2048 x 1536), so together they hold at most `_STATIC_PIXELS`
    (four 640 x 480 shapes; larger inputs keep the any-shape compile), and they are never
    replaced: a mix of many shapes cannot make every call compile.
    """

    _STATIC_AFTER = 2  # sightings of a shape before it gets its own compile: one-offs never do
    _STATIC_PIXELS = 4 * 640 * 480
    _SIGHTINGS_MAX = 256

    def __init__(self, core: Any, model: bytes, threads: int, bf16: bool, static_shapes: bool) -> None:
        bf16 = bf16 and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self._config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": max(1, threads),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,  # several processes share few cores
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        }
        self._core = core
        self._model = core.read_model(model=model, weights=b"")
        self._any_shape = core.compile_model(self._model, "CPU", self._config)
        self._static_shapes = static_shapes
        self._static: dict[_Shape, Any] = {}
        self._sightings: dict[_Shape, int] = {}
        self._lock = threading.Lock()

    def __call__(self, blob: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        compiled = self._compiled_for(blob.shape) if self._static_shapes else self._any_shape
        # A request per call (~0.1 ms): calls from several threads never share one.
        result = compiled.create_infer_request().infer({0: blob}, share_inputs=True)
        return [np.asarray(result[output]) for output in compiled.outputs]

    @property
    def static_shapes(self) -> list[_Shape]:
        """The input shapes that have a compile of their own."""
        return list(self._static)

    def _compiled_for(self, shape: _Shape) -> Any:
        with self._lock:
            if shape in self._static:
                return self._static[shape]
            pixels = sum(h * w for *_, h, w in self._static) + shape[-2] * shape[-1]
            if pixels > self._STATIC_PIXELS:
                return self._any_shape
            seen = self._sightings.get(shape, 0) + 1
            if seen < self._STATIC_AFTER:
                if len(self._sightings) < self._SIGHTINGS_MAX:
                    self._sightings[shape] = seen
                return self._any_shape
            fixed = self._model.clone()
            fixed.reshape({fixed.inputs[0].any_name: list(shape)})
            self._static[shape] = self._core.compile_model(fixed, "CPU", self._config)
            return self._static[shape]
