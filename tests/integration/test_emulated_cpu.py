"""The int8 models on an AVX2-only CPU (AMD Zen 3), emulated by qemu-user on any x86-64 machine.

onnxruntime chooses its int8 kernels from the CPU it finds (CPUID). Without int8 dot products
(VNNI) its u8s8 kernels add pairs of 8-bit products in saturating 16-bit sums: the full 8-bit
build then gives wrong outputs, while the 7-bit build must give exactly what it gives on any
other CPU. qemu emulates the instructions exactly (its fp32 outputs equal native ones), so this
runs onnxruntime's real AVX2 kernels. `.ci/run` installs qemu-user; without it the test skips.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from face_analysis import cpu
from face_analysis.attributes.age_gender import AGE_CHIP, chip_blob, halve
from face_analysis.detection.centerface import input_blob, with_dynamic_size
from face_analysis.models import INT8_BUILDS, ModelPaths
from face_analysis.quantize import calibration_chips
from face_analysis.runtime import load_model

QEMU = shutil.which("qemu-x86_64")
EMULATED_CPU = "EPYC-Milan"  # AMD Zen 3: AVX2, no AVX-512, no VNNI
WORKER = Path(__file__).with_name("emulated_cpu_worker.py")
CHIPS = 16

pytestmark = pytest.mark.skipif(
    QEMU is None or platform.machine() != "x86_64",
    reason="needs qemu-x86_64 on an x86-64 machine (Debian: apt-get install qemu-user)",
)

Outputs = dict[str, NDArray[np.float32]]


@pytest.fixture(scope="module")
def runs(
    model_paths: ModelPaths, astronaut_rgb: NDArray[np.uint8], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """Each int8 model of both builds on real inputs: the astronaut for the detector (256 px), 16
    face chips of her for age and gender; run natively and on the emulated CPU."""
    folder = tmp_path_factory.mktemp("emulated")
    chips = np.stack(list(calibration_chips(astronaut_rgb, size=AGE_CHIP, samples=CHIPS)))
    inputs = {
        "centerface": input_blob(astronaut_rgb, 0.5),
        "age": chip_blob(chips),
        "gender": chip_blob(halve(chips)),
    }
    arguments, keys = [], []
    for name, blob in inputs.items():
        np.save(folder / f"{name}.npy", blob)
        for build, specs in INT8_BUILDS.items():
            model = load_model(model_paths.centerface.parent / specs[name].filename)
            if name == "centerface":
                model = with_dynamic_size(model)
            path = folder / specs[name].filename
            path.write_bytes(model.SerializeToString())
            arguments.append(f"{path}={folder / f'{name}.npy'}")
            keys.append((build, name))
    results = {}
    for where, prefix in (("native", []), ("emulated", [str(QEMU), "-cpu", EMULATED_CPU])):
        out = folder / f"{where}.npz"
        command = [*prefix, sys.executable, str(WORKER), cpu.__file__, str(out), *arguments]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        with np.load(out) as saved:
            outputs = {key: saved[f"out{i}"] for i, key in enumerate(keys)}
        results[where] = (json.loads(done.stdout.strip().splitlines()[-1]), outputs)
    return results


def test_the_emulated_cpu_is_avx2_only_and_gets_the_7bit_build(runs: Any) -> None:
    answer, _ = runs["emulated"]
    assert "AVX2" in answer["instruction_sets"] and "AVX512F" not in answer["instruction_sets"]
    assert answer["int8_dot_product"] is False  # so models.int8_build_for_cpu() is "int8-w7"


@pytest.mark.parametrize("name", ["centerface", "age", "gender"])
def test_7bit_build_gives_on_avx2_exactly_what_it_gives_here(runs: Any, name: str) -> None:
    native, emulated = runs["native"][1][("int8-w7", name)], runs["emulated"][1][("int8-w7", name)]
    np.testing.assert_allclose(emulated, native, rtol=0, atol=1e-5)


def test_full_8bit_build_saturates_on_avx2(runs: Any) -> None:
    """Why the 7-bit build exists, and proof that the emulation runs the saturating kernels."""
    if not runs["native"][0]["int8_dot_product"]:
        pytest.skip("this CPU has no int8 dot products either: both runs saturate alike")
    native, emulated = runs["native"][1][("int8", "age")], runs["emulated"][1][("int8", "age")]
    assert float(np.abs(emulated - native).max()) > 0.1
