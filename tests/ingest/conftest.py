"""Fixtures for ingest tests: a fresh topic pair and an empty graph per test, real data samples."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from m2grl.graphstore import GraphStore
from m2grl.graphstore.maintenance import wipe_graph
from m2grl.ingest.clients import client_options
from m2grl.ingest.consumer import create_topics
from m2grl.ingest.deadletter import header_map
from m2grl.ingest.events import Event
from m2grl.lab import datasets
from m2grl.settings import Settings, settings_env
from tests.conftest import REPO_ROOT


def with_ingest(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"ingest": settings.ingest.model_copy(update=changes)})


@pytest.fixture
def ingest_settings(stack: Settings) -> Iterator[Settings]:
    """The session stack with a topic, dead-letter topic and group of this test's own, views item +
    category, and an empty graph."""
    name = f"t{uuid.uuid4().hex[:10]}"
    settings = stack.model_copy(update={"views": stack.views.model_copy(update={"side": ("category",)})})
    settings = with_ingest(settings, topic=name, dead_letter_topic=f"{name}.dlq", group_id=f"{name}-group",
                           partitions=4, batch_max_records=1000, batch_max_ms=200, metrics_port=0,
                           session_timeout_s=10)
    with GraphStore(settings.neo4j) as store:
        wipe_graph(store)
    create_topics(settings)
    yield settings


@pytest.fixture(scope="session")
def movielens_sample(stack: Settings) -> list[Event]:
    """The first 15,000 MovieLens-100K ratings in time order, genre as the 'category' view.

    MovieLens is fetched from PyPI (the recbole wheel), so it is there on every machine."""
    folder = datasets.fetch_movielens(stack.data.cache_dir)
    events = datasets.load_events(folder, "movielens")[:15000]
    return [Event(e.user_id, e.item_id, e.behavior, e.event_time_ms, {"category": e.side["genre"]}) for e in events]


@pytest.fixture(scope="session")
def taobao_sample(stack: Settings) -> list[Event]:
    path = stack.data.shared_dir / "taobao" / "UserBehavior_head.csv"
    if not path.exists():
        pytest.skip(f"optional shared data absent: {path}")
    return datasets.load_events(path, "taobao")[:30000]


def run_ingest(settings: Settings, *extra: str, timeout: float = 300) -> dict:
    """`m2grl ingest --until-idle` in its own process, as a user runs it."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "m2grl", "ingest", "--until-idle", "--json", "--no-metrics", *extra],
            env={**os.environ, **settings_env(settings)}, cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"ingest did not finish in {timeout} s; its log ends: {(exc.stderr or b'')[-3000:]!r}")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def start_ingest(settings: Settings, log: Path) -> subprocess.Popen:
    """`m2grl ingest` running in the background until stopped."""
    return subprocess.Popen([sys.executable, "-m", "m2grl", "ingest", "--no-metrics"],
                            env={**os.environ, **settings_env(settings)}, cwd=REPO_ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def kill_at_random_moments(settings: Settings, folder: Path, *, kills: int, seed: int,
                           between_s: tuple[float, float]) -> None:
    """Start `m2grl ingest` and kill -9 it after a random ``between_s`` time, ``kills`` times."""
    rng = random.Random(seed)
    for attempt in range(kills):
        consumer = start_ingest(settings, folder / f"ingest-{attempt}.log")
        time.sleep(rng.uniform(*between_s))
        consumer.send_signal(signal.SIGKILL)
        consumer.wait()


def read_topic(settings: Settings, topic: str) -> list[tuple[dict[str, str], bytes]]:
    consumer = KafkaConsumer(topic, **client_options(settings.kafka), group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    messages = [(header_map(m.headers), m.value) for m in consumer]
    consumer.close()
    return messages


def with_malformed(events: list[Event], every: int, seed: int) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """The events as Kafka messages with a malformed one (of a rotating kind) after every ``every``th."""
    rng = random.Random(seed)
    kinds = [b"\x00\xffnot-an-event", b'{"user_id": "u"}', b'{"user_id": "u", "item_id": "i", "behavior": "wink",'
             b' "event_time_ms": 1511544070000}', b'{"user_id": "u", "item_id": "i", "behavior": "pv",'
             b' "event_time_ms": 3}']
    messages, bad = [], []
    for index, event in enumerate(events):
        messages.append((event.user_id.encode(), event.encode()))
        if index % every == every - 1:
            value = rng.choice(kinds) + str(index).encode() if rng.random() < 0.5 else rng.choice(kinds)
            messages.append((event.user_id.encode(), value))
            bad.append(value)
    return messages, bad
