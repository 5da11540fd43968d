#!/usr/bin/env bash
# Container smoke test: build the image with podman, start the docker-compose.yml stack, let it
# analyse sample images into an output folder, and check the results against the embedded mode.
#
#   sudo scripts/container-smoke.sh     # ~9 min the first time (base image ~4, build ~3), ~2 after
#
# Too slow for every CI run (.ci/run does not call it); run it after changing the Dockerfile,
# docker-compose.yml or the services. Needs root, podman (with runc), debootstrap and python3
# on a Debian-like machine; it installs what is missing with apt-get. No Docker engine and no
# image registry are needed:
#
# 1. Base image: a Debian bookworm + python3/venv/pip stand-in for python:3.11-slim-bookworm,
#    made with debootstrap and `podman import`ed (kept and reused: SMOKE_BASE_IMAGE). Redis: a
#    stand-in for redis:7-alpine built from that base with Debian's redis-server (reused too).
# 2. `podman build` of the Dockerfile (Docker image format, so the HEALTHCHECK is kept), with
#    the host's CA bundle mounted for pip (builds behind a TLS-intercepting proxy work).
# 3. The stack: docker-compose.yml is resolved by podman-compose (`config`: interpolation,
#    anchors, .env handling) in a throwaway venv, and each service is started with plain podman
#    commands derived from it: same image, command, environment, user, volumes, restart
#    policy, published port and network aliases, in depends_on order, each waiting for its
#    dependencies' health checks (run with `podman healthcheck run`, since podman's own health
#    timers need systemd). SMOKE_NETWORK=bridge (default: a podman network, services reach
#    each other by name as under Compose) or host (--network host; every port is moved to a
#    free one and every address rewritten to 127.0.0.1).
# 4. Sample images (input/astronaut.jpg plus re-encodings, a 4-face mosaic, an EXIF-rotated
#    copy and a broken file, made at run time) go into a temporary input folder; one more
#    arrives after the stack is up (the watcher path). Every input must end with exactly one
#    JSON whose faces, boxes, landmarks, ages, genders and confidences (everything but timings
#    and timestamps) equal `face-analysis analyze` on the same images in the same image; the
#    public gRPC API (Analyze, through the published port) must give the same result; the
#    service containers and the files they write must be uid 1000.
# 5. Figures: image size, build time, time from `up` to the first result. Everything the run
#    started is removed at exit (containers, network, temporary folders); images are kept.
#
# Environment knobs: SMOKE_NETWORK (bridge|host), SMOKE_SCALE (replicas, bridge only; default
# "age-gender=2", e.g. "age-gender=3 face-landmark=2"), SMOKE_ENV (settings for both modes, e.g.
# "FACE_ANALYSIS_PRECISION=int8": the int8 detector), SMOKE_NO_CACHE=1 (build without the layer
# cache), SMOKE_KEEP=1 (keep the work folder and logs), SMOKE_PODMAN_FLAGS (global podman flags,
# default "--runtime runc --cgroup-manager=cgroupfs"), SMOKE_BASE_IMAGE, SMOKE_REDIS_IMAGE,
# SMOKE_IMAGE, SMOKE_DEBIAN_MIRROR, SMOKE_CA_DIR (default /etc/ssl/certs), SMOKE_TIMEOUT (s).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE=${SMOKE_BASE_IMAGE:-localhost/face-analysis-base:bookworm}
REDIS_IMAGE=${SMOKE_REDIS_IMAGE:-localhost/face-analysis-redis:bookworm}
IMAGE=${SMOKE_IMAGE:-localhost/face-analysis:smoke}
MIRROR=${SMOKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_DIR=${SMOKE_CA_DIR:-/etc/ssl/certs}
PODMAN_FLAGS=${SMOKE_PODMAN_FLAGS---runtime runc --cgroup-manager=cgroupfs}
RUN_ID=fa-smoke-$$
# shellcheck disable=SC2206  # the flags are words on purpose
PODMAN=(podman $PODMAN_FLAGS)

log() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo $0): podman builds and runs the images as root here"

