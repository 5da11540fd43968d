"""Helpers for the services' tests: a private redis-server, the services as real processes,
small test images made from astronaut.jpg, and JSON comparison with the embedded mode.

Every helper cleans up what it starts; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from face_analysis.data import CALIBRATION_PHOTO

ASTRONAUT = CALIBRATION_PHOTO  # the package's public-domain photo (see face_analysis.data)
SERVICE_NAMES = ("image-input", "face-landmark", "age-gender", "data-storage")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A private redis-server on a free port (no persistence); yields its URL."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed on PATH for the services' tests", pytrace=False)
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
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
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def service_environment(
    redis_url: str, input_dir: Path | None, output_dir: Path, **extra: str
) -> dict[str, str]:
    """FACE_ANALYSIS_* for a stack on free ports (metrics on free ports too)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FACE_ANALYSIS_") or k == "FACE_ANALYSIS_MODEL_DIR"
    }
    env.update(
        {
            "FACE_ANALYSIS_REDIS_URL": redis_url,
            "FACE_ANALYSIS_OUTPUT_DIR": str(output_dir),
            "FACE_ANALYSIS_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if input_dir is not None:
        env["FACE_ANALYSIS_INPUT_DIR"] = str(input_dir)
    for name in SERVICE_NAMES:
        key = name.replace("-", "_").upper()
        env[f"FACE_ANALYSIS_{key}_PORT"] = str(free_port())
        env[f"FACE_ANALYSIS_{key}_METRICS_PORT"] = str(free_port())
    env.update(extra)
    return env


def address(env: dict[str, str], service: str) -> str:
    return f"127.0.0.1:{env['FACE_ANALYSIS_' + service.replace('-', '_').upper() + '_PORT']}"


def metrics_url(env: dict[str, str], service: str) -> str:
    port = env["FACE_ANALYSIS_" + service.replace("-", "_").upper() + "_METRICS_PORT"]
    return f"http://127.0.0.1:{port}/metrics"


def wait_healthy(addr: str, timeout_s: float) -> None:
    from face_analysis.services.health import wait_healthy as check

    if not check(addr, timeout_s):
        raise AssertionError(f"no healthy service at {addr} within {timeout_s} s")


@dataclass
class Services:
    """Service processes started by a test; `stop()` ends every one of them."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, *names: str) -> None:
        for name in names:
            log = (self.log_dir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "face_analysis", "serve", name],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()
        for name in names:
            wait_healthy(address(self.env, name), 90)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def assert_serving(self, name: str, timeout_s: float = 5) -> None:
        """The service's process still runs and answers its health check."""
        assert self.alive(name), f"{name} exited"
        wait_healthy(address(self.env, name), timeout_s)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def astronaut() -> Image.Image:
    with Image.open(ASTRONAUT) as image:
        return image.convert("RGB")


def encode(image: Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def small_images(count: int, bad: int = 0) -> dict[str, bytes]:
    """`count` small files (128-256 px re-encodings and crops of the astronaut), the last `bad`
    of them not analysable (empty, text, truncated, header only, wrong extension)."""
    base = astronaut()
    rng = np.random.default_rng(1234)
    files: dict[str, bytes] = {}
    for i in range(count - bad):
        size = int(rng.integers(128, 257))
        if i % 3 == 0:  # a crop around the face, then scaled
            x0, y0 = int(rng.integers(60, 160)), int(rng.integers(0, 40))
            image = base.crop((x0, y0, x0 + 280, y0 + 280)).resize((size, size))
        elif i % 3 == 1:
            image = base.resize((size, int(size * 0.75)))
        else:
            image = base.resize((size, size))
        if i % 4 == 3:
            files[f"img{i:03d}.png"] = encode(image, "PNG")
        else:
            files[f"img{i:03d}.jpg"] = encode(image, "JPEG", quality=int(rng.integers(70, 96)))
    jpeg = encode(base.resize((200, 200)), "JPEG", quality=90)
    broken = [
        ("empty.jpg", b""),
        ("text.jpg", b"this is not an image\n" * 10),
        ("truncated.jpg", jpeg[: len(jpeg) // 3]),
        ("header_only.png", encode(base.resize((64, 64)), "PNG")[:40]),
        ("garbage.png", bytes(rng.integers(0, 256, 3000, dtype=np.uint8))),
    ]
    for i in range(bad):
        name, data = broken[i % len(broken)]
        files[name if i < len(broken) else f"{i}_{name}"] = data
    return files


def comparable(text: str) -> dict[str, Any]:
    """A result JSON without what legitimately differs between runs (timings, timestamps)."""
    data: dict[str, Any] = json.loads(text)
    data.pop("timings_ms", None)
    data.pop("processing_time", None)
    return data


def wait_for(predicate: Any, timeout_s: float, message: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {message}")
        time.sleep(interval_s)


def results_in(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.glob("*.json") if not p.name.startswith(".")}


@dataclass
class StackProcess:
    """`face-analysis stack up` in a subprocess; `stop()` sends SIGTERM and waits (kills on timeout)."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def children(self) -> dict[str, int]:
        """The running service processes, by service name."""
        found: dict[str, int] = {}
        try:
            pids = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except OSError:
            return found
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv:
                found[argv[argv.index(b"serve") + 1].decode()] = int(pid)
        return found

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for pid in self.children().values():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
            raise


@contextlib.contextmanager
def stack_up(
    input_dir: Path, output_dir: Path, redis_url: str, log_path: Path, **extra: str
) -> Iterator[StackProcess]:
    """The real stack command on free ports; stopped (and checked to leave no process) on exit."""
    env = service_environment(redis_url, None, output_dir, **extra)
    env.pop("FACE_ANALYSIS_OUTPUT_DIR")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
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
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    stack = StackProcess(process, env, log_path)
    try:
        wait_healthy(address(env, "image-input"), 120)
        yield stack
    finally:
        children = list(stack.children().values())
        stack.stop()
        for pid in children:  # every service ended with the stack
            assert (
                not Path(f"/proc/{pid}").exists()
                or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
            )
