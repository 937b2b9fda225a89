"""The applier's plans made ahead (on the consumer thread, while earlier batches commit), against the
real Neo4j: used when the store holds what they assumed, made again from the store when it does not."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from m2grl.ingest.applier import BatchApplier, SourceRecord
from m2grl.ingest.deadletter import DeadLetterQueue
from m2grl.ingest.events import Event
from m2grl.settings import Settings
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
