"""The distributed mode against the embedded mode, same images, same run; and a load test.

Usage::

    .venv/bin/python benchmarks/stack.py [--images 200] [--clients 8] [--requests 50] [--json out.json]

1. Throughput. N photos made from face_analysis/data/astronaut.jpg (crops and re-encodings, 384-640 px,
   written to a temporary folder) are analysed by
   - embedded: `face-analysis analyze IN -o OUT` (one process, default settings), and
   - the stack: `face-analysis stack up` (four service processes, a private redis-server on a
     free port), the images dropped into its watched folder at once.
   Throughput = (N - 1) / (last result written - first result written), from the result files'
   mtimes in both modes, so model loading and start-up are outside both; the wall time from
   drop to last result (discovery included) is reported too.
2. Where the stack's per-image overhead goes: CPU seconds per image of each service process
   (from /proc before and after the run), the embedded process's CPU per image, and the
   image input service's view of each call (Prometheus `face_analysis_stage_seconds`) against
   the time spent inside the service.
3. Load: `--clients` threads each send `--requests` synchronous Analyze calls through the public
   API; errors, p50/p99 latency, and the services' peak RSS (VmHWM) at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The services' test helpers (private redis-server, the stack on free ports) serve here too.
sys.path.insert(0, str(REPO / "tests"))
from services_support import (  # noqa: E402
    SERVICE_NAMES,
    StackProcess,
    address,
    astronaut,
    comparable,
    encode,
    metrics_url,
    redis_server,
    stack_up,
    wait_for,
)


def make_images(count: int) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    base = astronaut()
    files: dict[str, bytes] = {}
    for i in range(count):
        side = int(rng.integers(384, 641))
        if i % 2:
            x0, y0 = int(rng.integers(0, 80)), int(rng.integers(0, 80))
            image = base.crop((x0, y0, x0 + 432, y0 + 432)).resize((side, side))
        else:
            image = base.resize((side, int(side * rng.uniform(0.7, 1.0))))
        files[f"photo{i:04d}.jpg"] = encode(image, "JPEG", quality=int(rng.integers(80, 95)))
    return files


def write_all(folder: Path, files: dict[str, bytes]) -> None:
    past = time.time() - 5
    for name, data in files.items():
        staging = folder.parent / f".{name}"
        staging.write_bytes(data)
        os.utime(staging, (past, past))
        os.replace(staging, folder / name)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def read_results(folder: Path) -> dict[str, str]:
    """The text of each result file in `folder`, by file name, each file read once."""
    return {p.name: p.read_text() for p in folder.glob("*.json")}


def result_span(folder: Path) -> tuple[int, float, float]:
    times = sorted(p.stat().st_mtime for p in folder.glob("*.json"))
    return len(times), times[0], times[-1]


def metrics(stack: StackProcess, service: str) -> str:
    with urllib.request.urlopen(metrics_url(stack.env, service), timeout=10) as response:
        return str(response.read().decode())


def stage_sums(text: str) -> dict[str, tuple[float, float]]:
    """stage -> (sum of seconds, count) from face_analysis_stage_seconds."""
    sums: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = re.match(
            r'face_analysis_stage_seconds_(sum|count)\{service="[^"]+",stage="([^"]+)"\} (\S+)', line
        )
        if match:
            sums.setdefault(match.group(2), [0.0, 0.0])[0 if match.group(1) == "sum" else 1] += float(
                match.group(3)
            )
    return {stage: (v[0], v[1]) for stage, v in sums.items()}


def run_embedded(input_dir: Path, output_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "face_analysis", "analyze", str(input_dir), "-o", str(output_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    count, first, last = result_span(output_dir)
    return {
        "images": count,
        "images_per_s": (count - 1) / (last - first),
        "wall_s_with_startup": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "exit_status": status,
    }


def load_test(target: str, files: dict[str, bytes], clients: int, requests: int) -> dict[str, Any]:
    import grpc

    from face_analysis.services.generated import image_input_pb2, image_input_pb2_grpc

    payloads = list(files.items())
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = image_input_pb2_grpc.ImageInputStub(channel)
            for i in range(requests):
                name, data = payloads[(index * requests + i) % len(payloads)]
                started = time.perf_counter()
                try:
                    result = stub.Analyze(image_input_pb2.AnalyzeRequest(image=data, name=name), timeout=120)
                    problem = result.error.code if result.HasField("error") else None
                except grpc.RpcError as exc:
                    problem = f"{exc.code().name}: {exc.details()}"
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": 1000 * ordered[-1],
        "requests_per_s": len(latencies) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is needed on PATH")
    report: dict[str, Any] = {"cpus": os.cpu_count(), "images": args.images}
    with tempfile.TemporaryDirectory(prefix="stack-bench-") as tmp:
        root = Path(tmp)
        files = make_images(args.images)
        (root / "images").mkdir(parents=True, exist_ok=True)
        write_all(root / "images", files)
        print(f"{args.images} images, {os.cpu_count()} cores", flush=True)

        report["embedded"] = embedded = run_embedded(root / "images", root / "embedded")
        print(
            f"embedded: {embedded['images_per_s']:.1f} images/s, "
            f"{1000 * embedded['cpu_s'] / args.images:.1f} ms CPU/image (incl. start-up), "
            f"peak RSS {embedded['peak_rss_mb']:.0f} MB",
            flush=True,
        )

        (root / "in").mkdir()
        quiet = {"FACE_ANALYSIS_LOG_LEVEL": "WARNING"}
        with (
            redis_server(root / "redis") as url,
            stack_up(root / "in", root / "out", url, root / "stack.log", **quiet) as stack,
        ):
            time.sleep(1.0)
            pids = stack.children()
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            stages_before = {name: stage_sums(metrics(stack, name)) for name in SERVICE_NAMES}
            dropped = time.perf_counter()
            write_all(root / "in", files)
            try:
                wait_for(
                    lambda: len(list((root / "out").glob("*.json"))) >= args.images,
                    600,
                    f"{args.images} results from the stack",
                    interval_s=0.05,
                )
            except AssertionError as exc:
                print(f"stack: {exc}; measuring the results written so far", flush=True)
            wall = time.perf_counter() - dropped
            count, first, last = result_span(root / "out")
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            stages = {}
            for name in SERVICE_NAMES:
                after, before = stage_sums(metrics(stack, name)), stages_before[name]
                stages[name] = {
                    stage: 1000
                    * (s - before.get(stage, (0.0, 0.0))[0])
                    / max(1.0, n - before.get(stage, (0.0, 0.0))[1])
                    for stage, (s, n) in after.items()
                }
            stack_texts = read_results(root / "out")
            timings = [json.loads(text)["timings_ms"] for text in stack_texts.values()]
            stack_results = {name: comparable(text) for name, text in stack_texts.items()}
            embedded_results = {
                name: comparable(text) for name, text in read_results(root / "embedded").items()
            }
            same = sum(stack_results.get(name) == b for name, b in embedded_results.items())
            for name in sorted(embedded_results)[:100]:
                a, b = stack_results.get(name), embedded_results[name]
                if a is None:
                    print("differs:", name, "has no result from the stack")
                    break
                if a != b:
                    print("differs:", name, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
                    break
            report["stack"] = stack_report = {
                "images": count,
                "images_per_s": (count - 1) / (last - first),
                "wall_s_from_drop": wall,
                "cpu_ms_per_image": {name: 1000 * v / count for name, v in cpu.items()},
                "cpu_ms_per_image_total": 1000 * sum(cpu.values()) / count,
                "call_ms_mean_seen_by_image_input": stages["image-input"],
                "inside_service_ms_mean": {n: stages[n] for n in SERVICE_NAMES[1:]},
                "result_timings_ms_mean": {
                    k: statistics.fmean(t.get(k, 0.0) for t in timings)
                    for k in ("decode", "detect", "age_gender", "total")
                },
                "results_equal_to_embedded": same,
            }
            report["stack_vs_embedded"] = stack_report["images_per_s"] / embedded["images_per_s"]
            print(
                json.dumps({"stack": stack_report, "ratio": report["stack_vs_embedded"]}, indent=2),
                flush=True,
            )

            target = address(stack.env, "image-input")
            report["load"] = load = load_test(target, files, args.clients, args.requests)
            load["peak_rss_mb"] = {name: peak_rss_mb(pid) for name, pid in stack.children().items()}
            print(json.dumps({"load": load}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
