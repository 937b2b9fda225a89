"""Ingest against the real Kafka and Neo4j: exact weights, crashes, groups, bad input, outages."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kafka import KafkaProducer

from m2grl.console import OVERDUE_EXIT
from m2grl.ingest.events import Event
from m2grl.ingest.replay import replay
from m2grl.services import launcher
from m2grl.services.process import ProcessRecord
from m2grl.settings import Settings
from tests.ingest.conftest import (
    kill_at_random_moments,
    read_topic,
    run_ingest,
    start_ingest,
    with_ingest,
    with_malformed,
)
from tests.ingest.reference import Graph, assert_same_graph, expected_graph, stored_graph

pytestmark = pytest.mark.services

GAP_MS = 30 * 60 * 1000


def produce_raw(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for key, value in messages:
        producer.send(settings.ingest.topic, key=key, value=value)
    producer.flush()
    producer.close()


def expected(events: list[Event]) -> Graph:
    return expected_graph(events, ("category",), GAP_MS)


def test_exact_weights_after_a_real_sample(ingest_settings: Settings, movielens_sample: list[Event]) -> None:
    replay(ingest_settings, movielens_sample, progress=False)
    totals = run_ingest(ingest_settings)
    assert totals["records"] == totals["applied"] == len(movielens_sample)
    assert totals["dead_lettered"] == 0
    assert_same_graph(stored_graph(ingest_settings), expected(movielens_sample))


def test_exact_weights_on_taobao(ingest_settings: Settings, taobao_sample: list[Event]) -> None:
    replay(ingest_settings, taobao_sample, encoding="json", progress=False)  # the JSON encoding path
    run_ingest(ingest_settings)
    assert_same_graph(stored_graph(ingest_settings), expected(taobao_sample))


def test_kill_9_at_random_points_then_exact(ingest_settings: Settings, movielens_sample: list[Event],
                                           tmp_path: Path) -> None:
    settings = with_ingest(ingest_settings, batch_max_records=300)
    messages, bad = with_malformed(movielens_sample, every=97, seed=7)
    produce_raw(settings, messages)
    kill_at_random_moments(settings, tmp_path, kills=4, seed=11, between_s=(2.5, 5.0))
    run_ingest(settings)
    assert_same_graph(stored_graph(settings), expected(movielens_sample))
    dead = read_topic(settings, settings.ingest.dead_letter_topic)
    assert sorted(value for _, value in dead) == sorted(bad), "dead letters must be exactly the malformed messages"
    assert len({(h["source_partition"], h["source_offset"]) for h, _ in dead}) == len(bad)


def test_two_consumers_in_a_group_make_the_same_graph(ingest_settings: Settings, movielens_sample: list[Event],
                                                      tmp_path: Path) -> None:
    logs = [tmp_path / f"ingest-{n}.log" for n in range(2)]
    consumers = [start_ingest(ingest_settings, log) for log in logs]
    try:
        # The events go in only once the group has formed, so neither member can drain the topic
        # alone before the other joins (it did once, on a loaded machine).
        wait_until_partitions_are_shared(logs, ingest_settings.ingest.partitions, timeout_s=120)
        replay(ingest_settings, movielens_sample, progress=False)
        want = expected(movielens_sample)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and stored_graph(ingest_settings).node_events != want.node_events:
            time.sleep(2)
    finally:
        for consumer in consumers:
            consumer.send_signal(signal.SIGTERM)
        exits = [consumer.wait(timeout=60) for consumer in consumers]
    assert exits == [0, 0], "SIGTERM must end both consumers cleanly"
    applied = [int(re.findall(r"(\d+) applied", log.read_text())[-1]) for log in logs]
    assert sum(applied) == len(movielens_sample) and all(applied), f"events applied per consumer: {applied}"
    assert_same_graph(stored_graph(ingest_settings), want)


def wait_until_partitions_are_shared(logs: list[Path], partitions: int, timeout_s: float) -> None:
    """Until each consumer's latest assignment is non-empty and together they cover every partition."""
    deadline = time.monotonic() + timeout_s
    latest: list[list[int]] = []
    while time.monotonic() < deadline:
        latest = [[int(p) for p in re.findall(r"\d+", lines[-1])] if lines else []
                  for lines in (re.findall(r"assigned partitions \[[\d, ]*\]", log.read_text()) for log in logs)]
        if all(latest) and sorted(p for held in latest for p in held) == list(range(partitions)):
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-40:]) for log in logs)
    pytest.fail(f"the two consumers did not share the {partitions} partitions in {timeout_s} s: {latest}\n{tails}")


