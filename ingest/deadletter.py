"""The dead-letter topic: rejected messages with their original bytes and a reason header.

Exactly once, like the graph: each source partition dead-letters into one dead-letter partition,
the graph store records how far that partition had been written when a batch committed, and after
a restart the consumer reads the dead-letter partition from there to the end to learn which
rejections it already sent, so a replayed batch does not send them twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from m2grl.errors import StreamError, StreamUnavailable
from m2grl.graphstore.model import NO_OFFSET
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
        with translated_errors(self.bootstrap):
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap, client_id=f"{client_id}-dlq", acks="all",
                enable_idempotence=True, linger_ms=5, request_timeout_ms=15000, delivery_timeout_ms=30000,
                max_request_size=max(settings.ingest.max_event_bytes * 4, 1048576),
            )
            partitions = self._producer.partitions_for(self.topic)
        if not partitions:
            raise StreamError(f"dead-letter topic {self.topic!r} does not exist")
        self._partition_count = len(partitions)

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

    def sent_since(self, source_partition: int, dead_letter_offset: int) -> set[int]:
        """Source offsets of ``source_partition`` found in its dead-letter partition from
        ``dead_letter_offset`` (NO_OFFSET: from the beginning) to the end."""
        tp = TopicPartition(self.topic, self.partition_for(source_partition))
        found: set[int] = set()
        with translated_errors(self.bootstrap):
            # earliest: where retention removed letters from the start, the scan starts at the oldest kept.
            reader = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                   client_id="m2grl-dlq-scan", request_timeout_ms=15000, auto_offset_reset="earliest")
            try:
                reader.assign([tp])
                end = reader.end_offsets([tp])[tp]
                if dead_letter_offset == NO_OFFSET:
                    reader.seek_to_beginning(tp)
                else:
                    reader.seek(tp, dead_letter_offset)
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
            finally:
                reader.close()
        return found

    def close(self) -> None:
        self._producer.close(timeout=10)
