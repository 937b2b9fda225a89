"""A consumer whose heartbeats stop notices it has left the group and joins again (real Kafka)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer

from m2grl.ingest.consumer import IngestConsumer, heartbeat_silence_s, heartbeats_stopped
from m2grl.ingest.events import Event
from m2grl.ingest.replay import replay
from m2grl.settings import Settings
from tests.ingest.conftest import with_ingest

pytestmark = pytest.mark.services

SESSION_TIMEOUT_S = 6.0  # the shortest the settings allow, so the test waits little


def test_heartbeats_stopped_needs_both_spans_past_the_session_timeout() -> None:
    assert heartbeats_stopped(silence_s=7.0, held_for_s=7.0, session_timeout_s=6.0)
    assert not heartbeats_stopped(silence_s=7.0, held_for_s=5.0, session_timeout_s=6.0)  # first beat still due
    assert not heartbeats_stopped(silence_s=float("inf"), held_for_s=1.0, session_timeout_s=6.0)
    assert not heartbeats_stopped(silence_s=2.0, held_for_s=600.0, session_timeout_s=6.0)


def test_a_member_without_heartbeats_rejoins_and_keeps_applying(
        ingest_settings: Settings, movielens_sample: list[Event], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = with_ingest(ingest_settings, session_timeout_s=SESSION_TIMEOUT_S)
    clients: list[KafkaConsumer] = []
    subscribe = IngestConsumer._subscribe

    def recorded_subscribe(self: IngestConsumer, rebalance: object) -> KafkaConsumer:
        clients.append(subscribe(self, rebalance))
        return clients[-1]

    monkeypatch.setattr(IngestConsumer, "_subscribe", recorded_subscribe)
    caplog.set_level(logging.INFO, logger="m2grl.ingest.consumer")
    ingest = IngestConsumer(settings)
    applied: list[int] = []
    worker = threading.Thread(target=ingest.run, kwargs={"on_batch": lambda r: applied.append(r.applied)})
    worker.start()
    try:
        wait_for(lambda: bool(clients) and bool(clients[0].assignment()), 60, "the first client never got partitions")
        # A live member reports a recent heartbeat once its first is sent (on a busy machine that can
        # take more than the interval).
        wait_for(lambda: heartbeat_silence_s(clients[0]) < SESSION_TIMEOUT_S, 60,
                 "a live member never reported a heartbeat")
        # The kafka-python fault: its heartbeat task ends while the member thinks the group is stable.
        clients[0]._coordinator._close_heartbeat()
        wait_for(lambda: len(clients) > 1 and bool(clients[-1].assignment()), 60,
                 "the silent member never rejoined with a fresh client")
        assert "no heartbeat sent to the group" in caplog.text
        events = movielens_sample[:3000]
        replay(settings, events, progress=False)
        wait_for(lambda: sum(applied) >= len(events), 120, "the rejoined member did not apply the events")
    finally:
        ingest.stop.set()
        worker.join(timeout=60)
    assert not worker.is_alive(), "the consumer must stop when asked"
    assert sum(applied) == len(events)
    # At least one rejoin: on a busy machine the fresh client can miss heartbeats too and rejoin
    # again; what must hold is that every event was applied once (above), not the number of retries.
    assert len(clients) >= 2, "the silent member never rejoined"


def wait_for(condition: Callable[[], bool], timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(failure)
