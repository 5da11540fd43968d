"""Ask a service's standard gRPC health service whether it is SERVING.

The container image's HEALTHCHECK runs this with no argument: it checks the `face-analysis serve
SERVICE` that runs as PID 1 (any other command, e.g. `analyze`, has nothing to check and counts
as healthy), at the port and bind address the same FACE_ANALYSIS_* variables give the service.
`face-analysis stack` waits with `wait_healthy`.

Usage::

    python -m face_analysis.services.health                    # the container's PID 1
    python -m face_analysis.services.health face-landmark      # this machine's, from its settings
    python -m face_analysis.services.health --address 127.0.0.1:50052
    wait_healthy("127.0.0.1:50052", timeout_s=30)              # True once SERVING

Exit status: 0 SERVING (or nothing to check), 1 otherwise (one line on stderr says why).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health_pb2

from ..errors import SettingsError
from .settings import SERVICES, ServiceName, Settings

__all__ = ["check", "main", "wait_healthy"]

_ANY_ADDRESS = ("", "0.0.0.0", "::")


def check(address: str, timeout_s: float, *, wait: bool = False) -> str:
    """The health status name at `address` ("SERVING", "NOT_SERVING", ...), or the gRPC status
    code's name when the call fails. `wait`: wait for the server to come up (within `timeout_s`)."""
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
    with grpc.insecure_channel(address, options=options) as channel:
        ask = channel.unary_unary(  # the typeshed stub of HealthStub lists no methods
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = ask(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, wait_for_ready=wait)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            return str(code.name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_healthy(address: str, timeout_s: float) -> bool:
    """True once the gRPC health service at `address` reports SERVING (within `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        if check(address, min(1.0, remaining), wait=True) == "SERVING":
            return True
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    return False


def _pid1_service() -> str | None:
    """The SERVICE of a `serve SERVICE` command running as PID 1, else None."""
    try:
        argv = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return argv[argv.index("serve") + 1] if "serve" in argv[:-1] else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m face_analysis.services.health", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("service", nargs="?", choices=SERVICES, help="default: the `serve` command of PID 1")
    parser.add_argument("--address", help="HOST:PORT to ask instead of the service's own")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    address: str | None = args.address
    name = args.service or _pid1_service()
    if address is None:
        if name is None:
            return 0  # not a service: nothing to check
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        host = "127.0.0.1" if settings.bind_host in _ANY_ADDRESS else settings.bind_host
        if name not in SERVICES:
            print(f"{name}: not a service", file=sys.stderr)
            return 1
        address = f"{host}:{settings.port(cast(ServiceName, name))}"
    status = check(address, args.timeout)
    if status != "SERVING":
        print(f"{name or address}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
