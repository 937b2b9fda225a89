"""The applier's plans made ahead (on the consumer thread, while earlier batches commit), against the
real Neo4j: used when the store holds what they assumed, made again from the store when it does not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from m2grl.ingest.applier import BatchApplier, SourceRecord
from m2grl.ingest.deadletter import DeadLetterQueue
from m2grl.ingest.events import Event
from m2grl.settings import Settings
from tests.ingest.conftest import read_topic
from tests.ingest.reference import assert_same_graph, expected_graph, stored_graph

pytestmark = pytest.mark.services


def source_records(events: list[Event], first_offset: int) -> list[SourceRecord]:
    return [SourceRecord(0, first_offset + i, e.user_id.encode(), e.encode()) for i, e in enumerate(events)]


def replanned() -> float:
    return REGISTRY.get_sample_value("m2grl_ingest_replanned_total") or 0.0


@pytest.fixture
def appliers(ingest_settings: Settings) -> Iterator[tuple[BatchApplier, BatchApplier]]:
    letters = DeadLetterQueue(ingest_settings, client_id="test-applier")
    stop = threading.Event()
    pair = (BatchApplier(ingest_settings, letters, stop=stop), BatchApplier(ingest_settings, letters, stop=stop))
    assert pair[0].ensure_schema()
    yield pair
    for applier in pair:
        applier.close()
    letters.close()


def test_plans_made_ahead_are_used_and_a_void_one_is_made_again(
        ingest_settings: Settings, appliers: tuple[BatchApplier, BatchApplier], movielens_sample: list[Event]) -> None:
    ours, other = appliers
    events = movielens_sample[:3000]
    batches = [source_records(events[start:start + 1000], start) for start in (0, 1000, 2000)]
    # All three planned before any commits: each plan starts where the one before it leaves the
    # graph (the users' sessions continue across batches).
    first, second, third = (ours.prepare(batch) for batch in batches)
    before = replanned()
    assert ours.apply(first).applied == 1000
    assert ours.apply(second).applied == 1000
    assert replanned() == before  # both plans held

    # Another consumer commits the third batch first: our plan for it assumed offsets that moved.
    assert other.apply(other.prepare(batches[2])).applied == 1000
    result = ours.apply(third)
    assert (result.applied, result.replayed) == (0, 1000)
    assert replanned() == before + 1
    assert_same_graph(stored_graph(ingest_settings), expected_graph(events, ("category",), 30 * 60 * 1000))


def test_two_writers_of_a_partition_dead_letter_each_rejection_once(
        ingest_settings: Settings, movielens_sample: list[Event]) -> None:
    """A consumer that just lost a partition and its new owner apply the same batches at once (each
    with its own dead-letter producer): every rejection reaches the dead-letter topic once."""
    stop = threading.Event()
    queues = [DeadLetterQueue(ingest_settings, client_id=f"test-writer-{n}") for n in range(2)]
    appliers = [BatchApplier(ingest_settings, queue, stop=stop) for queue in queues]
    assert appliers[0].ensure_schema()
    events = movielens_sample[:2000]
    records, bad = [], []
    for index, event in enumerate(events):
        records.append(SourceRecord(0, len(records), event.user_id.encode(), event.encode()))
        if index % 50 == 49:
            value = b"not an event " + str(index).encode()
            records.append(SourceRecord(0, len(records), None, value))
            bad.append(value)
    batches = [records[start:start + 250] for start in range(0, len(records), 250)]
    try:
        with ThreadPoolExecutor(2) as pool:
            for batch in batches:
                barrier = threading.Barrier(2)

                def race(applier: BatchApplier, batch: list[SourceRecord] = batch,
                         barrier: threading.Barrier = barrier) -> int:
                    prepared = applier.prepare(batch)
                    barrier.wait()
                    return applier.apply(prepared).dead_lettered

                list(pool.map(race, appliers))
    finally:
        for applier in appliers:
            applier.close()
        for queue in queues:
            queue.close()
    dead = read_topic(ingest_settings, ingest_settings.ingest.dead_letter_topic)
    assert sorted(value for _, value in dead) == sorted(bad)
    assert_same_graph(stored_graph(ingest_settings), expected_graph(events, ("category",), 30 * 60 * 1000))
