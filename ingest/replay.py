"""`m2grl replay`: stream a real log into the behaviour topic in event-time order, keyed by user."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata
from tqdm import tqdm

from m2grl.ingest.clients import client_options
from m2grl.ingest.errors import translated_errors
from m2grl.ingest.events import Event
from m2grl.settings import Settings


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    seconds: float


class EventProducer:
    """Sends events keyed by user id (so a user's events stay in order) and waits for Kafka's
    acknowledgement on ``flush``; one connection for its whole life."""

    def __init__(self, settings: Settings, *, topic: str | None = None, encoding: str = "protobuf") -> None:
        self.topic = topic or settings.ingest.topic
        self.servers = settings.kafka.bootstrap_servers
        self._encode = Event.encode if encoding == "protobuf" else Event.encode_json
        with translated_errors(self.servers):
            self._producer = KafkaProducer(**client_options(settings.kafka), client_id="m2grl-replay", acks="all",
                                           enable_idempotence=True, linger_ms=20, batch_size=512 * 1024)

    def send(self, event: Event) -> FutureRecordMetadata:
        """Queue ``event``; the returned future fails if Kafka never acknowledges it."""
        with translated_errors(self.servers):
            return self._producer.send(self.topic, key=event.user_id.encode(), value=self._encode(event))

    def flush(self) -> None:
        with translated_errors(self.servers):
            self._producer.flush()

    def close(self) -> None:
        self._producer.close(timeout=30)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay(settings: Settings, events: Sequence[Event], *, topic: str | None = None, rate: float | None = None,
           encoding: str = "protobuf", progress: bool = True, stop: threading.Event | None = None) -> ReplayResult:
    """Produce ``events`` (already in the order wanted) and wait until Kafka acknowledged the ones sent.

    ``rate`` caps events per second; None sends as fast as the producer goes. ``stop`` ends the
    replay early (a background stream); the result counts what was sent.
    """
    stop = stop or threading.Event()
    started = time.monotonic()
    sent = 0
    with (EventProducer(settings, topic=topic, encoding=encoding) as producer,
          tqdm(total=len(events), unit="ev", desc=f"replay -> {producer.topic}", disable=not progress) as bar):
        for event in events:
            if rate and sent % 50 == 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    stop.wait(ahead)
            if stop.is_set():
                break
            producer.send(event)
            sent += 1
            if sent % 1000 == 0:
                bar.update(1000)
        bar.update(sent - bar.n)
        producer.flush()
    return ReplayResult(sent=sent, seconds=time.monotonic() - started)
