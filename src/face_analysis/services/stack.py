"""The local stack: the four services as processes on this machine, like `docker compose up`.

Starts face landmark, age gender and data storage, waits for their health checks, then image
input; restarts a service that exits (with backoff, like a container restart policy) unless it
exits with the misconfiguration status (78, EX_CONFIG), which stops the stack with it; on
SIGTERM/SIGINT stops image input first (it finishes or hands back its jobs), then the others,
and kills what has not stopped after the grace period.

Usage::

    face-analysis stack up --input in/ --output out/ [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from .common import log
from .health import wait_healthy
from .settings import SERVICES, ServiceName, Settings
from .store import redis_client

__all__ = ["Stack"]

_BACKENDS: tuple[ServiceName, ...] = ("face-landmark", "age-gender", "data-storage")
_RESTART_BACKOFF_S, _RESTART_BACKOFF_MAX_S, _STABLE_AFTER_S = 0.5, 10.0, 30.0


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the stack dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Child:
    service: ServiceName
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = _RESTART_BACKOFF_S
    restart_at: float | None = None


class Stack:
    """The four services as child processes of this one."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.children = {service: _Child(service) for service in SERVICES}
        self.stopping = threading.Event()
        self.failed = 0

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen(
            [sys.executable, "-m", "face_analysis", "serve", child.service],
            env=self.environ,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the stack only; it stops the services in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log(
            logging.INFO,
            "service started",
            child=child.service,
            pid=child.process.pid,
            restarts=child.restarts,
        )

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        try:
            redis_client(self.settings.redis_url).ping()
        except redis.RedisError as exc:
            log(logging.ERROR, "redis is unreachable", redis_url=self.settings.redis_url, error=str(exc))
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.stopping.set())
        for service in _BACKENDS:
            self._start(self.children[service])
        for service in _BACKENDS:
            address = self.settings.address(service)
            while not self.stopping.is_set() and not wait_healthy(address, 1.0):
                self._supervise()  # a service that cannot start stops the stack here
            if self.stopping.is_set():
                break
        if not self.stopping.is_set():
            self._start(self.children["image-input"])
            log(logging.INFO, "stack up", api=f"{self.settings.bind_host}:{self.settings.image_input_port}")
        while not self.stopping.wait(0.2):
            self._supervise()
        self.stop()
        return self.failed

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.process is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._start(child)
                continue
            status = child.process.poll()
            if status is None:
                continue
            if status == self.settings.config_error_status:  # restarting cannot help: say so and stop
                log(
                    logging.ERROR,
                    "service cannot start; stopping the stack",
                    child=child.service,
                    status=status,
                )
                self.failed = status
                self.stopping.set()
                return
            if now - child.started_at >= _STABLE_AFTER_S:
                child.backoff_s = _RESTART_BACKOFF_S
            log(
                logging.WARNING,
                "service exited; restarting",
                child=child.service,
                status=status,
                in_s=child.backoff_s,
            )
            child.restart_at = now + child.backoff_s
            child.backoff_s = min(child.backoff_s * 2, _RESTART_BACKOFF_MAX_S)

    def stop(self) -> None:
        """Image input first (it finishes or hands back its jobs), then the rest; kill stragglers."""
        log(logging.INFO, "stopping the stack")
        grace = self.settings.shutdown_grace_s + 5
        for group in (("image-input",), _BACKENDS):
            running = [
                c.process for s in group if (c := self.children[s]).process and c.process.poll() is None
            ]
            for process in running:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for process in running:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log(logging.WARNING, "killing a service that did not stop", pid=process.pid)
                    process.kill()
                    process.wait()
        log(logging.INFO, "stack stopped")
