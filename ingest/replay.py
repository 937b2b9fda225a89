"""`m2grl replay`: stream a real log into the behaviour topic in event-time order, keyed by user."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from tqdm import tqdm

from m2grl.ingest.errors import translated_errors
from m2grl.ingest.events import Event
from m2grl.settings import Settings


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    seconds: float


def replay(settings: Settings, events: Sequence[Event], *, topic: str | None = None, rate: float | None = None,
           encoding: str = "protobuf", progress: bool = True) -> ReplayResult:
    """Produce ``events`` (already in the order wanted) and wait until Kafka acknowledged all of them.

    ``rate`` caps events per second; None sends as fast as the producer goes.
    """
    topic = topic or settings.ingest.topic
    encode = Event.encode if encoding == "protobuf" else Event.encode_json
    started = time.monotonic()
    with translated_errors(settings.kafka.bootstrap_servers):
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, client_id="m2grl-replay",
                                 acks="all", enable_idempotence=True, linger_ms=20, batch_size=512 * 1024)
        try:
            with tqdm(total=len(events), unit="ev", desc=f"replay -> {topic}", disable=not progress) as bar:
                for index, event in enumerate(events):
                    if rate and index % 100 == 0:
                        ahead = index / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    producer.send(topic, key=event.user_id.encode(), value=encode(event))
                    if index % 1000 == 999:
                        bar.update(1000)
                bar.update(len(events) - bar.n)
                producer.flush()
        finally:
            producer.close(timeout=30)
    return ReplayResult(sent=len(events), seconds=time.monotonic() - started)