WORK=$(mktemp -d /tmp/fa-smoke.XXXXXX)
chmod 755 "$WORK"
# shellcheck disable=SC2329  # invoked by the EXIT trap
cleanup() {
  local status=$?
  # The Python part stops and removes its containers itself; this catches an interrupted run.
  local ids
  ids=$("${PODMAN[@]}" ps -aq --filter "label=fa-smoke=$RUN_ID" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    # shellcheck disable=SC2086
    "${PODMAN[@]}" rm -f -t 5 $ids >/dev/null 2>&1 || true
  fi
  "${PODMAN[@]}" network rm -f "$RUN_ID" >/dev/null 2>&1 || true
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 0. Tools and podman configuration (idempotent) ---
missing=()
for tool in podman runc debootstrap python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "install ${missing[*]} (no apt-get here)"
  log "installing ${missing[*]}"
  packages=("${missing[@]}")
  [[ " ${missing[*]} " == *" python3 "* ]] && packages+=(python3-venv)
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || {
  command -v apt-get >/dev/null || die "python3 needs the venv module"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
}
# Podman's default ulimits cannot be applied in some sandboxes; an empty list keeps the host's.
CONF=/etc/containers/containers.conf
mkdir -p /etc/containers
if ! grep -qs '^[[:space:]]*default_ulimits' "$CONF"; then
  if grep -qs '^\[containers\]' "$CONF"; then
    sed -i 's/^\[containers\]/[containers]\ndefault_ulimits = []/' "$CONF"
  else
    printf '\n[containers]\ndefault_ulimits = []\n' >> "$CONF"
  fi
  log "set default_ulimits = [] in $CONF"
fi

# --- 1. Base image and Redis stand-in (made once, then reused) ---
# Images named outside localhost/ (e.g. SMOKE_BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
# where a registry is reachable) are pulled instead of made.
for image in "$BASE_IMAGE" "$REDIS_IMAGE"; do
  if [[ $image != localhost/* ]] && ! "${PODMAN[@]}" image exists "$image"; then
    "${PODMAN[@]}" pull "$image" >/dev/null || die "cannot pull $image"
  fi
done
if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  log "making $BASE_IMAGE with debootstrap ($MIRROR); a few minutes"
  rootfs=$WORK/rootfs
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . \
    | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" \
      > "$WORK/import.log" 2>&1 || { cat "$WORK/import.log"; die "podman import failed"; }
  rm -rf "$rootfs"
fi
if ! "${PODMAN[@]}" image exists "$REDIS_IMAGE"; then
  log "making $REDIS_IMAGE (Debian's redis-server on $BASE_IMAGE)"
  mkdir -p "$WORK/redis"
  cat > "$WORK/redis/Containerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
EOF
  "${PODMAN[@]}" build --network host -t "$REDIS_IMAGE" "$WORK/redis" > "$WORK/redis-build.log" 2>&1 \
    || { tail -20 "$WORK/redis-build.log"; die "building $REDIS_IMAGE failed"; }
fi

# --- 2. The image ---
build_args=(--format docker --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
if [ -f "$CA_DIR/ca-certificates.crt" ]; then
  build_args+=(--volume "$CA_DIR:/etc/ssl/certs:ro" --build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi
[ "${SMOKE_NO_CACHE:-0}" = 1 ] && build_args+=(--no-cache)
log "building $IMAGE from $BASE_IMAGE"
build_start=$(date +%s.%N)
"${PODMAN[@]}" build "${build_args[@]}" "$ROOT" > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; die "podman build failed (log above)"; }
build_seconds=$(python3 -c "print(round($(date +%s.%N) - $build_start, 1))")
log "built in ${build_seconds}s"

# --- 3. podman-compose (for `config`) in a throwaway venv ---
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check 'podman-compose==1.6.0' \
  > "$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; die "pip install podman-compose failed"; }

# --- 4. Start, feed, check, tear down ---
export SMOKE_ROOT=$ROOT SMOKE_WORK=$WORK SMOKE_RUN_ID=$RUN_ID SMOKE_IMAGE_REF=$IMAGE \
  SMOKE_REDIS_REF=$REDIS_IMAGE SMOKE_PODMAN="${PODMAN[*]}" SMOKE_BUILD_SECONDS=$build_seconds
status=0
"$WORK/venv/bin/python" - <<'PY' || status=$?
"""The stack part of scripts/container-smoke.sh (see its header)."""

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
from pathlib import Path

import yaml

ROOT = Path(os.environ["SMOKE_ROOT"])
WORK = Path(os.environ["SMOKE_WORK"])
RUN_ID = os.environ["SMOKE_RUN_ID"]
IMAGE = os.environ["SMOKE_IMAGE_REF"]
REDIS_IMAGE = os.environ["SMOKE_REDIS_REF"]
PODMAN = shlex.split(os.environ["SMOKE_PODMAN"])
NETWORK = os.environ.get("SMOKE_NETWORK", "bridge")
TIMEOUT = float(os.environ.get("SMOKE_TIMEOUT", "240"))
UID = 1000
# Settings for both modes, e.g. SMOKE_ENV="FACE_ANALYSIS_PRECISION=int8 FACE_ANALYSIS_PRESET=accurate".
SMOKE_ENV = dict(item.split("=", 1) for item in os.environ.get("SMOKE_ENV", "").split())
IGNORED_KEYS = {"processing_time", "timings_ms"}  # differ run to run; everything else must match

failures: list[str] = []
started: list[str] = []  # container names, in start order


def log(message: str) -> None:
    print(f"[smoke {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def check(ok: bool, what: str) -> bool:
    log(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)
    return ok


def podman(*args: str, check_rc: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check_rc and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ...: {result.stderr.strip()[-2000:]}")
    return result


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


# --- Sample images, and the embedded mode's results on them (the reference) ---

staging, input_dir, output_dir, reference_dir = (WORK / n for n in ("staging", "input", "output", "reference"))
for folder in (staging, input_dir, output_dir, reference_dir):
    folder.mkdir()
shutil.copy(ROOT / "input" / "astronaut.jpg", staging / "astronaut.jpg")
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
podman("run", "--rm", "--user", "0:0", "--network", "none", "-v", f"{staging}:/w", "--entrypoint", "python",
       IMAGE, "-c", MAKE_SAMPLES)
samples = sorted(p.name for p in staging.iterdir())
late = "mosaic.webp"  # arrives once the stack is up: the folder watcher's path
os.chown(reference_dir, UID, UID)
os.chown(output_dir, UID, UID)
log(f"samples: {', '.join(samples)}")
env_args = [arg for key, value in SMOKE_ENV.items() for arg in ("--env", f"{key}={value}")]
reference_run = podman("run", "--rm", "--network", "none", *env_args, "-v", f"{staging}:/data/input:ro",
                       "-v", f"{reference_dir}:/data/output", IMAGE, "analyze", "/data/input", "-o", "/data/output",
                       check_rc=False, timeout=300)
check(reference_run.returncode in (0, 1), f"embedded mode in the image ran (exit {reference_run.returncode})")
reference = {p.name: json.loads(p.read_text()) for p in reference_dir.glob("*.json")}
check(len(reference) == len(samples), f"embedded mode wrote {len(reference)} results for {len(samples)} inputs")
for name in samples:
    if name != late:
        shutil.copy(staging / name, input_dir / name)

# --- The compose file, resolved by podman-compose ---

env_file = WORK / "empty.env"  # ignore a developer's .env: the smoke test runs the defaults
env_file.write_text("")
public_port = free_port()
compose_env = {  # the defaults, whatever this shell sets (the reference run gets none either)
    **{k: v for k, v in os.environ.items() if not k.startswith(("FACE_ANALYSIS_", "ROBOFLOW_", "REDIS_"))},
    "FACE_ANALYSIS_IMAGE": IMAGE,
    "REDIS_IMAGE": REDIS_IMAGE,
    "FACE_ANALYSIS_INPUT": str(input_dir),
    "FACE_ANALYSIS_OUTPUT": str(output_dir),
    "FACE_ANALYSIS_PUBLIC_PORT": str(public_port),
    **SMOKE_ENV,
}
resolved = subprocess.run(
    [str(WORK / "venv" / "bin" / "podman-compose"), "--env-file", str(env_file), "-f",
     str(ROOT / "docker-compose.yml"), "config"],
    capture_output=True, text=True, env=compose_env, cwd=ROOT, check=False,
)
if resolved.returncode != 0:
    sys.exit(f"podman-compose config failed: {resolved.stderr}")
config = yaml.safe_load(resolved.stdout)
services: dict[str, dict] = config["services"]
check(set(services) == {"redis", "image-input", "face-landmark", "age-gender", "data-storage"},
      f"compose services: {sorted(services)}")

# The compose file's ${VAR:-default}s must be the services' own defaults (those in the image).
raw_env = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-environment"]
variables = podman("run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE, "-c",
                   "import json; from face_analysis.services.settings import Settings; "
                   "print(json.dumps(Settings.variables()))", check_rc=False)
try:
    defaults = {name: default for name, default, _ in json.loads(variables.stdout)}
except ValueError:
    defaults = {}
    check(False, f"the image's service settings are readable ({variables.stderr.strip()[-300:]})")
for name, value in raw_env.items():
    match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
    if not match or not defaults:
        continue
    if name not in defaults:
        check(False, f"compose sets {name}, which the services do not read")
    else:
        ours, theirs = match.group(2), defaults[name]
        same = ours == theirs or (re.fullmatch(r"[\d.]+", ours or "x") and float(ours) == float(theirs or "nan"))
        check(bool(same), f"compose default {name}={ours} is the services' default ({theirs})")

# --- Translate each service into podman commands ---

network_args: dict[str, list[str]] = {}
rewrites: dict[str, str] = {}
extra_env: dict[str, str] = {}
redis_port = 6379
api_address = f"127.0.0.1:{public_port}"
if NETWORK == "bridge":
    podman("network", "create", RUN_ID)
    for name in services:
        network_args[name] = ["--network", RUN_ID, "--network-alias", name]
elif NETWORK == "host":
    # One network namespace for all: move every port to a free one, every address to 127.0.0.1.
    redis_port = free_port()
    rewrites[f"redis:{6379}"] = f"127.0.0.1:{redis_port}"
    extra_env["FACE_ANALYSIS_BIND_HOST"] = "127.0.0.1"
    for name, port in (("image-input", 50051), ("face-landmark", 50052), ("age-gender", 50053),
                       ("data-storage", 50054)):
        key = name.upper().replace("-", "_")
        grpc_port = free_port()
        extra_env[f"FACE_ANALYSIS_{key}_PORT"] = str(grpc_port)
        extra_env[f"FACE_ANALYSIS_{key}_METRICS_PORT"] = str(free_port())
        rewrites[f"{name}:{port}"] = f"127.0.0.1:{grpc_port}"
        if name == "image-input":
            api_address = f"127.0.0.1:{grpc_port}"
    for name in services:
        network_args[name] = ["--network", "host"]
else:
    sys.exit(f"SMOKE_NETWORK must be bridge or host, not {NETWORK}")


def run_args(name: str, spec: dict, container: str) -> list[str]:
    args = ["run", "-d", "--name", container, "--label", f"fa-smoke={RUN_ID}", *network_args[name]]
    if spec.get("user"):
        args += ["--user", str(spec["user"])]
    if spec.get("restart"):
        args += ["--restart", spec["restart"]]
    args += ["--stop-timeout", str(int(seconds(spec.get("stop_grace_period"), 10)))]
    environment = spec.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, os.environ.get(item, ""))
                           for item in environment)
    if name != "redis":
        environment = {**environment, **extra_env}
    for key, value in environment.items():
        value = "" if value is None else str(value)
        for old, new in rewrites.items():
            value = value.replace(old, new)
        args += ["--env", f"{key}={value}"]
    for volume in spec.get("volumes") or []:
        source, _, rest = str(volume).partition(":")
        if source.startswith("."):
            source = str((ROOT / source).resolve())
        args += ["--volume", f"{source}:{rest}"]
    if NETWORK == "bridge" and container.endswith("-1"):  # a published port has one owner
        for port in spec.get("ports") or []:
            args += ["--publish", str(port)]
    test = (spec.get("healthcheck") or {}).get("test")
    if test:
        command = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
        if name == "redis" and NETWORK == "host":
            command = [*command[:1], "-p", str(redis_port), *command[1:]]
        args += ["--health-cmd", command[0] if test[0] == "CMD-SHELL" else shlex.join(command)]
    command = [str(c) for c in spec.get("command") or []]
    if name == "redis" and NETWORK == "host":
        command += ["--port", str(redis_port), "--bind", "127.0.0.1"]
    return [*args, str(spec["image"]), *command]


def healthy(container: str) -> bool:
    return podman("healthcheck", "run", container, check_rc=False, timeout=30).returncode == 0


def running(container: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Status}}", container, check_rc=False)
    return state.stdout.strip() == "running"


def wait_for(container: str, condition: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if condition == "service_healthy" and healthy(container):
            return True
        if condition == "service_started" and running(container):
            return True
        if not running(container) and condition != "service_completed_successfully":
            restarts = podman("inspect", "--format", "{{.RestartCount}}", container, check_rc=False).stdout.strip()
            log(f"{container} is not running (restarts {restarts})")
        time.sleep(1)
    return False


def order(specs: dict[str, dict]) -> list[str]:
    done: list[str] = []
    while len(done) < len(specs):
        ready = [n for n in specs if n not in done and all(d in done for d in (specs[n].get("depends_on") or {}))]
        if not ready:
            sys.exit(f"depends_on has a cycle among {set(specs) - set(done)}")
        done += sorted(ready)
    return done


def compare(actual: dict, expected: dict) -> list[str]:
    keys = (set(actual) | set(expected)) - IGNORED_KEYS
    return [k for k in sorted(keys) if actual.get(k) != expected.get(k)]


def dump_logs() -> None:
    for container in started:
        logs = podman("logs", "--tail", "30", container, check_rc=False)
        print(f"--- {container} (last 30 lines) ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)


# Replicas, as `docker compose up --scale NAME=N` makes them (bridge network only: under host
# networking every replica would want the same ports).
scale = {name: 1 for name in services}
for item in os.environ.get("SMOKE_SCALE", "age-gender=2" if NETWORK == "bridge" else "").split():
    name, _, count = item.partition("=")
    if name not in services or not count.isdigit() or (int(count) > 1 and NETWORK != "bridge"):
        sys.exit(f"SMOKE_SCALE: cannot run {item} (services: {sorted(services)}; bridge network only)")
    scale[name] = int(count)


def replicas(name: str) -> list[str]:
    return [f"{RUN_ID}-{name}-{i}" for i in range(1, scale[name] + 1)]


try:
    up = time.monotonic()
    health_times: dict[str, float] = {}
    for name in order(services):
        spec = services[name]
        deadline = time.monotonic() + TIMEOUT
        for dependency, detail in (spec.get("depends_on") or {}).items():
            condition = (detail or {}).get("condition", "service_started")
            for container in replicas(dependency):
                if not check(wait_for(container, condition, deadline),
                             f"{container} reached {condition} before {name} started"):
                    raise RuntimeError(f"{container} never got {condition}")
            health_times.setdefault(dependency, time.monotonic() - up)
        for container in replicas(name):
            log(f"starting {container}: {spec['image']} {shlex.join(str(c) for c in spec.get('command') or [])}")
            podman(*run_args(name, spec, container))
            started.append(container)
    check(wait_for(f"{RUN_ID}-image-input-1", "service_healthy", time.monotonic() + TIMEOUT),
          "image-input is healthy")
    health_times["image-input"] = time.monotonic() - up
    log("healthy after (s from up): " + ", ".join(f"{k} {v:.1f}" for k, v in health_times.items()))
    # One more image, moved in atomically, now that everything runs.
    shutil.copy(staging / late, WORK / late)
    os.rename(WORK / late, input_dir / late)

    expected = {n.rsplit(".", 1)[0] + ".json" for n in samples}
    first_result: float | None = None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        present = {p.name for p in output_dir.glob("*.json")}
        if present and first_result is None:
            first_result = time.monotonic() - up
            log(f"first result {first_result:.1f}s after up")
        if expected <= present:
            break
        time.sleep(0.25)
    present = {p.name for p in output_dir.glob("*.json")}
    check(present == expected, f"one result per input: {sorted(present)} (expected {sorted(expected)})")
    time.sleep(2)  # nothing is written twice: the files must not change any more
    snapshot = {p.name: p.read_bytes() for p in output_dir.glob("*.json")}
    time.sleep(3)
    check(snapshot == {p.name: p.read_bytes() for p in output_dir.glob("*.json")}, "results stay unchanged")
    check(not [p.name for p in output_dir.iterdir() if p.name.startswith(".")], "no temporary files left")

    faces = 0
    for name in sorted(present & set(reference)):
        actual = json.loads((output_dir / name).read_text())
        faces += len(actual.get("faces") or [])
        differing = compare(actual, reference[name])
        error = (actual.get("error") or {}).get("code")
        check(not differing, f"{name}: {len(actual.get('faces') or [])} faces"
              + (f", error {error}" if error else "")
              + (f"; differs from embedded mode in {differing}" if differing else ", equal to embedded mode"))
        stat = (output_dir / name).stat()
        check(stat.st_uid == UID, f"{name} written by uid {stat.st_uid}")
        if stat.st_mode & 0o044 != 0o044:
            log(f"note  {name} has mode {oct(stat.st_mode & 0o777)}: users other than uid {UID} cannot read it")
    check(faces >= 8, f"{faces} faces in all results (the samples hold at least 8)")

    for container in started:
        status = podman("exec", container, "cat", "/proc/1/status").stdout
        uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
        if "redis" not in container:
            check(bool(uids) and set(uids.group(1).split()) == {str(UID)}, f"{container} runs as uid {UID}")
            telemetry = podman("exec", container, "sh", "-c", 'ls -A "$HOME/.cache/Microsoft" 2>/dev/null',
                               check_rc=False).stdout.split()
            check(not telemetry, f"{container} keeps no onnxruntime telemetry state ({telemetry or 'none'})")

    # The public API through the published port: Analyze the astronaut synchronously.
    api_check = f"""
import grpc, json, sys
from face_analysis.services.generated import image_input_pb2 as pb, image_input_pb2_grpc as rpc
with grpc.insecure_channel("{api_address}") as channel:
    reply = rpc.ImageInputStub(channel).Analyze(
        pb.AnalyzeRequest(image=open("/w/astronaut.jpg", "rb").read(), name="astronaut.jpg"), timeout=60)
print(reply.json)
"""
    api = podman("run", "--rm", "--network", "host", "-v", f"{staging}:/w:ro", "--entrypoint", "python",
                 IMAGE, "-c", api_check, check_rc=False)
    if check(api.returncode == 0, f"Analyze over gRPC at {api_address} answered" + (
            "" if api.returncode == 0 else f": {api.stderr.strip()[-500:]}")):
        differing = compare(json.loads(api.stdout), reference["astronaut.json"])
        check(not differing, "Analyze result equals embedded mode" + (f" except {differing}" if differing else ""))

    # Who did the work: each analysis replica's image counter (its Prometheus endpoint).
    metrics_ports = {"face-landmark": 9102, "age-gender": 9103, "data-storage": 9104}
    work: dict[str, int] = {}
    for name, port in metrics_ports.items():
        port = int(extra_env.get(f"FACE_ANALYSIS_{name.upper().replace('-', '_')}_METRICS_PORT", port))
        for container in replicas(name):
            scrape = podman("exec", container, "python", "-c",
                            f"import urllib.request; print(urllib.request.urlopen("
                            f"'http://127.0.0.1:{port}/metrics', timeout=5).read().decode())", check_rc=False)
            counts = re.findall(r'^face_analysis_images_total\{[^}]*\} ([\d.e+]+)$', scrape.stdout, re.MULTILINE)
            work[container.removeprefix(RUN_ID + "-")] = int(sum(float(c) for c in counts))
    log("images handled per replica: " + ", ".join(f"{k} {v}" for k, v in work.items()))
    for name in metrics_ports:
        if scale[name] > 1 and sum(1 for c in replicas(name) if work.get(c.removeprefix(RUN_ID + "-"))) < 2:
            log(f"note  only one of the {scale[name]} {name} replicas got work: the image input "
                "service's gRPC channel does not balance over the replicas' addresses")

    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    print(json.dumps({
        "passed": not failures,
        "network": NETWORK,
        "image": IMAGE,
        "image_size_mb": round(size / 1e6, 1),
        "build_seconds": float(os.environ["SMOKE_BUILD_SECONDS"]),
        "up_to_healthy_seconds": round(health_times.get("image-input", float("nan")), 1),
        "up_to_first_result_seconds": None if first_result is None else round(first_result, 1),
        "replicas": {name: n for name, n in scale.items() if n > 1},
        "images_per_replica": work,
        "results": len(present),
        "faces": faces,
        "failures": failures,
    }, indent=2))
except Exception as exc:  # noqa: BLE001  (report and tear down)
    failures.append(str(exc))
    log(f"FAIL  {exc}")
finally:
    if failures:
        dump_logs()
    (WORK / "logs").mkdir(exist_ok=True)
    for container in reversed(started):  # image input first: it stops taking work
        logs = podman("logs", container, check_rc=False)
        (WORK / "logs" / f"{container}.log").write_text(logs.stdout + logs.stderr)
        podman("stop", "-t", "30", container, check_rc=False, timeout=60)
        code = podman("inspect", "--format", "{{.State.ExitCode}}", container, check_rc=False).stdout.strip()
        log(f"stopped {container} (exit {code})")
        podman("rm", "-f", container, check_rc=False)
    if NETWORK == "bridge":
        podman("network", "rm", "-f", RUN_ID, check_rc=False)
sys.exit(1 if failures else 0)
PY
if [ "$status" = 0 ]; then log "PASSED"; else log "FAILED"; fi
exit "$status"
