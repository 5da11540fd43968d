"""Redis, the blackboard between the services: keys, TTLs and the job stream.

Keys (all under the `FACE_ANALYSIS_KEY_PREFIX`, default `fa`)::

    fa:img:{job}      image bytes                       (TTL: intermediate_ttl_s)
    fa:rgb:{job}      the decoded pixels, for age gender (TTL: intermediate_ttl_s; small images)
    fa:det:{job}      FaceDetections (protobuf)         (TTL: intermediate_ttl_s)
    fa:age:{job}      AgeGenderEstimates (protobuf)     (TTL: intermediate_ttl_s)
    fa:res:{job}      AnalysisResult (protobuf)         (TTL: result_ttl_s)
    fa:job:{job}      "pending" while an API job is queued or running (TTL: result_ttl_s)
    fa:claim:{job}    stream entry id of a queued folder input: the input is not queued twice
    fa:jobs           the job stream; consumer group `drivers`
    fa:epoch          set when the stream is created: its absence means Redis lost everything
    fa:stamp:{svc}    Stamp (protobuf) a model service announces: what it runs (TTL: 60 s, renewed)

A folder input's job id is derived from its path, size and mtime, so the same file is one job
however often it is seen. Stream entries are acknowledged (XACK) and deleted only after the
result is on disk; a replica that dies leaves its entries pending, and another takes them over
(XAUTOCLAIM) once they have been idle for `claim_idle_s`.

Every command goes through one retry policy (`REDIS_RETRY_*`, redis-py's own `Retry`): a Redis
that restarts or is briefly unreachable is waited for, with jittered exponential backoff, about
ten seconds at most; then the error reaches the caller, which fails the call or leaves the job
pending for a later take-over.
"""

from __future__ import annotations

import hashlib
import struct
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import redis
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from ..imaging import RGBImage
from .generated import age_gender_pb2, aggregator_pb2, common_pb2, landmark_detection_pb2
from .settings import ServiceName, Settings

__all__ = ["JobStore", "QueuedJob", "StreamEntry", "api_job_id", "folder_job_id", "redis_client"]

_GROUP = "drivers"
# Decoded images up to this size are passed on to age gender as pixels (24 MiB: ~2800 x 2800).
MAX_PIXEL_BYTES = 24 * 1024 * 1024
_PIXELS_HEADER = struct.Struct("<II")  # height, width
# The one retry policy for Redis: waits of 0.05-2 s (doubling, jittered), 8 retries (~10 s).
REDIS_RETRY_BASE_S, REDIS_RETRY_CAP_S, REDIS_RETRIES = 0.1, 2.0, 8
STAMP_TTL_S = 60


