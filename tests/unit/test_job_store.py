"""The job store's protocol against a real Redis: claim, take-over, keep-alive, hand-back, ack,
the folder inputs' claims, and recovery from a Redis that lost everything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="the services extra")

from face_analysis.services.settings import Settings
from face_analysis.services.store import JobStore, QueuedJob, folder_job_id
from services_support import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def store(redis_url: str, request: pytest.FixtureRequest) -> JobStore:
    """A store with a key prefix of its own (each test starts from an empty stream)."""
    prefix = "t" + str(abs(hash(request.node.name)) % 10**8)
    job_store = JobStore(
        Settings.from_env({"FACE_ANALYSIS_REDIS_URL": redis_url, "FACE_ANALYSIS_KEY_PREFIX": prefix})
    )
    job_store.ensure_group()
    return job_store


def _job(name: str = "a.jpg", source: str = "a.jpg") -> QueuedJob:
    return QueuedJob(folder_job_id(name, 1, 2), name, name.rsplit(".", 1)[0] + ".json", source)


def _pending(store: JobStore) -> int:
    return int(store.client.xpending(store.stream, "drivers")["pending"])


def test_a_job_is_claimed_by_one_consumer_only(store: JobStore) -> None:
    job = _job()
    store.enqueue(job)
    [entry] = store.read("a", count=5, block_ms=10)
    assert entry.job == job and entry.deliveries == 1
    assert store.read("b", count=5, block_ms=10) == []
    assert _pending(store) == 1


def test_ack_forgets_the_entry_and_the_inputs_claim(store: JobStore) -> None:
    job = _job()
    assert store.queue_input(job)
    [entry] = store.read("a", count=1, block_ms=10)
    store.ack(entry)
    assert _pending(store) == 0 and store.client.xlen(store.stream) == 0
    assert store.queue_input(job), "an acknowledged input can be queued again (a new version)"


def test_a_folder_input_is_queued_once_while_its_entry_lives(store: JobStore) -> None:
    job = _job()
    assert store.queue_input(job)
    assert not store.queue_input(job)
    assert store.client.xlen(store.stream) == 1
    store.client.delete(store.stream)  # the entry is gone (flushed): the claim is stale
    store.ensure_group()
    assert store.queue_input(job)
    assert store.client.xlen(store.stream) == 1


def test_a_silent_consumers_jobs_are_taken_over_with_their_delivery_count(store: JobStore) -> None:
    store.enqueue(_job("a.jpg"))
    store.enqueue(_job("b.jpg"))
    taken = store.read("crashed", count=2, block_ms=10)
    assert len(taken) == 2
    time.sleep(0.3)
    assert store.take_over("alive", min_idle_s=5.0) == []  # not idle long enough
    over = store.take_over("alive", min_idle_s=0.2)
    assert sorted(e.job.image_id for e in over) == ["a.jpg", "b.jpg"]
    assert {e.deliveries for e in over} == {2}
    assert store.take_over("third", min_idle_s=0.2) == []  # just claimed: not idle


def test_keep_alive_keeps_jobs_in_flight_from_being_taken_over(store: JobStore) -> None:
    store.enqueue(_job())
    [entry] = store.read("busy", count=1, block_ms=10)
    time.sleep(0.3)
    store.keep_alive("busy", [entry.entry_id])
    assert store.take_over("other", min_idle_s=0.25) == []
    time.sleep(0.3)
    [over] = store.take_over("other", min_idle_s=0.25)
    assert over.entry_id == entry.entry_id


def test_a_handed_back_job_is_queued_afresh(store: JobStore) -> None:
    job = _job()
    assert store.queue_input(job)
    [entry] = store.read("stopping", count=1, block_ms=10)
    store.hand_back(entry)
    assert _pending(store) == 0
    [again] = store.read("next", count=1, block_ms=10)
    assert again.job == job and again.entry_id != entry.entry_id and again.deliveries == 1
    assert not store.queue_input(job), "the input's claim names the new entry"
    assert store.client.xlen(store.stream) == 1


def test_an_api_job_handed_back_takes_no_claim(store: JobStore) -> None:
    job = QueuedJob("a" + "0" * 32, "sent.jpg", "api/x.json", "")
    store.enqueue(job)
    [entry] = store.read("stopping", count=1, block_ms=10)
    store.hand_back(entry)
    assert not store.client.exists(store._key("claim", job.job_id))
    assert [e.job for e in store.read("next", count=1, block_ms=10)] == [job]


def test_a_lost_group_is_recreated_and_a_flush_is_noticed(store: JobStore, tmp_path: Path) -> None:
    assert not store.lost_everything()
    store.client.delete(store.stream, store.epoch_key)
    assert store.lost_everything()
    assert store.read("a", count=1, block_ms=10) == []  # NOGROUP: the group is made again
    assert store.take_over("a", min_idle_s=0.0) == []
    store.enqueue(_job())
    assert len(store.read("a", count=1, block_ms=10)) == 1
    assert not store.lost_everything()