def test_each_kind_of_bad_input_is_dead_lettered_and_the_stream_goes_on(
        ingest_settings: Settings, movielens_sample: list[Event]) -> None:
    good = movielens_sample[:2000]
    bad = {
        "undecodable": b"\x00\x01\x02\xff\xfe garbage",
        "missing_field": b'{"item_id": "1", "behavior": "pv", "event_time_ms": 1511544070000}',
        "bad_field": b'{"user_id": "1", "item_id": "1", "behavior": "pv", "event_time_ms": "yesterday"}',
        "unknown_behavior": b'{"user_id": "1", "item_id": "1", "behavior": "teleport", "event_time_ms": 1511544070000}',
        "bad_timestamp": b'{"user_id": "1", "item_id": "1", "behavior": "pv", "event_time_ms": 7}',
        "oversized": b'{"user_id": "1", "item_id": "' + b"9" * 70000 + b'"}',
    }
    messages = [(e.user_id.encode(), e.encode()) for e in good[:1000]]
    messages += [(b"1", value) for value in bad.values()]
    messages += [(e.user_id.encode(), e.encode()) for e in good[1000:]]
    produce_raw(ingest_settings, messages)
    totals = run_ingest(ingest_settings)
    assert totals["dead_lettered"] == len(bad) and totals["applied"] == len(good)
    dead = read_topic(ingest_settings, ingest_settings.ingest.dead_letter_topic)
    assert {h["reason"]: value for h, value in dead} == bad  # original bytes, right reason
    assert all(h["source_topic"] == ingest_settings.ingest.topic and h["detail"] for h, _ in dead)
    assert_same_graph(stored_graph(ingest_settings), expected(good))


def test_events_neo4j_refuses_are_dead_lettered_and_the_stream_goes_on(
        ingest_settings: Settings, movielens_sample: list[Event]) -> None:
    # Ids longer than a Neo4j range index takes (8 KB) pass decoding once the per-field limit is
    # raised, and Neo4j refuses to store them: a real poison event, the kind that used to crash-loop.
    settings = with_ingest(ingest_settings, max_field_chars=20_000)
    good = movielens_sample[:3000]
    when = good[0].event_time_ms
    poison = [Event("u-poison", "i" * 9000, "pv", when, {"category": "c"}),
              Event(good[5].user_id, good[5].item_id, "pv", when, {"category": "g" * 9000})]
    messages = [(e.user_id.encode(), e.encode()) for e in good[:1000]]
    messages += [(e.user_id.encode(), e.encode()) for e in poison]
    messages += [(e.user_id.encode(), e.encode()) for e in good[1000:]]
    produce_raw(settings, messages)
    totals = run_ingest(settings)
    assert (totals["applied"], totals["dead_lettered"]) == (len(good), len(poison))
    dead = read_topic(settings, settings.ingest.dead_letter_topic)
    assert sorted(value for _, value in dead) == sorted(e.encode() for e in poison)
    assert {h["reason"] for h, _ in dead} == {"refused_by_neo4j"}
    assert all("too large to index" in h["detail"] for h, _ in dead), [h["detail"] for h, _ in dead]
    assert_same_graph(stored_graph(settings), expected(good))  # the refused events left no trace


def test_events_keyed_by_another_than_their_user_are_refused_and_two_consumers_stay_exact(
        ingest_settings: Settings, movielens_sample: list[Event]) -> None:
    """A user's events spread over partitions (keyed by something else) would reach two consumers,
    each folding its part into the user's session: those are dead-lettered, the rest is exact."""
    events = movielens_sample[:4000]
    messages, good, misrouted = [], [], []
    for index, event in enumerate(events):
        key = event.user_id.encode() if index % 25 else f"session-{index}".encode()
        messages.append((key, event.encode()))
        (good if index % 25 else misrouted).append(event)
    produce_raw(ingest_settings, messages)
    with ThreadPoolExecutor(2) as pool:  # two members of one group, each with some partitions
        totals = list(pool.map(lambda _: run_ingest(ingest_settings), range(2)))
    assert sum(t["applied"] for t in totals) == len(good)
    assert sum(t["dead_lettered"] for t in totals) == len(misrouted)
    dead = read_topic(ingest_settings, ingest_settings.ingest.dead_letter_topic)
    assert sorted(value for _, value in dead) == sorted(e.encode() for e in misrouted)
    assert {h["reason"] for h, _ in dead} == {"key_mismatch"}
    assert_same_graph(stored_graph(ingest_settings), expected(good))


def test_neo4j_outage_mid_stream_loses_nothing(ingest_settings: Settings, movielens_sample: list[Event],
                                              tmp_path: Path) -> None:
    neo4j = launcher.service_named(ingest_settings, "neo4j")
    half = len(movielens_sample) // 2
    replay(ingest_settings, movielens_sample[:half], progress=False)
    consumer = start_ingest(ingest_settings, tmp_path / "ingest.log")
    try:
        time.sleep(4)
        launcher.stop(neo4j, report=lambda _: None)
        replay(ingest_settings, movielens_sample[half:], progress=False)  # arrives while Neo4j is down
        time.sleep(15)
        assert consumer.poll() is None, "the consumer must wait out the outage, not exit"
        launcher.start(neo4j, report=lambda _: None)
        want = expected(movielens_sample)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            time.sleep(3)
            if stored_graph(ingest_settings).node_events == want.node_events:
                break
        assert_same_graph(stored_graph(ingest_settings), want)
    finally:
        consumer.send_signal(signal.SIGTERM)
        try:
            assert consumer.wait(timeout=60) == 0, "SIGTERM must end the consumer cleanly"
        except subprocess.TimeoutExpired:
            consumer.kill()
            raise
    log = (tmp_path / "ingest.log").read_text()
    # Short outages are ridden out by the driver's own retries, longer ones by the consumer's backoff.
    assert re.search(r"unavailable|will be retried", log), "the outage should have been noticed and logged"


