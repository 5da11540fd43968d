"""Model files: a missing or corrupt one is a one-line error that says how to fix it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from face_analysis import Analyzer, AnalyzerConfig, ModelError
from face_analysis.models import MODELS, ModelPaths
from face_analysis.runtime import denormal_mask, load_model

FIX = "face-analysis models fetch"


def test_missing_model_dir_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=FIX) as caught:
        ModelPaths.resolve(tmp_path / "nowhere")
    message = str(caught.value)
    assert "missing" in message
    assert "\n" not in message


def test_analyzer_refuses_to_start_without_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=FIX):
        Analyzer(AnalyzerConfig(model_dir=tmp_path))


def test_corrupt_model_is_named(model_paths: ModelPaths, tmp_path: Path) -> None:
    # A copy of the real models with a few bytes of the gender model flipped.
    for spec in MODELS.values():
        (tmp_path / spec.filename).write_bytes((model_paths.centerface.parent / spec.filename).read_bytes())
    damaged = tmp_path / MODELS["gender"].filename
    data = bytearray(damaged.read_bytes())
    for offset in (100, len(data) // 2, len(data) - 1):
        data[offset] ^= 0xFF
    damaged.write_bytes(bytes(data))

    with pytest.raises(ModelError, match="corrupt") as caught:
        ModelPaths.resolve(tmp_path)
    message = str(caught.value)
    assert MODELS["gender"].filename in message
    assert FIX in message
    assert "\n" not in message


def test_intact_copy_resolves(model_paths: ModelPaths, tmp_path: Path) -> None:
    for spec in MODELS.values():
        (tmp_path / spec.filename).symlink_to(model_paths.centerface.parent / spec.filename)
    assert ModelPaths.resolve(tmp_path).gender == tmp_path / MODELS["gender"].filename


def _denormal_count(model: onnx.ModelProto) -> int:
    arrays = [numpy_helper.to_array(init) for init in model.graph.initializer]
    return sum(int(denormal_mask(a).sum()) for a in arrays if a.dtype == np.float32)


def test_load_model_flushes_denormal_weights_only(model_paths: ModelPaths) -> None:
    # The age model ships thousands of denormal weights (7x slower convolutions on Intel CPUs).
    original = onnx.load(str(model_paths.age))
    loaded = load_model(model_paths.age)
    assert _denormal_count(original) > 1000
    assert _denormal_count(loaded) == 0
    for before, after in zip(original.graph.initializer, loaded.graph.initializer, strict=True):
        old, new = numpy_helper.to_array(before), numpy_helper.to_array(after)
        if old.dtype == np.float32:
            kept = ~denormal_mask(old)
            assert np.array_equal(old[kept].view(np.uint32), new[kept].view(np.uint32))
            assert not new[~kept].view(np.uint32).any()  # +0.0 exactly
        else:
            assert np.array_equal(old, new)
