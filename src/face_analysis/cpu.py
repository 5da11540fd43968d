"""What the CPU this process runs on can do, as far as the int8 models care.

onnxruntime picks its int8 kernels from the CPU's own answer (CPUID), so this module asks the
same question the same way: NumPy's runtime dispatch reads CPUID too. /proc/cpuinfo is only
consulted for flags NumPy does not report (AVX-VNNI, AMX), and only when it describes the
same CPU as CPUID does (under an emulator it describes the host).

Usage::

    from face_analysis.cpu import cpu_has_int8_dot_product, instruction_sets
    cpu_has_int8_dot_product()     # True on VNNI / AMX / Arm dotprod CPUs
    instruction_sets()             # e.g. ["AVX2", "AVX512F", "AVX512VNNI", ...]

No import of the rest of the package: the AVX2 emulation test loads this file on its own.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Collection
from pathlib import Path

__all__ = ["cpu_has_int8_dot_product", "has_int8_dot_product", "instruction_sets"]

# NumPy's names (CPUID on x86, HWCAP on Arm) of int8 dot-product units that accumulate in 32
# bits: AVX-512 VNNI and Arm dotprod.
_NUMPY_DOT_PRODUCT = frozenset({"AVX512VNNI", "ASIMDDP"})
# /proc/cpuinfo flags NumPy does not report: AVX-VNNI (VEX-encoded, e.g. Alder Lake) and AMX.
_CPUINFO_DOT_PRODUCT = frozenset({"avx_vnni", "amx_int8"})


def has_int8_dot_product(numpy_features: Collection[str], cpuinfo_flags: Collection[str]) -> bool:
    """Whether a CPU with these NumPy features and /proc/cpuinfo flags has int8 dot products.

    Without them onnxruntime's u8s8 kernels (AVX2, AVX-512 without VNNI) add pairs of 8-bit
    products in saturating 16-bit sums, so full-range int8 weights can give wrong outputs.
    cpuinfo flags count only when cpuinfo agrees with CPUID on AVX-512 (else it is another CPU's).
    """
    if not _NUMPY_DOT_PRODUCT.isdisjoint(numpy_features):
        return True
    same_cpu = ("avx512f" in cpuinfo_flags) == ("AVX512F" in numpy_features)
    return same_cpu and not _CPUINFO_DOT_PRODUCT.isdisjoint(cpuinfo_flags)


@functools.cache
def instruction_sets() -> tuple[str, ...]:
    """The SIMD features of this CPU as NumPy's dispatcher sees them (CPUID), sorted."""
    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # NumPy < 2
        umath = importlib.import_module("numpy.core._multiarray_umath")
    features: dict[str, bool] = umath.__cpu_features__
    return tuple(sorted(name for name, present in features.items() if present))


@functools.cache
def cpu_has_int8_dot_product() -> bool:
    """True when this CPU has int8 dot-product units (VNNI, AMX or Arm dotprod)."""
    return has_int8_dot_product(instruction_sets(), _cpuinfo_flags())


def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    lines = (line for line in text.splitlines() if line.startswith(("flags", "Features")))
    return frozenset(flag for line in lines for flag in line.partition(":")[2].split())
