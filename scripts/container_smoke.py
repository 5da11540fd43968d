"""The stack part of scripts/container-smoke.sh (its header says what the whole test does).

Run by that script in a throwaway venv that has podman-compose (and so PyYAML), with the image
built; configured by its environment:

    SMOKE_ROOT SMOKE_WORK SMOKE_RUN_ID SMOKE_IMAGE_REF SMOKE_REDIS_REF SMOKE_PODMAN
    SMOKE_BUILD_SECONDS, and the user's SMOKE_NETWORK, SMOKE_SCALE, SMOKE_ENV, SMOKE_TIMEOUT

It makes sample images and the embedded mode's results on them (the reference) in the image,
resolves docker-compose.yml with `podman-compose config`, starts each service with plain podman
commands in depends_on order (waiting for health checks with `podman healthcheck run`), feeds
the watched folder, checks every result against the reference, the public API, the uids and
the replicas' work, prints the figures as JSON, and removes every container it started.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

UID = 1000
IGNORED_KEYS = {"processing_time", "timings_ms"}  # differ run to run; everything else must match
LATE = "mosaic.webp"  # arrives once the stack is up: the folder watcher's path
SERVICES = {"redis", "image-input", "face-landmark", "age-gender", "data-storage"}
GRPC_PORTS = {"image-input": 50051, "face-landmark": 50052, "age-gender": 50053, "data-storage": 50054}
METRICS_PORTS = {"face-landmark": 9102, "age-gender": 9103, "data-storage": 9104}
Spec = dict[str, Any]

MAKE_SAMPLES = """
from PIL import Image
src = Image.open("/w/astronaut.jpg").convert("RGB")
src.save("/w/astronaut-lossless.png")
src.resize((384, 384), Image.LANCZOS).save("/w/astronaut-small.jpg", quality=70)
exif = Image.Exif(); exif[0x0112] = 6  # stored turned left: viewers turn it right (upright)
src.transpose(Image.ROTATE_90).save("/w/astronaut-exif.jpg", quality=92, exif=exif)
mosaic = Image.new("RGB", (1024, 1024), "white")
for i, (x, y) in enumerate([(0, 0), (512, 0), (0, 512), (512, 512)]):
    mosaic.paste(src if i % 2 == 0 else src.transpose(Image.FLIP_LEFT_RIGHT), (x, y))
mosaic.save("/w/mosaic.webp", quality=90)
open("/w/broken.jpg", "wb").write(b"\\xff\\xd8\\xff\\xe0 this is not really a JPEG")
"""
# The public API through the published port: Analyze the astronaut synchronously, print the JSON.
API_CHECK = """
import grpc, sys
from face_analysis.services.convert import result_json
from face_analysis.services.generated import image_input_pb2 as pb, image_input_pb2_grpc as rpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    reply = rpc.ImageInputStub(channel).Analyze(
        pb.AnalyzeRequest(image=open("/w/astronaut.jpg", "rb").read(), name="astronaut.jpg"), timeout=60)
print(result_json(reply))
"""


def log(message: str) -> None:
    print(f"[smoke {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seconds(value: object, default: float) -> float:
    """A Compose duration ("30s", "1m30s", 10) in seconds."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(value))
    return sum(float(n) * units[u] for n, u in parts) if parts else default


