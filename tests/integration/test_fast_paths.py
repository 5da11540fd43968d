"""The int8 models, the OpenVINO runtime and the accurate preset against the fp32 default.

The int8 files are built by `face-analysis models quantize` (scripts/setup.sh runs it), so these
tests fail, not skip, when they are missing; only the OpenVINO ones skip, when the extra is absent.
The int8 agreement tests run this CPU's build and the 7-bit build (the one CPUs without int8 dot
products run) on every machine; test_emulated_cpu.py runs the latter on an emulated AVX2 CPU.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from face_analysis import Analyzer, AnalyzerConfig, ModelError
from face_analysis import models as models_module
from face_analysis.cpu import cpu_has_int8_dot_product
from face_analysis.detection import CenterFace
from face_analysis.detection.centerface import input_blob
from face_analysis.models import INT8_BUILDS, INT8_MODELS, MODELS, Int8Build, ModelPaths, sha256_of
from face_analysis.quantize import prepare_classifier, prepare_fp32, quantize_centerface, quantize_classifier
from face_analysis.results import ImageResult
from face_analysis.runtime import openvino_available

GroupImage = Any
Iou = Callable[..., float]


needs_openvino = pytest.mark.skipif(not openvino_available(), reason="the `openvino` extra is not installed")


def _boxes(result: ImageResult) -> list[tuple[int, int, int, int]]:
    assert result.error is None
    return [face.bbox for face in result.faces]


def _same_faces(a: ImageResult, b: ImageResult, iou: Iou, min_iou: float = 0.8) -> None:
    boxes_a, boxes_b = _boxes(a), _boxes(b)
    assert len(boxes_a) == len(boxes_b), (boxes_a, boxes_b)
    for box in boxes_a:
        assert max(iou(box, other) for other in boxes_b) >= min_iou, (box, boxes_b)


@pytest.fixture(scope="module")
def int8_paths(model_paths: ModelPaths) -> ModelPaths:
    for build in INT8_BUILDS:
        built = ModelPaths.resolve(model_paths.centerface.parent, build).int8
        missing = [spec.filename for name, spec in INT8_BUILDS[build].items() if name not in built]
        if missing:
            pytest.fail(f"{', '.join(missing)} not built: run `face-analysis models quantize`", pytrace=False)
    return model_paths


# This CPU's int8 build, and the 7-bit one wherever this CPU is not already running it.
_INT8_BUILDS_HERE: list[Int8Build] = sorted({models_module.int8_build_for_cpu(), "int8-w7"})


@pytest.fixture(scope="module", params=_INT8_BUILDS_HERE)
def any_int8_analyzer(request: pytest.FixtureRequest, int8_paths: ModelPaths) -> Iterator[Analyzer]:
    """`--precision int8` as it runs on a CPU whose exact build is `request.param` (the CPU's
    answer is replaced; the models run for real, and the 7-bit build computes the same here as
    on any CPU)."""
    build: Int8Build = request.param
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models_module, "int8_build_for_cpu", lambda: build)
        config = AnalyzerConfig(threads=2, model_dir=int8_paths.centerface.parent, precision="int8")
        analyzer = Analyzer(config)
    assert analyzer.stamp.models["age"].startswith(INT8_BUILDS[build]["age"].filename)
    yield analyzer


@pytest.fixture(scope="module")
def fp32_analyzer(model_paths: ModelPaths) -> Analyzer:
    return Analyzer(AnalyzerConfig(threads=2, model_dir=model_paths.centerface.parent, precision="fp32"))


@pytest.fixture(scope="module")
def int8_analyzer(int8_paths: ModelPaths) -> Analyzer:
    return Analyzer(AnalyzerConfig(threads=2, model_dir=int8_paths.centerface.parent, precision="int8"))


def test_prepared_graph_is_quantisable(model_paths: ModelPaths) -> None:
    model = prepare_fp32(model_paths.centerface)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {13}
    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}
    assert [value.name for value in model.graph.input] == ["input.1"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    onnx.checker.check_model(model)


def _int8_weight_extremes(path: Path) -> list[int]:
    """max |w| of every int8 weight tensor (the quantised convolution kernels) of an ONNX file."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return [
        int(np.abs(numpy_helper.to_array(init).astype(np.int32)).max())
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8 and init.dims
    ]


@pytest.mark.parametrize("name", sorted(INT8_MODELS))
def test_7bit_build_keeps_every_weight_where_16_bit_pair_sums_cannot_saturate(
    name: str, int8_paths: ModelPaths
) -> None:
    """u8s8 kernels without dot products add two products a*w (a <= 255) in a saturating int16:
    exact iff |w| <= 64 (255 * 64 * 2 = 32640). The full build uses the whole range."""
    folder = int8_paths.centerface.parent
    w7 = _int8_weight_extremes(folder / INT8_BUILDS["int8-w7"][name].filename)
    full = _int8_weight_extremes(folder / INT8_BUILDS["int8"][name].filename)
    assert w7 and max(w7) <= 64
    assert len(full) == len(w7) and max(full) == 127