def test_sigterm_ends_ingest_within_its_stop_timeout_while_neo4j_hangs(
        ingest_settings: Settings, movielens_sample: list[Event], tmp_path: Path) -> None:
    """Neo4j stopped with SIGSTOP holds whatever ingest asks of it; SIGTERM still ends the process by
    ingest.stop_timeout_s, and the next run makes the graph exact."""
    settings = with_ingest(ingest_settings, stop_timeout_s=5)
    record = ProcessRecord.read(launcher.service_named(settings, "neo4j").pidfile)
    assert record is not None
    events = movielens_sample[:3000]
    consumer = start_ingest(settings, tmp_path / "ingest.log")
    try:
        wait_until_partitions_are_shared([tmp_path / "ingest.log"], settings.ingest.partitions, timeout_s=120)
        os.killpg(record.pid, signal.SIGSTOP)
        try:
            replay(settings, events, progress=False)  # ingest reads them and waits on Neo4j
            time.sleep(3)
            consumer.send_signal(signal.SIGTERM)
            code = consumer.wait(timeout=settings.ingest.stop_timeout_s + 60)
        finally:
            os.killpg(record.pid, signal.SIGCONT)
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert code in (0, OVERDUE_EXIT), (tmp_path / "ingest.log").read_text()[-3000:]
    run_ingest(settings)
    assert_same_graph(stored_graph(settings), expected(events))


def test_records_removed_before_ingest_read_them_are_counted_or_stop_it(
        ingest_settings: Settings, movielens_sample: list[Event]) -> None:
    import sys

    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from m2grl.settings import settings_env
    from tests.conftest import REPO_ROOT

    settings = ingest_settings
    replay(settings, movielens_sample[:2000], progress=False)
    run_ingest(settings)
    topic = settings.ingest.topic
    partitions = [TopicPartition(topic, p) for p in range(settings.ingest.partitions)]
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    read = consumer.end_offsets(partitions)  # the graph holds everything before these
    replay(settings, movielens_sample[2000:4000], progress=False)
    ends = consumer.end_offsets(partitions)
    consumer.close()
    # Retention, as Kafka does it: the oldest unread records of each partition are removed.
    cut = {tp: read[tp] + 10 for tp in partitions if ends[tp] > read[tp] + 10}
    assert cut, "every partition took a few records"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.delete_records(cut)
    admin.close()

    stopping = subprocess.run([sys.executable, "-m", "m2grl", "ingest", "--until-idle", "--no-metrics"],
                              env={**os.environ, **settings_env(settings), "M2GRL_INGEST_ON_OFFSET_GAP": "stop"},
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert stopping.returncode != 0
    # A gap is measured from the offset the graph holds: a partition ingest never read from starts,
    # as Kafka's auto_offset_reset says, at its earliest record.
    held = [tp for tp in cut if read[tp] > 0]
    assert held, "the first 2,000 events reached at least one partition that is cut"
    named = [tp for tp in held if f"partition {tp.partition}: offsets {read[tp]}-{cut[tp] - 1} (10 records)"
             in stopping.stderr]  # the gaps of the first batch that has any
    assert named and "ingest.on_offset_gap" in stopping.stderr, stopping.stderr[-3000:]

    totals = run_ingest(settings)  # the default: count, log and go on
    assert totals["skipped_offsets"] == 10 * len(held)
    assert totals["applied"] == sum(ends[tp] - cut.get(tp, read[tp]) for tp in partitions)


def test_replay_records_the_side_views_that_ingest_then_builds_without_settings(ingest_settings: Settings) -> None:
    """MovieLens carries genre: after `m2grl replay`, ingest from the same state folder builds the genre
    view with no views.side set anywhere."""
    import json
    import sys

    from m2grl.settings import settings_env
    from tests.conftest import REPO_ROOT

    env = {name: value for name, value in {**os.environ, **settings_env(ingest_settings)}.items()
           if name != "M2GRL_VIEWS_SIDE"}

    def m2grl(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "m2grl", *args], env=env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    replayed = m2grl("replay", "movielens-100k", "--limit", "500")
    assert f"side views of {ingest_settings.ingest.topic}: genre" in replayed.stdout
    m2grl("ingest", "--until-idle", "--json", "--no-metrics")
    stats = {row["view"]: row for row in json.loads(m2grl("graph", "stats", "--json").stdout)}
    assert set(stats) == {"item", "genre"} and stats["genre"]["nodes"] > 0 and stats["genre"]["memberships"] > 0
