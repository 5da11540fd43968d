"""Which CPUs `--precision auto` trusts with the int8 detector."""

from __future__ import annotations

import pytest

from face_analysis.runtime import cpuinfo_has_int8_dot_product

AVX2_ONLY = (
    "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
)


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (AVX2_ONLY, False),
        (AVX2_ONLY.replace("fma", "fma avx512f avx512_vnni"), True),
        (AVX2_ONLY.replace("fma", "fma avx_vnni"), True),
        (AVX2_ONLY.replace("fma", "fma amx_int8 amx_tile"), True),
        ("processor\t: 0\nFeatures\t: fp asimd asimddp sha2\n", True),  # Arm with dotprod
        ("processor\t: 0\nFeatures\t: fp asimd sha2\n", False),
        ("model name\t: something avx512_vnni in a name\n", False),  # only flag lines count
        ("", False),
    ],
)
def test_int8_dot_product_flags(cpuinfo: str, expected: bool) -> None:
    assert cpuinfo_has_int8_dot_product(cpuinfo) is expected
