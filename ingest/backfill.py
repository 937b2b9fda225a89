"""The read half of `m2grl graph backfill`: the behaviour topic read once, from its first offset to
the end it had when the read began, and folded by the consumer's own rules (``decode``,
``sessions.extract``) into one GraphDelta, as if the whole log were one batch. What it returns is
what a store that had streamed the log would hold: the graphs, the sessions still open and, per
partition, the last offset applied; graphstore/bulk.py writes it for neo4j-admin. Rejections go to
the dead-letter topic as the consumer sends them, once: any a consumer sent already are skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

from m2grl.errors import StreamError, StreamUnavailable
from m2grl.graphstore.model import NO_OFFSET, GraphDelta
from m2grl.ingest.clients import client_options
from m2grl.ingest.consumer import create_topics
from m2grl.ingest.deadletter import DeadLetter, DeadLetterQueue
from m2grl.ingest.errors import translated_errors
from m2grl.ingest.events import Event, EventRules, decode_message
from m2grl.ingest.sessions import extract
from m2grl.settings import Settings
from m2grl.views import View

FOLD_EVERY = 50_000  # events decoded before they are folded into the graph (bounds the events held)
STALL_S = 120.0  # a read that gets no message for this long, with messages left to read, gives up


@dataclass
class LogRead:
    graph: GraphDelta
    offsets: dict[int, int]  # per partition, the last offset read (NO_OFFSET: the partition was empty)
    rejected: int
    dead_lettered: int  # of the rejected, those this read sent (the others were in the dead-letter topic)
    seconds: float


def _fold(graph: GraphDelta, events: list[Event], views: tuple[View, ...], gap_ms: int) -> None:
    graph.then(extract(events, graph.sessions, views, gap_ms))


def _partitions(reader: KafkaConsumer, topic: str) -> tuple[list[TopicPartition], dict[TopicPartition, int]]:
    numbers = reader.partitions_for_topic(topic)
    if not numbers:
        raise StreamError(f"topic {topic!r} does not exist or has no partitions: nothing to backfill from")
    partitions = [TopicPartition(topic, number) for number in sorted(numbers)]
    first, ends = reader.beginning_offsets(partitions), reader.end_offsets(partitions)
    trimmed = {tp.partition: first[tp] for tp in partitions if first[tp] > 0}
    if trimmed:
        raise StreamError(f"topic {topic!r} no longer holds its first events (first offsets by partition: "
                          f"{trimmed}; its retention removed the rest): a graph built from it would miss them")
    return partitions, ends


def read_log(settings: Settings, views: tuple[View, ...], *, progress: bool = False) -> LogRead:
    """Every event of the behaviour topic up to its end now, folded into ``views``' graphs."""
    started = time.perf_counter()
    ingest, servers = settings.ingest, settings.kafka.bootstrap_servers
    rules, gap_ms = EventRules.of(ingest), int(ingest.session_gap_s * 1000)
    graph = GraphDelta(views=views)
    letters: list[DeadLetter] = []
    with translated_errors(servers):
        reader = KafkaConsumer(**client_options(settings.kafka), group_id=None, enable_auto_commit=False,
                               client_id="m2grl-backfill", max_partition_fetch_bytes=4 * 1024 * 1024)
        try:
            partitions, ends = _partitions(reader, ingest.topic)
            reader.assign(partitions)
            reader.seek_to_beginning(*partitions)
            left = {tp for tp in partitions if ends[tp] > 0}
            events: list[Event] = []
            with tqdm(total=sum(ends.values()), unit="msg", desc="reading the log", disable=not progress) as bar:
                heard = time.monotonic()
                while left:
                    now_ms = int(time.time() * 1000)
                    batch = reader.poll(timeout_ms=1000, max_records=10_000)
                    if batch:
                        heard = time.monotonic()
                    elif time.monotonic() - heard > STALL_S:
                        raise StreamUnavailable(f"no message from topic {ingest.topic!r} for {STALL_S:.0f} s with "
                                                f"partitions {sorted(tp.partition for tp in left)} not read to their "
                                                "end: is Kafka up? Nothing was imported; run backfill again")
                    for tp, records in batch.items():
                        for record in records:
                            if record.offset >= ends[tp]:
                                break  # after the end this read began with: the consumer's to apply
                            bar.update(1)
                            outcome = decode_message(record.key, record.value, rules, now_ms=now_ms)
                            if isinstance(outcome, Event):
                                events.append(outcome)
                            else:
                                letters.append(DeadLetter(tp.partition, record.offset, record.key, record.value,
                                                          outcome))
                        if reader.position(tp) >= ends[tp]:
                            left.discard(tp)
                            reader.pause(tp)
                    if len(events) >= FOLD_EVERY:
                        _fold(graph, events, views, gap_ms)
                        events = []
            _fold(graph, events, views, gap_ms)
        finally:
            reader.close()
    offsets = {tp.partition: ends[tp] - 1 if ends[tp] > 0 else NO_OFFSET for tp in partitions}
    return LogRead(graph, offsets, len(letters), _dead_letter_once(settings, letters), time.perf_counter() - started)


def _dead_letter_once(settings: Settings, letters: list[DeadLetter]) -> int:
    if not letters:
        return 0
    create_topics(settings)  # the dead-letter topic, if no consumer made it yet
    queue = DeadLetterQueue(settings, client_id="m2grl-backfill")
    try:
        partitions = {letter.partition for letter in letters}
        sent = {partition: queue.sent_since(partition, NO_OFFSET)[0] for partition in partitions}
        new = [letter for letter in letters if letter.offset not in sent[letter.partition]]
        if new:
            queue.send(new)
        return len(new)
    finally:
        queue.close()