def compare(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ, timings and timestamps aside."""
    keys = (set(actual) | set(expected)) - IGNORED_KEYS
    return [k for k in sorted(keys) if actual.get(k) != expected.get(k)]


def start_order(specs: Mapping[str, Spec]) -> list[str]:
    """The services in depends_on order (alphabetical among those ready together)."""
    done: list[str] = []
    while len(done) < len(specs):
        ready = [
            n for n in specs if n not in done and all(d in done for d in (specs[n].get("depends_on") or {}))
        ]
        if not ready:
            raise SystemExit(f"depends_on has a cycle among {set(specs) - set(done)}")
        done += sorted(ready)
    return done


@dataclass
class Smoke:
    """One run: its settings, the checks that failed, the containers it started."""

    root: Path
    work: Path
    run_id: str
    image: str
    redis_image: str
    podman_command: list[str]
    network: str
    timeout: float
    smoke_env: dict[str, str]
    scale_text: str
    failures: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    network_args: dict[str, list[str]] = field(default_factory=dict)
    rewrites: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    redis_port: int = 6379
    api_address: str = ""
    scale: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Smoke:
        network = environ.get("SMOKE_NETWORK", "bridge")
        return cls(
            root=Path(environ["SMOKE_ROOT"]),
            work=Path(environ["SMOKE_WORK"]),
            run_id=environ["SMOKE_RUN_ID"],
            image=environ["SMOKE_IMAGE_REF"],
            redis_image=environ["SMOKE_REDIS_REF"],
            podman_command=shlex.split(environ["SMOKE_PODMAN"]),
            network=network,
            timeout=float(environ.get("SMOKE_TIMEOUT", "240")),
            # Settings for both modes, e.g. "FACE_ANALYSIS_PRECISION=int8 FACE_ANALYSIS_PRESET=accurate".
            smoke_env=dict(item.split("=", 1) for item in environ.get("SMOKE_ENV", "").split()),
            scale_text=environ.get("SMOKE_SCALE", "age-gender=2" if network == "bridge" else ""),
        )

    def check(self, ok: bool, what: str) -> bool:
        log(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            self.failures.append(what)
        return ok

    def podman(
        self, *args: str, check_rc: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.podman_command, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check_rc and result.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])} ...: {result.stderr.strip()[-2000:]}")
        return result

    # --- Samples and the embedded mode's results on them ---

    def make_samples(self) -> tuple[Path, list[str], dict[str, Any]]:
        """The sample images (in a staging folder), their names, and the reference results."""
        staging, reference_dir = self.work / "staging", self.work / "reference"
        for folder in (staging, reference_dir, self.work / "input", self.work / "output"):
            folder.mkdir()
        shutil.copy(self.root / "input" / "astronaut.jpg", staging / "astronaut.jpg")
        volume = f"{staging}:/w"
        run_as_root = ("run", "--rm", "--user", "0:0", "--network", "none", "-v", volume)
        self.podman(*run_as_root, "--entrypoint", "python", self.image, "-c", MAKE_SAMPLES)
        samples = sorted(p.name for p in staging.iterdir())
        for folder in (reference_dir, self.work / "output"):
            os.chown(folder, UID, UID)
        log(f"samples: {', '.join(samples)}")
        env_args = [arg for key, value in self.smoke_env.items() for arg in ("--env", f"{key}={value}")]
        run = self.podman(
            "run", "--rm", "--network", "none", *env_args, "-v", f"{staging}:/data/input:ro",
            "-v", f"{reference_dir}:/data/output", self.image, "analyze", "/data/input", "-o", "/data/output",
            check_rc=False, timeout=300,
        )  # fmt: skip
        self.check(run.returncode in (0, 1), f"embedded mode in the image ran (exit {run.returncode})")
        reference = {p.name: json.loads(p.read_text()) for p in reference_dir.glob("*.json")}
        self.check(
            len(reference) == len(samples), f"embedded mode wrote {len(reference)} results for {len(samples)}"
        )
        for name in samples:
            if name != LATE:
                shutil.copy(staging / name, self.work / "input" / name)
        return staging, samples, reference

    # --- The compose file, resolved by podman-compose, as podman commands ---

    def resolve_compose(self, environ: Mapping[str, str]) -> dict[str, Spec]:
        env_file = self.work / "empty.env"  # ignore a developer's .env: the smoke test runs the defaults
        env_file.write_text("")
        public_port = free_port()
        self.api_address = f"127.0.0.1:{public_port}"
        compose_env = {  # the defaults, whatever this shell sets (the reference run gets none either)
            **{
                k: v
                for k, v in environ.items()
                if not k.startswith(("FACE_ANALYSIS_", "ROBOFLOW_", "REDIS_"))
            },
            "FACE_ANALYSIS_IMAGE": self.image,
            "REDIS_IMAGE": self.redis_image,
            "FACE_ANALYSIS_INPUT": str(self.work / "input"),
            "FACE_ANALYSIS_OUTPUT": str(self.work / "output"),
            "FACE_ANALYSIS_PUBLIC_PORT": str(public_port),
            **self.smoke_env,
        }
        command = [str(self.work / "venv" / "bin" / "podman-compose"), "--env-file", str(env_file), "-f"]
        resolved = subprocess.run(
            [*command, str(self.root / "docker-compose.yml"), "config"],
            capture_output=True, text=True, env=compose_env, cwd=self.root, check=False,
        )  # fmt: skip
        if resolved.returncode != 0:
            raise SystemExit(f"podman-compose config failed: {resolved.stderr}")
        services: dict[str, Spec] = yaml.safe_load(resolved.stdout)["services"]
        self.check(set(services) == SERVICES, f"compose services: {sorted(services)}")
        return services

    def set_up_network(self, services: Mapping[str, Spec]) -> None:
        if self.network == "bridge":
            self.podman("network", "create", self.run_id)
            for name in services:
                self.network_args[name] = ["--network", self.run_id, "--network-alias", name]
        elif self.network == "host":
            # One network namespace for all: move every port to a free one, every address to 127.0.0.1.
            self.redis_port = free_port()
            self.rewrites["redis:6379"] = f"127.0.0.1:{self.redis_port}"
            self.extra_env["FACE_ANALYSIS_BIND_HOST"] = "127.0.0.1"
            for name, port in GRPC_PORTS.items():
                key = name.upper().replace("-", "_")
                grpc_port = free_port()
                self.extra_env[f"FACE_ANALYSIS_{key}_PORT"] = str(grpc_port)
                self.extra_env[f"FACE_ANALYSIS_{key}_METRICS_PORT"] = str(free_port())
                self.rewrites[f"{name}:{port}"] = f"127.0.0.1:{grpc_port}"
            self.api_address = self.rewrites["image-input:50051"]
            for name in services:
                self.network_args[name] = ["--network", "host"]
        else:
            raise SystemExit(f"SMOKE_NETWORK must be bridge or host, not {self.network}")
        # Replicas, as `docker compose up --scale NAME=N` makes them (bridge network only: under host
        # networking every replica would want the same ports).
        self.scale = {name: 1 for name in services}
        for item in self.scale_text.split():
            name, _, count = item.partition("=")
            if name not in services or not count.isdigit() or (int(count) > 1 and self.network != "bridge"):
                raise SystemExit(
                    f"SMOKE_SCALE: cannot run {item} (services: {sorted(services)}; bridge only)"
                )
            self.scale[name] = int(count)

    def replicas(self, name: str) -> list[str]:
        return [f"{self.run_id}-{name}-{i}" for i in range(1, self.scale[name] + 1)]

    def run_args(self, name: str, spec: Spec, container: str) -> list[str]:
        """`podman run` for one container of a compose service."""
        args = [
            "run",
            "-d",
            "--name",
            container,
            "--label",
            f"fa-smoke={self.run_id}",
            *self.network_args[name],
        ]
        if spec.get("user"):
            args += ["--user", str(spec["user"])]
        if spec.get("restart"):
            args += ["--restart", spec["restart"]]
        args += ["--stop-timeout", str(int(seconds(spec.get("stop_grace_period"), 10)))]
        args += [
            arg for key, value in self._environment(name, spec).items() for arg in ("--env", f"{key}={value}")
        ]
        for volume in spec.get("volumes") or []:
            source, _, rest = str(volume).partition(":")
            if source.startswith("."):
                source = str((self.root / source).resolve())
            args += ["--volume", f"{source}:{rest}"]
        if self.network == "bridge" and container.endswith("-1"):  # a published port has one owner
            for port in spec.get("ports") or []:
                args += ["--publish", str(port)]
        test = (spec.get("healthcheck") or {}).get("test")
        if test:
            command = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
            if name == "redis" and self.network == "host":
                command = [*command[:1], "-p", str(self.redis_port), *command[1:]]
            args += ["--health-cmd", command[0] if test[0] == "CMD-SHELL" else shlex.join(command)]
        command = [str(c) for c in spec.get("command") or []]
        if name == "redis" and self.network == "host":
            command += ["--port", str(self.redis_port), "--bind", "127.0.0.1"]
        return [*args, str(spec["image"]), *command]

    def _environment(self, name: str, spec: Spec) -> dict[str, str]:
        environment: Any = spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(
                item.split("=", 1) if "=" in item else (item, os.environ.get(item, ""))
                for item in environment
            )
        if name != "redis":
            environment = {**environment, **self.extra_env}
        values: dict[str, str] = {}
        for key, value in environment.items():
            text = "" if value is None else str(value)
            for old, new in self.rewrites.items():
                text = text.replace(old, new)
            values[key] = text
        return values

    def healthy(self, container: str) -> bool:
        return self.podman("healthcheck", "run", container, check_rc=False, timeout=30).returncode == 0

    def running(self, container: str) -> bool:
        state = self.podman("inspect", "--format", "{{.State.Status}}", container, check_rc=False)
        return state.stdout.strip() == "running"

    def wait_for(self, container: str, condition: str, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if condition == "service_healthy" and self.healthy(container):
                return True
            if condition == "service_started" and self.running(container):
                return True
            if not self.running(container) and condition != "service_completed_successfully":
                restarts = self.podman("inspect", "--format", "{{.RestartCount}}", container, check_rc=False)
                log(f"{container} is not running (restarts {restarts.stdout.strip()})")
            time.sleep(1)
        return False

    def start_stack(self, services: Mapping[str, Spec], up: float) -> dict[str, float]:
        """Start every service after its dependencies; the seconds from `up` each got healthy."""
        health_times: dict[str, float] = {}
        for name in start_order(services):
            spec = services[name]
            deadline = time.monotonic() + self.timeout
            for dependency, detail in (spec.get("depends_on") or {}).items():
                condition = (detail or {}).get("condition", "service_started")
                for container in self.replicas(dependency):
                    reached = self.wait_for(container, condition, deadline)
                    if not self.check(reached, f"{container} reached {condition} before {name} started"):
                        raise RuntimeError(f"{container} never got {condition}")
                health_times.setdefault(dependency, time.monotonic() - up)
            for container in self.replicas(name):
                log(
                    f"starting {container}: {spec['image']} {shlex.join(map(str, spec.get('command') or []))}"
                )
                self.podman(*self.run_args(name, spec, container))
                self.started.append(container)
        healthy = self.wait_for(
            f"{self.run_id}-image-input-1", "service_healthy", time.monotonic() + self.timeout
        )
        self.check(healthy, "image-input is healthy")
        health_times["image-input"] = time.monotonic() - up
        log("healthy after (s from up): " + ", ".join(f"{k} {v:.1f}" for k, v in health_times.items()))
        return health_times

    # --- The checks ---

    def wait_for_results(self, samples: list[str], up: float) -> tuple[set[str], float | None]:
        """The result files once every input has one (or at the timeout), and when the first came."""
        output_dir = self.work / "output"
        expected = {n.rsplit(".", 1)[0] + ".json" for n in samples}
        first_result: float | None = None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            present = {p.name for p in output_dir.glob("*.json")}
            if present and first_result is None:
                first_result = time.monotonic() - up
                log(f"first result {first_result:.1f}s after up")
            if expected <= present:
                break
            time.sleep(0.25)
        present = {p.name for p in output_dir.glob("*.json")}
        self.check(
            present == expected, f"one result per input: {sorted(present)} (expected {sorted(expected)})"
        )
        time.sleep(2)  # nothing is written twice: the files must not change any more
        snapshot = {p.name: p.read_bytes() for p in output_dir.glob("*.json")}
        time.sleep(3)
        self.check(
            snapshot == {p.name: p.read_bytes() for p in output_dir.glob("*.json")}, "results stay unchanged"
        )
        self.check(
            not [p.name for p in output_dir.iterdir() if p.name.startswith(".")], "no temporary files left"
        )
        return present, first_result

    def check_results(self, present: set[str], reference: Mapping[str, Any]) -> int:
        """Each result equals the embedded mode's and is written by uid 1000; the faces found."""
        output_dir = self.work / "output"
        faces = 0
        for name in sorted(present & set(reference)):
            actual = json.loads((output_dir / name).read_text())
            faces += len(actual.get("faces") or [])
            differing = compare(actual, reference[name])
            error = (actual.get("error") or {}).get("code")
            self.check(
                not differing,
                f"{name}: {len(actual.get('faces') or [])} faces"
                + (f", error {error}" if error else "")
                + (
                    f"; differs from embedded mode in {differing}"
                    if differing
                    else ", equal to embedded mode"
                ),
            )
            stat = (output_dir / name).stat()
            self.check(stat.st_uid == UID, f"{name} written by uid {stat.st_uid}")
            if stat.st_mode & 0o044 != 0o044:
                log(f"note  {name} has mode {oct(stat.st_mode & 0o777)}: only uid {UID} can read it")
        self.check(faces >= 8, f"{faces} faces in all results (the samples hold at least 8)")
        return faces

    def check_containers(self) -> None:
        """Every service runs as uid 1000 and keeps no onnxruntime telemetry state."""
        for container in self.started:
            if "redis" in container:
                continue
            status = self.podman("exec", container, "cat", "/proc/1/status").stdout
            uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
            self.check(
                uids is not None and set(uids.group(1).split()) == {str(UID)},
                f"{container} runs as uid {UID}",
            )
            listing = 'ls -A "$HOME/.cache/Microsoft" 2>/dev/null'
            telemetry = self.podman("exec", container, "sh", "-c", listing, check_rc=False).stdout.split()
            self.check(
                not telemetry, f"{container} keeps no onnxruntime telemetry state ({telemetry or 'none'})"
            )

    def check_api(self, staging: Path, reference: Mapping[str, Any]) -> None:
        api = self.podman(
            "run", "--rm", "--network", "host", "-v", f"{staging}:/w:ro", "--entrypoint", "python",
            self.image, "-c", API_CHECK, self.api_address, check_rc=False,
        )  # fmt: skip
        answered = api.returncode == 0
        where = f"Analyze over gRPC at {self.api_address} answered"
        if self.check(answered, where + ("" if answered else f": {api.stderr.strip()[-500:]}")):
            differing = compare(json.loads(api.stdout), reference["astronaut.json"])
            self.check(
                not differing,
                "Analyze result equals embedded mode" + (f" except {differing}" if differing else ""),
            )

    def replica_work(self) -> dict[str, int]:
        """Each analysis replica's image counter (its Prometheus endpoint)."""
        work: dict[str, int] = {}
        for name, default_port in METRICS_PORTS.items():
            port = int(
                self.extra_env.get(
                    f"FACE_ANALYSIS_{name.upper().replace('-', '_')}_METRICS_PORT", default_port
                )
            )
            url = f"http://127.0.0.1:{port}/metrics"
            scrape_code = (
                f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
            )
            for container in self.replicas(name):
                scrape = self.podman("exec", container, "python", "-c", scrape_code, check_rc=False)
                counts = re.findall(
                    r"^face_analysis_images_total\{[^}]*\} ([\d.e+]+)$", scrape.stdout, re.MULTILINE
                )
                work[container.removeprefix(self.run_id + "-")] = int(sum(float(c) for c in counts))
        log("images handled per replica: " + ", ".join(f"{k} {v}" for k, v in work.items()))
        for name in METRICS_PORTS:
            busy = sum(1 for c in self.replicas(name) if work.get(c.removeprefix(self.run_id + "-")))
            if self.scale[name] > 1 and busy < 2:
                log(f"note  only one of the {self.scale[name]} {name} replicas got work: the image input "
                    "service's gRPC channel does not balance over the replicas' addresses")  # fmt: skip
        return work

    def tear_down(self) -> None:
        if self.failures:
            for container in self.started:
                logs = self.podman("logs", "--tail", "30", container, check_rc=False)
                print(f"--- {container} (last 30 lines) ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        (self.work / "logs").mkdir(exist_ok=True)
        for container in reversed(self.started):  # image input first: it stops taking work
            logs = self.podman("logs", container, check_rc=False)
            (self.work / "logs" / f"{container}.log").write_text(logs.stdout + logs.stderr)
            self.podman("stop", "-t", "30", container, check_rc=False, timeout=60)
            code = self.podman("inspect", "--format", "{{.State.ExitCode}}", container, check_rc=False)
            log(f"stopped {container} (exit {code.stdout.strip()})")
            self.podman("rm", "-f", container, check_rc=False)
        if self.network == "bridge":
            self.podman("network", "rm", "-f", self.run_id, check_rc=False)


def main(environ: Mapping[str, str]) -> int:
    smoke = Smoke.from_env(environ)
    try:
        staging, samples, reference = smoke.make_samples()
        services = smoke.resolve_compose(environ)
        smoke.set_up_network(services)
        up = time.monotonic()
        health_times = smoke.start_stack(services, up)
        # One more image, moved in atomically, now that everything runs.
        shutil.copy(staging / LATE, smoke.work / LATE)
        os.rename(smoke.work / LATE, smoke.work / "input" / LATE)
        present, first_result = smoke.wait_for_results(samples, up)
        faces = smoke.check_results(present, reference)
        smoke.check_containers()
        smoke.check_api(staging, reference)
        work = smoke.replica_work()
        size = int(smoke.podman("image", "inspect", "--format", "{{.Size}}", smoke.image).stdout.strip())
        figures = {
            "passed": not smoke.failures,
            "network": smoke.network,
            "image": smoke.image,
            "image_size_mb": round(size / 1e6, 1),
            "build_seconds": float(environ["SMOKE_BUILD_SECONDS"]),
            "up_to_healthy_seconds": round(health_times.get("image-input", float("nan")), 1),
            "up_to_first_result_seconds": None if first_result is None else round(first_result, 1),
            "replicas": {name: n for name, n in smoke.scale.items() if n > 1},
            "images_per_replica": work,
            "results": len(present),
            "faces": faces,
            "failures": smoke.failures,
        }
        print(json.dumps(figures, indent=2))
    except Exception as exc:  # report and tear down
        smoke.failures.append(str(exc))
        log(f"FAIL  {exc}")
    finally:
        smoke.tear_down()
    return 1 if smoke.failures else 0


if __name__ == "__main__":
    sys.exit(main(os.environ))