def redis_client(url: str) -> redis.Redis:
    """A client for `url` whose every command follows the retry policy."""
    retry = Retry(EqualJitterBackoff(cap=REDIS_RETRY_CAP_S, base=REDIS_RETRY_BASE_S), REDIS_RETRIES)
    return redis.Redis.from_url(
        url,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=retry,
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def folder_job_id(relative_path: str, size: int, mtime_ns: int) -> str:
    """The job id of one version of an input file (same file, same id)."""
    digest = hashlib.sha256(f"{relative_path}\0{size}\0{mtime_ns}".encode()).hexdigest()
    return f"f{digest[:32]}"


def api_job_id() -> str:
    """A fresh job id for an image sent to the API."""
    return f"a{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """What a stream entry says about a job.

    source_name is the input relative to the input folder ("" for an image sent to the API);
    output_name the result file relative to the output folder.
    """

    job_id: str
    image_id: str
    output_name: str
    source_name: str

    def fields(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_fields(cls, data: dict[bytes, bytes]) -> QueuedJob:
        def text(key: str) -> str:
            return data.get(key.encode(), b"").decode()

        return cls(text("job_id"), text("image_id"), text("output_name"), text("source_name"))


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One delivery of a job: its stream entry id and how often it has been delivered."""

    entry_id: str
    job: QueuedJob
    deliveries: int = 1


class JobStore:
    """The services' view of Redis."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.client = client or redis_client(settings.redis_url)
        self.prefix = settings.key_prefix
        self.intermediate_ttl = settings.intermediate_ttl_s
        self.result_ttl = settings.result_ttl_s
        self.stream = f"{self.prefix}:jobs"
        self.epoch_key = f"{self.prefix}:epoch"

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.prefix}:{kind}:{job_id}"

    # Intermediates.

    def put_image(self, job_id: str, data: bytes) -> None:
        self.client.set(self._key("img", job_id), data, ex=self.intermediate_ttl)

    def get_image(self, job_id: str) -> bytes | None:
        return cast(bytes | None, self.client.get(self._key("img", job_id)))

    def has_image(self, job_id: str) -> bool:
        return bool(self.client.exists(self._key("img", job_id)))

    def put_detections(self, job_id: str, detections: landmark_detection_pb2.FaceDetections) -> None:
        self.client.set(self._key("det", job_id), detections.SerializeToString(), ex=self.intermediate_ttl)

    def get_detections(self, job_id: str) -> landmark_detection_pb2.FaceDetections | None:
        data = cast(bytes | None, self.client.get(self._key("det", job_id)))
        return None if data is None else landmark_detection_pb2.FaceDetections.FromString(data)

    def put_estimates(self, job_id: str, estimates: age_gender_pb2.AgeGenderEstimates) -> None:
        self.client.set(self._key("age", job_id), estimates.SerializeToString(), ex=self.intermediate_ttl)

    def get_estimates(self, job_id: str) -> age_gender_pb2.AgeGenderEstimates | None:
        data = cast(bytes | None, self.client.get(self._key("age", job_id)))
        return None if data is None else age_gender_pb2.AgeGenderEstimates.FromString(data)

    def put_pixels(self, job_id: str, image: RGBImage) -> bool:
        """Keep the decoded image for the age gender service (spares it a second decode);
        False, and nothing kept, for an image over MAX_PIXEL_BYTES."""
        if image.nbytes > MAX_PIXEL_BYTES:
            return False
        height, width = image.shape[:2]
        data = _PIXELS_HEADER.pack(height, width) + image.tobytes()
        self.client.set(self._key("rgb", job_id), data, ex=self.intermediate_ttl)
        return True

    def get_pixels(self, job_id: str) -> RGBImage | None:
        """The decoded image kept by `put_pixels` (read-only), or None."""
        data = cast(bytes | None, self.client.get(self._key("rgb", job_id)))
        if data is None or len(data) < _PIXELS_HEADER.size:
            return None
        height, width = _PIXELS_HEADER.unpack_from(data)
        pixels = np.frombuffer(data, dtype=np.uint8, offset=_PIXELS_HEADER.size)
        return pixels.reshape(height, width, 3) if pixels.size == height * width * 3 else None

    def delete_intermediates(self, job_id: str) -> None:
        self.client.delete(*(self._key(kind, job_id) for kind in ("img", "rgb", "det", "age")))

    # Results and job state.

    def put_result(self, job_id: str, result: aggregator_pb2.AnalysisResult) -> None:
        pipe = self.client.pipeline()
        pipe.set(self._key("res", job_id), result.SerializeToString(), ex=self.result_ttl)
        pipe.delete(self._key("job", job_id))
        pipe.execute()

    def get_result(self, job_id: str) -> aggregator_pb2.AnalysisResult | None:
        data = cast(bytes | None, self.client.get(self._key("res", job_id)))
        return None if data is None else aggregator_pb2.AnalysisResult.FromString(data)

    # What the model services run.

    def announce(self, service: ServiceName, stamp: common_pb2.Stamp) -> None:
        """Say what `service` runs (renewed while it runs): the stamp of results it took no part in."""
        self.client.set(self._key("stamp", service), stamp.SerializeToString(), ex=STAMP_TTL_S)

    def announced(self, service: ServiceName) -> common_pb2.Stamp | None:
        data = cast(bytes | None, self.client.get(self._key("stamp", service)))
        return None if data is None else common_pb2.Stamp.FromString(data)

    def mark_pending(self, job_id: str) -> None:
        self.client.set(self._key("job", job_id), b"pending", ex=self.result_ttl)

    def is_pending(self, job_id: str) -> bool:
        return bool(self.client.exists(self._key("job", job_id)))

    # The job stream.

    def ensure_group(self) -> None:
        """Create the stream and its consumer group if they do not exist (e.g. after a flush)."""
        try:
            self.client.xgroup_create(self.stream, _GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.client.set(self.epoch_key, str(time.time()), nx=True)

    def lost_everything(self) -> bool:
        """True when Redis no longer has the stream's epoch marker (flushed or replaced)."""
        return not self.client.exists(self.epoch_key)

    def enqueue(self, job: QueuedJob) -> str:
        """Add a job to the stream; returns its entry id."""
        entry_id = self.client.xadd(self.stream, cast(Any, job.fields()))
        return _text(entry_id)

    def queue_input(self, job: QueuedJob) -> bool:
        """Queue a folder input unless it is queued already (its claim names a live entry).

        The claim key is taken with SET NX first, so two replicas watching one folder do not
        both queue a new file; a claim whose entry is gone (flushed, lost) is taken over.
        """
        key = self._key("claim", job.job_id)
        if not self.client.set(key, b"queuing", nx=True, ex=60):
            current = cast(bytes | None, self.client.get(key))
            if current is None or current == b"queuing":
                return False
            if self.client.xrange(self.stream, current, current, count=1):
                return False
            self.client.set(key, b"queuing", ex=60)
        entry_id = self.enqueue(job)
        self.client.set(key, entry_id.encode(), ex=self.result_ttl)
        return True

    def read(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        """New entries for this consumer (blocks up to `block_ms`); recreates a lost group."""
        try:
            reply = self.client.xreadgroup(_GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return []
        return [
            StreamEntry(_text(entry_id), QueuedJob.from_fields(data))
            for _, entries in cast(list[Any], reply or [])
            for entry_id, data in entries
            if data
        ]

    def take_over(self, consumer: str, min_idle_s: float, count: int = 16) -> list[StreamEntry]:
        """Entries idle longer than `min_idle_s` in other consumers (crashed replicas) become ours."""
        try:
            reply = self.client.xautoclaim(
                self.stream,
                _GROUP,
                consumer,
                min_idle_time=int(min_idle_s * 1000),
                start_id="0-0",
                count=count,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()
            return []
        entries = cast(list[Any], reply[1])
        taken: list[StreamEntry] = []
        for entry_id, data in entries:
            if not data:  # deleted meanwhile
                self.client.xack(self.stream, _GROUP, entry_id)
                continue
            pending = self.client.xpending_range(self.stream, _GROUP, min=entry_id, max=entry_id, count=1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            taken.append(StreamEntry(_text(entry_id), QueuedJob.from_fields(data), deliveries))
        return taken

    def keep_alive(self, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of entries we are still working on, so no one takes them over."""
        if entry_ids:
            try:
                self.client.xclaim(self.stream, _GROUP, consumer, 0, list[Any](entry_ids), justid=True)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise

    def ack(self, entry: StreamEntry) -> None:
        """The job's result is on disk: forget the entry and the input's claim."""
        pipe = self.client.pipeline()
        pipe.xack(self.stream, _GROUP, entry.entry_id)
        pipe.xdel(self.stream, entry.entry_id)
        pipe.delete(self._key("claim", entry.job.job_id))
        pipe.execute()

    def hand_back(self, entry: StreamEntry) -> None:
        """Requeue an unfinished job (graceful shutdown): a fresh entry first, then drop ours."""
        new_id = self.enqueue(entry.job)
        pipe = self.client.pipeline()
        if entry.job.source_name:
            pipe.set(self._key("claim", entry.job.job_id), new_id.encode(), ex=self.result_ttl)
        pipe.xack(self.stream, _GROUP, entry.entry_id)
        pipe.xdel(self.stream, entry.entry_id)
        pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
