"""The dead-letter topic: rejected messages with their original bytes and a reason header.

Exactly once, like the graph: each source partition dead-letters into one dead-letter partition,
and letters are only sent by the writer holding the source partition's offset node locked in Neo4j
(inside the batch's transaction), which then records how far the dead-letter partition had been
written. Whoever holds the lock next reads the dead-letter partition from there to its end to learn
which rejections were already sent (by a run that crashed, or by a consumer that lost the partition
after sending), so none is sent twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from m2grl.errors import StreamError, StreamUnavailable
from m2grl.graphstore.model import NO_OFFSET
from m2grl.ingest.clients import client_options
from m2grl.ingest.errors import translated_errors
from m2grl.ingest.events import Rejection
from m2grl.settings import Settings

HEADER_REASON = "reason"
HEADER_DETAIL = "detail"
HEADER_TOPIC = "source_topic"
HEADER_PARTITION = "source_partition"
HEADER_OFFSET = "source_offset"
SCAN_TIMEOUT_S = 60.0  # a scan of a dead-letter partition that does not reach its end by then is retried


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    rejection: Rejection


def header_map(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in headers or ()}


class DeadLetterQueue:
    """Sends rejections of one source topic and recovers which were sent after a given point."""

    def __init__(self, settings: Settings, *, client_id: str) -> None:
        self.source_topic = settings.ingest.topic
        self.topic = settings.ingest.dead_letter_topic
        self.bootstrap = settings.kafka.bootstrap_servers
        self._client = client_options(settings.kafka)
        with translated_errors(self.bootstrap):
            self._producer = KafkaProducer(
                **self._client, client_id=f"{client_id}-dlq", acks="all",
                enable_idempotence=True, linger_ms=5, request_timeout_ms=15000, delivery_timeout_ms=30000,
                max_request_size=max(settings.ingest.max_event_bytes * 4, 1048576),
            )
            partitions = self._producer.partitions_for(self.topic)
        if not partitions:
            raise StreamError(f"dead-letter topic {self.topic!r} does not exist")
        self._partition_count = len(partitions)
        self._reader: KafkaConsumer | None = None  # kept between scans: most scans read a few new letters

    def partition_for(self, source_partition: int) -> int:
        return source_partition % self._partition_count

    def send(self, letters: list[DeadLetter]) -> dict[int, int]:
        """Send and wait for acknowledgement; return, per source partition, the dead-letter
        partition's end offset after its last letter."""
        futures = []
        with translated_errors(self.bootstrap):
            for letter in letters:
                headers = [
                    (HEADER_REASON, letter.rejection.reason.value.encode()),
                    (HEADER_DETAIL, letter.rejection.detail.encode()[:1000]),
                    (HEADER_TOPIC, self.source_topic.encode()),
                    (HEADER_PARTITION, str(letter.partition).encode()),
                    (HEADER_OFFSET, str(letter.offset).encode()),
                ]
                future = self._producer.send(self.topic, key=letter.key, value=letter.value, headers=headers,
                                             partition=self.partition_for(letter.partition))
                futures.append((letter.partition, future))
            self._producer.flush()
            ends: dict[int, int] = {}
            for source_partition, future in futures:
                metadata = future.get(timeout=30)
                ends[source_partition] = max(ends.get(source_partition, NO_OFFSET), metadata.offset + 1)
        return ends

    def sent_since(self, source_partition: int, dead_letter_offset: int) -> tuple[set[int], int]:
        """Source offsets of ``source_partition`` found in its dead-letter partition from
        ``dead_letter_offset`` (NO_OFFSET: from the beginning) to the end, and that end."""
        tp = TopicPartition(self.topic, self.partition_for(source_partition))
        found: set[int] = set()
        with translated_errors(self.bootstrap):
            reader = self._scan_reader()
            try:
                reader.assign([tp])
                end = reader.end_offsets([tp])[tp]
                # Where retention removed letters from the start, the reader resets to the oldest kept.
                reader.seek(tp, max(dead_letter_offset, 0))
                deadline = time.monotonic() + SCAN_TIMEOUT_S
                while reader.position(tp) < end:
                    if time.monotonic() > deadline:  # the batch retries with backoff; a stop ends the wait
                        raise StreamUnavailable(f"the scan of dead-letter partition {tp.partition} stopped short of "
                                                f"offset {end} for {SCAN_TIMEOUT_S:g} s")
                    for records in reader.poll(timeout_ms=1000).values():
                        for record in records:
                            headers = header_map(record.headers)
                            if (headers.get(HEADER_TOPIC) == self.source_topic
                                    and headers.get(HEADER_PARTITION) == str(source_partition)):
                                found.add(int(headers[HEADER_OFFSET]))
            except BaseException:
                self._close_reader()  # a fresh one next time, whatever state this one was left in
                raise
        return found, end

    def _scan_reader(self) -> KafkaConsumer:
        if self._reader is None:
            self._reader = KafkaConsumer(**self._client, group_id=None, enable_auto_commit=False,
                                         client_id="m2grl-dlq-scan", request_timeout_ms=15000,
                                         auto_offset_reset="earliest")
        return self._reader

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        self._close_reader()
        self._producer.close(timeout=10)