def test_int8_build_is_deterministic(model_paths: ModelPaths, tmp_path: Path) -> None:
    """Two builds (small calibration set, to keep the test short) give identical bytes."""
    first = quantize_centerface(model_paths.centerface, tmp_path / "a.onnx", samples=2)
    second = quantize_centerface(model_paths.centerface, tmp_path / "b.onnx", samples=2)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    model = onnx.load(str(first))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    axes = [a.i for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute]
    assert 0 in axes  # per-channel weights (axis 0 of the Conv kernels)


def test_classifier_int8_build_is_deterministic_and_keeps_the_head_fp32(
    model_paths: ModelPaths, tmp_path: Path
) -> None:
    first = quantize_classifier(model_paths.gender, tmp_path / "a.onnx", "gender", samples=32)
    second = quantize_classifier(model_paths.gender, tmp_path / "b.onnx", "gender", samples=32)
    assert first.read_bytes() == second.read_bytes()
    model = onnx.load(str(first))
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert convs and all(producer[node.input[1]].op_type == "DequantizeLinear" for node in convs)
    for node in model.graph.node:  # after the last convolution nothing is quantised
        if node.op_type in ("Gemm", "Softmax"):
            assert all(producer[i].op_type != "DequantizeLinear" for i in node.input if i in producer)
    # The dlib affine layers are folded into the convolutions before quantising.
    assert "Add" not in {n.op_type for n in prepare_classifier(model_paths.gender).graph.node}


def test_installed_int8_models_are_the_pinned_builds_and_used_by_default_where_they_keep_accuracy(
    int8_paths: ModelPaths, int8_analyzer: Analyzer, analyzer: Analyzer, fp32_analyzer: Analyzer
) -> None:
    for build, specs in INT8_BUILDS.items():
        built = ModelPaths.resolve(int8_paths.centerface.parent, build).int8
        for name, spec in specs.items():
            assert sha256_of(built[name]) == spec.sha256
    assert int8_paths.int8_build == ("int8" if cpu_has_int8_dot_product() else "int8-w7")
    for name, spec in int8_paths.int8_specs.items():
        assert int8_analyzer.stamp.models[name].startswith(spec.filename)
    for name in INT8_MODELS:  # auto: only the full 8-bit build, and only where it is exact
        expected = INT8_MODELS[name] if cpu_has_int8_dot_product() else MODELS[name]
        assert analyzer.stamp.models[name].startswith(expected.filename)
    folder = int8_paths.centerface.parent
    assert fp32_analyzer.stamp.models["centerface"].startswith("centerface.onnx")
    for config in (
        AnalyzerConfig(threads=1, model_dir=folder, preset="accurate"),
        AnalyzerConfig(threads=1, model_dir=folder, detect_size=1024),
    ):
        assert Analyzer(config).stamp.models["centerface"].startswith("centerface.onnx")
    assert [fp32_analyzer.stamp.models[name] for name in ("age", "gender")] == [
        f"{MODELS[name].filename}@{MODELS[name].sha256[:12]}" for name in ("age", "gender")
    ]


def test_corrupt_int8_is_refused_with_the_fix(model_paths: ModelPaths, tmp_path: Path) -> None:
    for spec_file in ("centerface.onnx", "age-v1.onnx", "gender-v1.onnx"):
        (tmp_path / spec_file).symlink_to(model_paths.centerface.parent / spec_file)
    (tmp_path / model_paths.int8_specs["centerface"].filename).write_bytes(b"not a model")
    (tmp_path / model_paths.int8_specs["age"].filename).symlink_to(model_paths.int8["age"])
    assert set(ModelPaths.resolve(tmp_path).int8) == {"age"}
    with pytest.raises(ModelError, match="face-analysis models quantize"):
        Analyzer(AnalyzerConfig(threads=1, model_dir=tmp_path, precision="int8"))
    # The default precision never needs them: it takes those that verify.
    default = Analyzer(AnalyzerConfig(threads=1, model_dir=tmp_path)).stamp.models
    assert default["centerface"].startswith("centerface.onnx")
    assert default["gender"].startswith("gender-v1.onnx")
    assert default["age"].startswith("age-int8.onnx" if cpu_has_int8_dot_product() else "age-v1.onnx")


def test_int8_and_fp32_find_the_same_faces(
    any_int8_analyzer: Analyzer,
    fp32_analyzer: Analyzer,
    astronaut_path: Path,
    astronaut_face: tuple[int, int, int, int],
    group_image: GroupImage,
    box_iou: Iou,
) -> None:
    single = any_int8_analyzer.analyze(astronaut_path)
    _same_faces(single, fp32_analyzer.analyze(astronaut_path), box_iou)
    assert box_iou(single.faces[0].bbox, astronaut_face) >= 0.6
    group = any_int8_analyzer.analyze(group_image.path)
    _same_faces(group, fp32_analyzer.analyze(group_image.path), box_iou)
    assert len(group.faces) == len(group_image.boxes)


