"""The image input service's queue workers: take jobs from the Redis stream and drive them.

`max_in_flight` driver threads read jobs from the stream's consumer group and run each through
the `JobDriver`, acknowledging it only after data storage has written its JSON. A reclaimer
thread keeps the jobs in flight claimed (so no one takes them over) and takes over the jobs of
a crashed replica once they have been idle for `claim_idle_s`. On `stop`, the workers take no
new job, let those in flight finish within the grace period and hand back (requeue) the rest.

Usage::

    workers = QueueWorkers(settings, store, driver, metrics, read_input=read_bytes)
    workers.start()
    ...
    workers.stop(deadline)        # after `stop_taking` was set
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

from .common import Metrics, log
from .driver import HandBack, JobDriver
from .settings import Settings
from .store import JobStore, QueuedJob, StreamEntry

__all__ = ["QueueWorkers"]


class QueueWorkers:
    """The driver threads and the reclaimer of one image input replica."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        driver: JobDriver,
        metrics: Metrics,
        read_input: Callable[[QueuedJob], bytes],
        stop_taking: threading.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self.driver = driver
        self.metrics = metrics
        self.read_input = read_input
        self.stop_taking = stop_taking
        self.consumer = settings.consumer()
        self._in_flight: dict[str, StreamEntry] = {}
        self._lock = threading.Lock()
        self._taken_over: queue.Queue[StreamEntry] = queue.Queue()
        self._threads: list[threading.Thread] = []

    @property
    def busy(self) -> bool:
        return bool(self._in_flight)

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [("reclaimer", self._reclaim_loop)]
        targets += [(f"driver-{i}", self._drive_loop) for i in range(self.settings.max_in_flight)]
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """After `stop_taking` and the driver's `abandon`: join the threads, hand back what was
        taken over but not started."""
        for thread in self._threads:
            thread.join(timeout=5)
        while not self._taken_over.empty():
            self._hand_back(self._taken_over.get_nowait())

    def _reclaim_loop(self) -> None:
        idle = self.settings.claim_idle_s
        next_take_over = time.monotonic() + min(idle, 5.0)
        while not self.stop_taking.wait(min(idle / 3, 2.0)):
            try:
                with self._lock:
                    mine = list(self._in_flight)
                self.store.keep_alive(self.consumer, mine)
                room = self._taken_over.qsize() < self.settings.max_in_flight
                if time.monotonic() >= next_take_over and room:
                    for entry in self.store.take_over(self.consumer, idle, count=self.settings.max_in_flight):
                        log(
                            logging.INFO,
                            "took over a job",
                            job_id=entry.job.job_id,
                            deliveries=entry.deliveries,
                        )
                        self._taken_over.put(entry)
                    next_take_over = time.monotonic() + idle / 2
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while reclaiming", error=str(exc))

    def _next_entry(self) -> StreamEntry | None:
        try:
            return self._taken_over.get_nowait()
        except queue.Empty:
            pass
        entries = self.store.read(self.consumer, count=1, block_ms=500)
        return entries[0] if entries else None

    def _drive_loop(self) -> None:
        while not self.stop_taking.is_set():
            try:
                entry = self._next_entry()
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while reading jobs", error=str(exc))
                self.stop_taking.wait(1.0)
                continue
            if entry is None:
                continue
            if self.stop_taking.is_set():
                self._hand_back(entry)
                break
            self._drive(entry)

    def _drive(self, entry: StreamEntry) -> None:
        job = entry.job
        with self._lock:
            self._in_flight[entry.entry_id] = entry
        self.metrics.in_flight(1)
        try:
            deadline = time.monotonic() + self.settings.job_timeout_s
            prior = max(0, entry.deliveries - 1)
            self.driver.run(job, lambda: self.read_input(job), deadline, prior_attempts=prior)
            self.store.ack(entry)
        except HandBack:
            self._hand_back(entry)
        except Exception as exc:  # left pending: taken over again after claim_idle_s
            log(logging.ERROR, "job left in the queue", job_id=job.job_id, error=repr(exc))
        finally:
            with self._lock:
                self._in_flight.pop(entry.entry_id, None)
            self.metrics.in_flight(-1)

    def _hand_back(self, entry: StreamEntry) -> None:
        try:
            self.store.hand_back(entry)
            log(logging.INFO, "job handed back", job_id=entry.job.job_id)
        except redis.RedisError as exc:  # still pending: taken over after claim_idle_s
            log(logging.WARNING, "cannot hand back a job", job_id=entry.job.job_id, error=str(exc))
