"""The image input service's folder watcher: queues every stable input that has no up-to-date result.

A file is queued once its size and mtime held still for one poll (never read half-written),
once per version (its job id derives from path, size and mtime). On start, and every
`rescan_interval_s` or when Redis lost everything, every input without an up-to-date result
that is not in the queue is queued again: the folders are the truth.

Usage::

    watcher = FolderWatcher(settings, store, metrics, input_dir, output_dir)
    watcher.run(stop_event)           # or watcher.poll() once
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import redis

from ..batch import Job, PlanError, is_up_to_date, plan_jobs
from .common import Metrics, log
from .settings import Settings
from .store import JobStore, QueuedJob, folder_job_id

__all__ = ["FolderWatcher"]


class FolderWatcher:
    """Queues every stable input of the input folder that has no up-to-date result."""

    def __init__(
        self, settings: Settings, store: JobStore, metrics: Metrics, input_dir: Path, output_dir: Path
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.input_dir = input_dir.resolve()
        self.output_dir = output_dir.resolve()
        self._seen: dict[Path, tuple[int, int]] = {}  # last poll's (size, mtime_ns)
        self._queued: dict[Path, str] = {}  # job id we queued or found done, per input
        self._next_rescan = 0.0
        self._last_listing: dict[str, tuple[int, int]] = {}
        self._undecided = True

    def run(self, stop: threading.Event) -> None:
        """Poll every `poll_interval_s` until `stop` is set; Redis errors wait for the next poll."""
        while not stop.is_set():
            try:
                self.poll()
            except redis.RedisError as exc:
                log(logging.WARNING, "redis unreachable while watching", error=str(exc))
            stop.wait(self.settings.poll_interval_s)

    def _listing(self) -> dict[str, tuple[int, int]]:
        """Name -> (size, mtime_ns) of the folder's visible files: a cheap change detector."""
        found: dict[str, tuple[int, int]] = {}
        try:
            with os.scandir(self.input_dir) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        with contextlib.suppress(OSError):
                            stat = entry.stat()
                            found[entry.name] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            pass
        return found

    def poll(self) -> int:
        """One look at the folder; returns how many inputs were queued."""
        now = time.monotonic()
        if now >= self._next_rescan or self.store.lost_everything():
            if self._next_rescan:
                log(logging.INFO, "rescanning the input folder")
            self.store.ensure_group()
            self._queued.clear()
            self._last_listing = {}
            self._next_rescan = now + self.settings.rescan_interval_s
        listing = self._listing()
        if listing == self._last_listing and not self._undecided and self._queued:
            return 0  # nothing changed since every input was decided: skip the planning
        self._last_listing = listing
        try:
            jobs = plan_jobs([self.input_dir], self.output_dir)
        except (PlanError, OSError) as exc:
            log(logging.ERROR, "cannot list the input folder", error=str(exc))
            return 0
        seen: dict[Path, tuple[int, int]] = {}
        queued = 0
        self._undecided = False
        for job in jobs:
            try:
                stat = job.source.stat()
            except OSError:
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            seen[job.source] = signature
            settled = time.time() - stat.st_mtime >= self.settings.poll_interval_s
            if self._seen.get(job.source) != signature or not settled:
                self._undecided = True
                continue  # new or still changing: look again next poll
            job_id = folder_job_id(job.image_id, stat.st_size, stat.st_mtime_ns)
            if self._queued.get(job.source) == job_id:
                continue
            if not is_up_to_date(job) and self._queue(job, job_id):
                queued += 1
            self._queued[job.source] = job_id
        self._seen = seen
        return queued

    def _queue(self, job: Job, job_id: str) -> bool:
        entry = QueuedJob(
            job_id=job_id,
            image_id=job.image_id,
            output_name=job.output.relative_to(self.output_dir).as_posix(),
            source_name=job.image_id,  # its path relative to the input folder
        )
        if not self.store.queue_input(entry):
            return False
        log(logging.INFO, "queued", job_id=job_id, image_id=job.image_id)
        return True
