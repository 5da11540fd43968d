"""Which CPUs get the full 8-bit int8 build (exact only with int8 dot products)."""

from __future__ import annotations

import pytest

from face_analysis.cpu import cpu_has_int8_dot_product, has_int8_dot_product, instruction_sets

AVX2 = {"SSE42", "AVX", "AVX2", "FMA3"}
AVX512 = AVX2 | {"AVX512F", "AVX512BW", "AVX512_SKX"}


@pytest.mark.parametrize(
    ("numpy_features", "cpuinfo_flags", "expected"),
    [
        (AVX2, {"avx2"}, False),  # Zen 3, Haswell
        (AVX512, {"avx2", "avx512f"}, False),  # Skylake-X: AVX-512 without VNNI
        (AVX512 | {"AVX512VNNI"}, {"avx512f", "avx512_vnni"}, True),  # Zen 4/5, Ice Lake, Xeon
        (AVX2, {"avx2", "avx_vnni"}, True),  # Alder Lake: AVX-VNNI, no AVX-512
        (AVX512 | {"AVX512VNNI"}, {"avx512f", "amx_int8"}, True),
        ({"ASIMD", "ASIMDDP"}, {"asimd", "asimddp"}, True),  # Arm with dotprod
        ({"ASIMD"}, {"asimd"}, False),
        # Under an emulator CPUID says AVX2 while /proc/cpuinfo is the host's: cpuinfo is ignored.
        (AVX2, {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}, False),
        (set(), set(), False),
    ],
)
def test_int8_dot_product(numpy_features: set[str], cpuinfo_flags: set[str], expected: bool) -> None:
    assert has_int8_dot_product(numpy_features, cpuinfo_flags) is expected


def test_this_cpu_is_read_from_cpuid() -> None:
    features = instruction_sets()
    assert features and all(name.isupper() for name in features)
    if "AVX512VNNI" in features:
        assert cpu_has_int8_dot_product()
