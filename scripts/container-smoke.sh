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

# --- 4. Start, feed, check, tear down (scripts/container_smoke.py) ---
export SMOKE_ROOT=$ROOT SMOKE_WORK=$WORK SMOKE_RUN_ID=$RUN_ID SMOKE_IMAGE_REF=$IMAGE \
  SMOKE_REDIS_REF=$REDIS_IMAGE SMOKE_PODMAN="${PODMAN[*]}" SMOKE_BUILD_SECONDS=$build_seconds
status=0
"$WORK/venv/bin/python" "$ROOT/scripts/container_smoke.py" || status=$?
if [ "$status" = 0 ]; then log "PASSED"; else log "FAILED"; fi
exit "$status"
