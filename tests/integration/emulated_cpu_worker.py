"""Runs ONNX models on saved inputs and says what it thinks the CPU is; for test_emulated_cpu.py,
which runs it natively and under an emulated CPU (qemu-user), so both use the same code.

    python emulated_cpu_worker.py CPU_MODULE OUT.npz MODEL.onnx=INPUT.npy [...]

Imports only NumPy, onnxruntime and face_analysis/cpu.py (loaded from its file: the package's
other imports take minutes under emulation). Prints one JSON line: the CPU's int8 answer and
instruction sets. Saves each model's first output as out0, out1, ... in OUT.npz.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import onnxruntime as ort


def main(cpu_module: str, out: str, *runs: str) -> None:
    spec = importlib.util.spec_from_file_location("face_analysis_cpu", cpu_module)
    assert spec is not None and spec.loader is not None
    cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu)
    outputs = {}
    for index, run in enumerate(runs):
        model, _, blob = run.partition("=")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the product
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        outputs[f"out{index}"] = session.run(None, {session.get_inputs()[0].name: np.load(blob)})[0]
    np.savez(out, **outputs)
    answer = {"int8_dot_product": cpu.cpu_has_int8_dot_product(), "instruction_sets": cpu.instruction_sets()}
    print(json.dumps(answer))


if __name__ == "__main__":
    main(*sys.argv[1:])
