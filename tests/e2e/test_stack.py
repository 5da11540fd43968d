"""The whole stack (`face-analysis stack up`: four services, a private Redis) end to end.

- 50 images (5 of them bad) dropped into the watched folder give 50 results equal to the
  embedded mode's (`face-analysis analyze`), timings and timestamps aside.
- Faults during a 200-image run (kill -9 of age gender and of data storage, FLUSHALL of Redis
  and a restart of image input, then kill -9 of image input, whose pending jobs the next
  replica takes over): every input still ends with exactly one result, and no result is ever
  rewritten with different content.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import redis

from services_support import comparable, redis_server, results_in, small_images, stack_up, wait_for

# Small images, and the detector at 256 px in both modes, keep the runs short on 2 cores.
DETECT_SIZE = "256"


def _embedded(input_dir: Path, output_dir: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "face_analysis",
            "analyze",
            str(input_dir),
            "-o",
            str(output_dir),
            "--detect-size",
            DETECT_SIZE,
        ],
        check=False,
        capture_output=True,
        timeout=300,
    )


def _write_slowly(path: Path, data: bytes, pieces: int = 5, pause_s: float = 0.2) -> None:
    """A writer that takes ~1 s: the stack must not read the file half-way."""
    step = len(data) // pieces + 1
    with path.open("wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause_s)


def test_fifty_dropped_images_give_the_embedded_modes_results(tmp_path: Path) -> None:
    input_dir, output_dir, embedded_dir = tmp_path / "in", tmp_path / "out", tmp_path / "embedded"
    input_dir.mkdir()
    files = small_images(50, bad=5)
    with (
        redis_server(tmp_path / "redis") as url,
        stack_up(input_dir, output_dir, url, tmp_path / "stack.log", FACE_ANALYSIS_DETECT_SIZE=DETECT_SIZE),
    ):
        names = sorted(files)
        slow = names[0]
        writer = threading.Thread(target=_write_slowly, args=(input_dir / slow, files[slow]))
        writer.start()
        for name in names[1:]:  # dropped: written elsewhere, then moved in
            staging = tmp_path / name
            staging.write_bytes(files[name])
            os.replace(staging, input_dir / name)
        writer.join()
        wait_for(lambda: len(results_in(output_dir)) >= 50, 120, "50 results")
        time.sleep(1.0)  # nothing more may come
    _embedded(input_dir, embedded_dir)
    results, expected = results_in(output_dir), results_in(embedded_dir)
    assert sorted(results) == sorted(expected) and len(results) == 50
    errors = 0
    for name, path in results.items():
        got = comparable(path.read_text(encoding="utf-8"))
        assert got == comparable(expected[name].read_text(encoding="utf-8")), name
        errors += got["error"] is not None
        if got["error"] is None:
            assert len(got["faces"]) == 1, name
    assert errors == 5


class _OutputWatcher(threading.Thread):
    """Records every content each result file ever had."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.contents: dict[str, set[str]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.look()

    def look(self) -> None:
        for name, path in results_in(self.folder).items():
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
            self.contents.setdefault(name, set()).add(digest)


def test_every_input_ends_with_exactly_one_result_despite_faults(tmp_path: Path) -> None:
    input_dir, output_dir = tmp_path / "in", tmp_path / "out"
    input_dir.mkdir()
    files = small_images(200, bad=5)
    for name, data in files.items():
        (input_dir / name).write_bytes(data)
    past = time.time() - 5  # settled files: picked up at the first polls
    for name in files:
        os.utime(input_dir / name, (past, past))
    watcher = _OutputWatcher(output_dir)
    watcher.start()
    faults: list[str] = []
    with (
        redis_server(tmp_path / "redis") as url,
        stack_up(
            input_dir,
            output_dir,
            url,
            tmp_path / "stack.log",
            FACE_ANALYSIS_DETECT_SIZE=DETECT_SIZE,
            FACE_ANALYSIS_CLAIM_IDLE_S="3",
        ) as stack,
    ):
        client = redis.Redis.from_url(url)

        def done() -> int:
            return len(results_in(output_dir))

        def kill(service: str) -> None:
            pid = stack.children()[service]
            os.kill(pid, signal.SIGKILL)
            faults.append(f"kill -9 {service} at {done()} results")

        wait_for(lambda: done() >= 20, 120, "20 results")
        kill("age-gender")
        wait_for(lambda: done() >= 60, 120, "60 results")
        kill("data-storage")
        wait_for(lambda: done() >= 100, 120, "100 results")
        client.flushall()
        os.kill(stack.children()["image-input"], signal.SIGTERM)  # the stack starts it again
        faults.append(f"FLUSHALL and restart of image-input at {done()} results")
        # A crashed driver: its jobs stay pending in the stream until the new replica takes them over.
        wait_for(lambda: done() >= 150 and "image-input" in stack.children(), 120, "150 results")
        kill("image-input")
        wait_for(lambda: done() >= 200, 180, f"200 results (faults: {faults})")
        time.sleep(2.0)  # anything written twice would show now
        watcher.halt.set()
        watcher.join()
        watcher.look()
        leftovers = [
            k for k in client.scan_iter(match="fa:*") if k.split(b":")[1] in (b"img", b"rgb", b"det", b"age")
        ]
        logs = stack.logs()
    assert len(faults) == 4
    results = results_in(output_dir)
    expected = {Path(name).stem + ".json" for name in files}
    assert set(results) == expected, "every input has exactly one result file"
    rewritten = {name: len(c) for name, c in watcher.contents.items() if len(c) > 1}
    assert not rewritten, f"results rewritten with different content: {rewritten}"
    writes = Counter(e.get("image_id") for e in logs if e.get("msg") == "result written")
    assert max(writes.values()) == 1, f"written more than once: {[k for k, v in writes.items() if v > 1]}"
    restarts = Counter(e.get("child") for e in logs if e.get("msg") == "service exited; restarting")
    assert restarts["age-gender"] >= 1 and restarts["data-storage"] >= 1 and restarts["image-input"] >= 2
    errors = {name: comparable(p.read_text())["error"] for name, p in results.items()}
    failed = {name: e["code"] for name, e in errors.items() if e is not None}
    assert len(failed) == 5 and "internal_error" not in failed.values(), failed
    assert not leftovers, f"intermediates left in Redis: {leftovers[:5]}"
