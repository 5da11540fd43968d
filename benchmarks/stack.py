"""The distributed mode against the embedded mode, same images, same run; and a load test.

Usage::

    .venv/bin/python benchmarks/stack.py [--images 200] [--clients 8] [--requests 50] [--json out.json]

1. Throughput. N photos made from tests/data/astronaut.jpg (crops and re-encodings, 384-640 px,
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
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "tests" / "data" / "astronaut.jpg"
SERVICES = ("image-input", "face-landmark", "age-gender", "data-storage")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_images(folder: Path, count: int) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    with Image.open(ASTRONAUT) as opened:
        base = opened.convert("RGB")
    files: dict[str, bytes] = {}
    for i in range(count):
        side = int(rng.integers(384, 641))
        if i % 2:
            x0, y0 = int(rng.integers(0, 80)), int(rng.integers(0, 80))
            image = base.crop((x0, y0, x0 + 432, y0 + 432)).resize((side, side))
        else:
            image = base.resize((side, int(side * rng.uniform(0.7, 1.0))))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(80, 95)))
        files[f"photo{i:04d}.jpg"] = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
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


def result_span(folder: Path) -> tuple[int, float, float]:
    times = sorted(p.stat().st_mtime for p in folder.glob("*.json"))
    return len(times), times[0], times[-1]


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


class Stack:
    def __init__(self, input_dir: Path, output_dir: Path, redis_url: str, log: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FACE_ANALYSIS_")}
        if "FACE_ANALYSIS_MODEL_DIR" in os.environ:
            self.env["FACE_ANALYSIS_MODEL_DIR"] = os.environ["FACE_ANALYSIS_MODEL_DIR"]
        for name in SERVICES:
            key = name.replace("-", "_").upper()
            self.env[f"FACE_ANALYSIS_{key}_PORT"] = str(free_port())
            self.env[f"FACE_ANALYSIS_{key}_METRICS_PORT"] = str(free_port())
        self.env["FACE_ANALYSIS_LOG_LEVEL"] = "WARNING"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "face_analysis",
                    "stack",
                    "up",
                    "--input",
                    str(input_dir),
                    "--output",
                    str(output_dir),
                    "--redis-url",
                    redis_url,
                ],
                env=self.env,
                stdout=out,
                stderr=out,
            )
        from face_analysis.services.stack import wait_healthy

        if not wait_healthy(self.address("image-input"), 180):
            self.stop()
            raise RuntimeError(f"the stack did not come up; see {log}")

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.env['FACE_ANALYSIS_' + service.replace('-', '_').upper() + '_PORT']}"

    def metrics(self, service: str) -> str:
        port = self.env["FACE_ANALYSIS_" + service.replace("-", "_").upper() + "_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def children(self) -> dict[str, int]:
        pids = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        found = {}
        for pid in pids:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"serve" in argv:
                found[argv[argv.index(b"serve") + 1].decode()] = int(pid)
        return found

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


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


def load_test(stack: Stack, files: dict[str, bytes], clients: int, requests: int) -> dict[str, Any]:
    import grpc

    from face_analysis.services.generated import image_input_pb2, image_input_pb2_grpc

    payloads = list(files.items())
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with grpc.insecure_channel(stack.address("image-input")) as channel:
            stub = image_input_pb2_grpc.ImageInputStub(channel)
            for i in range(requests):
                name, data = payloads[(index * requests + i) % len(payloads)]
                started = time.perf_counter()
                try:
                    result = stub.Analyze(image_input_pb2.AnalyzeRequest(image=data, name=name), timeout=120)
                    problem = result.error.code if result.HasField("error") else None
                except grpc.RpcError as exc:
                    problem = f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
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
        files = make_images(root / "images", args.images)
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
        with redis_server(root) as url:
            stack = Stack(root / "in", root / "out", url, root / "stack.log")
            try:
                time.sleep(1.0)
                pids = stack.children()
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                stages_before = {name: stage_sums(stack.metrics(name)) for name in SERVICES}
                dropped = time.perf_counter()
                write_all(root / "in", files)
                deadline = time.monotonic() + 600
                while len(list((root / "out").glob("*.json"))) < args.images and time.monotonic() < deadline:
                    time.sleep(0.05)
                wall = time.perf_counter() - dropped
                count, first, last = result_span(root / "out")
                cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
                stages = {}
                for name in SERVICES:
                    after, before = stage_sums(stack.metrics(name)), stages_before[name]
                    stages[name] = {
                        stage: 1000
                        * (s - before.get(stage, (0.0, 0.0))[0])
                        / max(1.0, n - before.get(stage, (0.0, 0.0))[1])
                        for stage, (s, n) in after.items()
                    }
                timings = [json.loads(p.read_text())["timings_ms"] for p in (root / "out").glob("*.json")]
                same = sum(
                    _comparable((root / "out" / p.name).read_text()) == _comparable(p.read_text())
                    for p in (root / "embedded").glob("*.json")
                )
                for p in sorted((root / "embedded").glob("*.json"))[:100]:
                    a, b = _comparable((root / "out" / p.name).read_text()), _comparable(p.read_text())
                    if a != b:
                        print("differs:", p.name, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
                        break
                report["stack"] = stack_report = {
                    "images": count,
                    "images_per_s": (count - 1) / (last - first),
                    "wall_s_from_drop": wall,
                    "cpu_ms_per_image": {name: 1000 * v / count for name, v in cpu.items()},
                    "cpu_ms_per_image_total": 1000 * sum(cpu.values()) / count,
                    "call_ms_mean_seen_by_image_input": stages["image-input"],
                    "inside_service_ms_mean": {n: stages[n] for n in SERVICES[1:]},
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

                report["load"] = load = load_test(stack, files, args.clients, args.requests)
                load["peak_rss_mb"] = {name: peak_rss_mb(pid) for name, pid in stack.children().items()}
                print(json.dumps({"load": load}, indent=2), flush=True)
            finally:
                stack.stop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _comparable(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    data.pop("timings_ms", None)
    data.pop("processing_time", None)
    return data


if __name__ == "__main__":
    main()