def test_int8_age_and_gender_agree_with_fp32_on_the_same_faces(
    any_int8_analyzer: Analyzer, fp32_analyzer: Analyzer, group_image: GroupImage
) -> None:
    image = fp32_analyzer.load(group_image.path)
    detections = fp32_analyzer.detect(image)
    assert len(detections) == len(group_image.boxes)
    int8_faces = any_int8_analyzer.estimate(image, detections)
    for fp32_face, int8_face in zip(fp32_analyzer.estimate(image, detections), int8_faces, strict=True):
        assert int8_face.gender == fp32_face.gender
        assert abs(int8_face.age_years - fp32_face.age_years) < 2.5
        assert abs(int8_face.age_confidence - fp32_face.age_confidence) < 0.15
        assert abs(int8_face.gender_confidence - fp32_face.gender_confidence) < 0.1


@needs_openvino
@pytest.mark.parametrize("precision", ["int8", "auto", "fp32"])
def test_openvino_finds_the_same_faces(
    precision: str,
    model_paths: ModelPaths,
    int8_analyzer: Analyzer,
    fp32_analyzer: Analyzer,
    group_image: GroupImage,
    box_iou: Iou,
) -> None:
    config = AnalyzerConfig(
        threads=2,
        model_dir=model_paths.centerface.parent,
        runtime="openvino",
        precision=precision,  # type: ignore[arg-type]
    )
    openvino = Analyzer(config)
    int8_detector = precision == "int8" or (precision == "auto" and cpu_has_int8_dot_product())
    reference = int8_analyzer if int8_detector else fp32_analyzer
    result = openvino.analyze(group_image.path)
    expected = reference.analyze(group_image.path)
    _same_faces(result, expected, box_iou)
    assert result.settings["runtime"] == "openvino"
    for face in result.faces:
        twin = max(expected.faces, key=lambda other: box_iou(face.bbox, other.bbox))
        assert twin.gender == face.gender
        assert abs(twin.confidence - face.confidence) < 0.05
        # bf16 age/gender (auto/int8 on CPUs with bf16 units) plus another runtime's landmarks
        # move a face's age by a few years at most (UTKFace MAE is unchanged: benchmarks/).
        assert abs(twin.age_years - face.age_years) < 5.0


@needs_openvino
def test_openvino_fixed_shape_compiles_match_and_stay_bounded(
    model_paths: ModelPaths, astronaut_rgb: NDArray[np.uint8]
) -> None:
    network: Any = CenterFace(model_paths.int8["centerface"], runtime="openvino").network
    blob = input_blob(astronaut_rgb, 640 / max(astronaut_rgb.shape[:2]))
    any_shape = network(blob)
    assert network.static_shapes == []  # a shape seen once keeps the any-shape compile
    fixed = network(blob)
    assert network.static_shapes == [blob.shape]
    for a, b in zip(any_shape, fixed, strict=True):
        np.testing.assert_allclose(a, b, atol=0.02)
    # Calls from several threads at once each get their own inference request.
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(network, [blob] * 8))
    for output in outputs:
        for a, b in zip(output, fixed, strict=True):
            np.testing.assert_array_equal(a, b)
    # However many shapes recur, only the first few get a compile of their own (memory grows
    # with their pixels), and a large input never does.
    large = input_blob(astronaut_rgb, 2048 / max(astronaut_rgb.shape[:2]))
    network(large)
    network(large)
    assert network.static_shapes == [blob.shape]
    for long_side in range(320, 640, 32):
        smaller = input_blob(astronaut_rgb, long_side / max(astronaut_rgb.shape[:2]))
        network(smaller)
        network(smaller)
    assert network.static_shapes[0] == blob.shape
    assert 1 < len(network.static_shapes) < 1 + len(range(320, 640, 32))
    assert sum(h * w for *_, h, w in network.static_shapes) <= 4 * 640 * 480


@needs_openvino
def test_openvino_loads_no_telemetry(model_paths: ModelPaths) -> None:
    Analyzer(AnalyzerConfig(threads=1, model_dir=model_paths.centerface.parent, runtime="openvino"))
    assert sys.modules.get("openvino_telemetry") is None


def test_accurate_preset_finds_every_face_of_a_crowd(
    model_paths: ModelPaths, crowd_image: tuple[NDArray[np.uint8], list[Sequence[float]]], box_iou: Iou
) -> None:
    image, truth = crowd_image
    accurate = Analyzer(AnalyzerConfig(threads=2, model_dir=model_paths.centerface.parent, preset="accurate"))
    result = accurate.analyze(image)
    boxes = _boxes(result)
    missed = [t for t in truth if max((box_iou(t, b) for b in boxes), default=0.0) < 0.3]
    assert not missed, f"{len(missed)} of {len(truth)} faces missed"
    assert len(boxes) <= len(truth) + 2  # no flood of false positives
    assert result.settings["preset"] == "accurate"
