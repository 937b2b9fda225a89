"""`m2grl ingest`: the consumer loop from the behaviour topic into the per-view graphs.

The loop is short on purpose: poll with a bounded timeout (so SIGTERM is noticed), gather a batch
of up to ``batch_max_records`` or ``batch_max_ms``, decode it, and hand it to a writer thread that
runs the BatchApplier (dead-lettering and the exactly-once commit to Neo4j) — so Neo4j works on one
batch while this thread polls and decodes the next. Applied batches come back to this thread, which
commits the same offsets to Kafka as well. Kafka's committed offsets only serve lag monitoring and a
good starting point; the offsets that decide what is applied live in Neo4j, next to the data.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from m2grl.errors import M2grlError, StreamUnavailable
from m2grl.ingest import metrics
from m2grl.ingest.admin import TopicSpec, ensure_topics
from m2grl.ingest.applier import BatchApplier, BatchResult, Interrupted, PreparedBatch, SourceRecord
from m2grl.ingest.clients import client_options
from m2grl.ingest.deadletter import DeadLetterQueue
from m2grl.ingest.errors import translated_errors
from m2grl.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class IngestTotals:
    records: int = 0
    applied: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    skipped_offsets: int = 0
    batches: int = 0
    seconds: float = 0.0

    def add(self, result: BatchResult) -> None:
        self.records += result.records
        self.applied += result.applied
        self.replayed += result.replayed
        self.dead_lettered += result.dead_lettered
        self.skipped_offsets += result.skipped_offsets
        self.batches += 1


class _Writer:
    """Applies decoded batches, in order, on a thread of its own; at most one batch waits.

    Kafka is only touched on the consumer's thread (kafka-python clients are not thread-safe), so
    finished batches are handed back through ``finished`` for their offsets to be committed there.
    """

    def __init__(self, applier: BatchApplier) -> None:
        self._applier = applier
        self._inbox: queue.Queue[PreparedBatch | None] = queue.Queue(maxsize=1)
        self._finished: queue.Queue[tuple[PreparedBatch, BatchResult]] = queue.Queue()
        self.in_flight = 0
        self.interrupted = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="m2grl-ingest-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (batch := self._inbox.get()) is not None:
            try:
                result = self._applier.apply(batch)
            except Interrupted:
                self.interrupted = True
                return
            except BaseException as exc:  # re-raised on the consumer thread by check()
                self._failure = exc
                return
            self._finished.put((batch, result))

    def check(self) -> None:
        """Re-raise, on the caller's thread, whatever stopped the writer."""
        if self._failure is not None:
            raise self._failure

    def submit(self, batch: PreparedBatch, stop: threading.Event) -> bool:
        """Queue ``batch``; False if shutdown came first (the batch is simply not applied)."""
        while not stop.is_set() and not self.interrupted:
            self.check()
            try:
                self._inbox.put(batch, timeout=0.2)
            except queue.Full:
                continue
            self.in_flight += 1
            return True
        return False

    def wait_idle(self, stop: threading.Event) -> list[tuple[PreparedBatch, BatchResult]]:
        """Block until every submitted batch is applied (or shutdown); return the finished ones."""
        done: list[tuple[PreparedBatch, BatchResult]] = []
        while len(done) < self.in_flight and not stop.is_set() and not self.interrupted:
            self.check()
            try:
                done.append(self._finished.get(timeout=0.2))
            except queue.Empty:
                continue
        self.in_flight -= len(done)
        return done + self.finished()

    def finished(self) -> list[tuple[PreparedBatch, BatchResult]]:
        done = []
        while True:
            try:
                done.append(self._finished.get_nowait())
            except queue.Empty:
                break
        self.in_flight -= len(done)
        return done

    def close(self) -> None:
        """Let queued batches finish (or be interrupted by the stop event), then end the thread."""
        while self._thread.is_alive():
            try:
                self._inbox.put(None, timeout=0.2)
                break
            except queue.Full:
                continue
        self._thread.join()


class _Rebalance(ConsumerRebalanceListener):
    """Notes partition moves; the consumer loop acts on them.

    kafka-python runs these callbacks on its network event loop, so they must not block: reading
    the stored offsets from Neo4j here stalls heartbeats and can lose the group membership.
    """

    def __init__(self, applier: BatchApplier) -> None:
        self.applier = applier
        self.to_position: set[TopicPartition] = set()
        self.assigned_at = time.monotonic()

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.applier.request_forget()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        self.assigned_at = time.monotonic()
        self.applier.request_forget()
        self.to_position |= set(assigned)


def heartbeat_silence_s(consumer: KafkaConsumer) -> float:
    """Seconds since this member last sent its group a heartbeat (infinite before the first)."""
    coordinator = consumer.metrics().get("consumer-coordinator-metrics", {})
    return float(coordinator.get("last-heartbeat-seconds-ago", 0.0))


def heartbeats_stopped(silence_s: float, held_for_s: float, session_timeout_s: float) -> bool:
    """Whether a member holding partitions has been silent long enough for the group to drop it.

    Both spans must pass the session timeout: right after a join the first heartbeat is still
    an interval away, and the silence reads as infinite.
    """
    return held_for_s > session_timeout_s and silence_s > session_timeout_s


@dataclass
class _HeartbeatWatch:
    """Notices a member that holds partitions but no longer heartbeats.

    kafka-python 3.0 restarts a failed heartbeat task only when it rejoins, and only a heartbeat
    reply tells it to rejoin; such a member is dropped by the broker after the session timeout and
    keeps its partitions in its own eyes forever while the group hands them to the others (CI once
    ended with each of two members holding all four partitions). Checked at most once a second:
    reading the metrics walks all of them.
    """

    session_timeout_s: float
    checked_at: float = 0.0

    def stopped(self, consumer: KafkaConsumer, assigned_at: float) -> bool:
        now = time.monotonic()
        if now - self.checked_at < 1.0:
            return False
        self.checked_at = now
        return heartbeats_stopped(heartbeat_silence_s(consumer), now - assigned_at, self.session_timeout_s)


def create_topics(settings: Settings) -> list[str]:
    ingest = settings.ingest
    return ensure_topics(settings.kafka, [TopicSpec(ingest.topic, ingest.partitions),
                                          TopicSpec(ingest.dead_letter_topic, ingest.partitions)])


class IngestConsumer:
    def __init__(self, settings: Settings, *, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.client_id = f"m2grl-ingest-{socket.gethostname()}-{os.getpid()}"
        self.topic = settings.ingest.topic

    def run(self, *, until_idle: bool = False,
            on_batch: Callable[[BatchResult], None] | None = None) -> IngestTotals:
        """Consume until stopped (or, with ``until_idle``, until the graph holds the whole topic)."""
        settings = self.settings
        create_topics(settings)
        totals = IngestTotals()
        dead_letters = DeadLetterQueue(settings, client_id=self.client_id)
        applier = BatchApplier(settings, dead_letters, stop=self.stop)
        rebalance = _Rebalance(applier)
        writer = _Writer(applier)
        consumer = None
        try:
            if not applier.ensure_schema():
                return totals
            consumer = self._subscribe(rebalance)
            unassigned_since = fetched_at = time.monotonic()
            started = time.monotonic()
            rejoin_after_s = settings.ingest.rejoin_after_s
            heartbeats = _HeartbeatWatch(settings.ingest.session_timeout_s)
            while not self.stop.is_set() and not writer.interrupted:
                self._account(consumer, writer.finished(), totals, on_batch)
                writer.check()
                try:
                    if consumer is None:  # left the group to rejoin; Kafka may still be down
                        consumer = self._subscribe(rebalance)
                        unassigned_since = fetched_at = time.monotonic()
                    if consumer.assignment():
                        unassigned_since = time.monotonic()
                        if heartbeats.stopped(consumer, rebalance.assigned_at):
                            log.warning("no heartbeat sent to the group for over %.0f s while holding partitions; "
                                        "rejoining the group", settings.ingest.session_timeout_s)
                            consumer.close(autocommit=False)
                            consumer = None  # subscribed afresh at the top of the loop
                            continue
                    elif time.monotonic() - unassigned_since > rejoin_after_s:
                        # A member that fell out of its group without noticing would idle forever;
                        # a fresh client rejoins. (Also harmless with more consumers than partitions.)
                        log.info("no partitions assigned for %.0f s; rejoining the group", rejoin_after_s)
                        consumer.close(autocommit=False)
                        consumer = None  # subscribed afresh at the top of the loop
                        continue
                    if rebalance.to_position:
                        # Batches still in flight move the stored offsets we are about to read.
                        self._account(consumer, writer.wait_idle(self.stop), totals, on_batch)
                        self._position_new_partitions(consumer, applier, rebalance)
                    records = self._gather(consumer)
                    if records:
                        fetched_at = time.monotonic()
                    elif time.monotonic() - fetched_at > rejoin_after_s and self._behind(consumer):
                        # Seen once in CI: an assigned consumer whose fetches returned nothing for
                        # minutes while its partitions held messages. A fresh client recovers; the
                        # stored offsets make re-reading safe.
                        log.warning("no records fetched for %.0f s although the partitions hold more; rejoining "
                                    "the group", rejoin_after_s)
                        consumer.close(autocommit=False)
                        consumer = None  # subscribed afresh at the top of the loop
                        continue
                    if not records:
                        if until_idle and writer.in_flight == 0 and self._drained(consumer, applier):
                            break
                        continue
                except StreamUnavailable as exc:
                    # The client reconnects by itself; wait instead of spinning on a dead broker.
                    log.warning("Kafka unavailable, waiting: %s", exc)
                    self.stop.wait(1.0)
                    continue
                writer.submit(applier.prepare(records), self.stop)
            writer.close()
            writer.check()
            self._account(consumer, writer.finished(), totals, on_batch)
            totals.seconds = time.monotonic() - started
        except BaseException:
            self.stop.set()  # interrupts a batch the writer may be retrying, so close() returns
            raise
        finally:
            writer.close()
            if consumer is not None:
                consumer.close(autocommit=False)
            dead_letters.close()
            applier.close()
        return totals

    def _account(self, consumer: KafkaConsumer | None, finished: list[tuple[PreparedBatch, BatchResult]],
                 totals: IngestTotals, on_batch: Callable[[BatchResult], None] | None) -> None:
        for batch, result in finished:
            if consumer is not None:  # between clients the advisory Kafka commit is skipped
                self._commit_to_kafka(consumer, [record for record, _ in batch.decoded])
            totals.add(result)
            if on_batch is not None:
                on_batch(result)

    def _subscribe(self, rebalance: _Rebalance) -> KafkaConsumer:
        ingest = self.settings.ingest
        with translated_errors(self.settings.kafka.bootstrap_servers):
            consumer = KafkaConsumer(
                **client_options(self.settings.kafka),
                group_id=ingest.group_id,
                client_id=self.client_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=ingest.batch_max_records,
                # A Neo4j outage can hold one batch for minutes; the stored offsets keep that safe
                # even if the group moves on, but there is no reason to make it do so.
                max_poll_interval_ms=15 * 60 * 1000,
                session_timeout_ms=int(ingest.session_timeout_s * 1000),
                heartbeat_interval_ms=int(ingest.session_timeout_s * 1000 / 3),
            )
            try:
                # Knowing the topic's partitions before joining spares the group an immediate second
                # rebalance (a first join with empty metadata assigns nothing).
                consumer.partitions_for_topic(self.topic)
                consumer.subscribe([self.topic], listener=rebalance)
            except BaseException:
                consumer.close(autocommit=False)
                raise
        return consumer

    def _position_new_partitions(self, consumer: KafkaConsumer, applier: BatchApplier,
                                 rebalance: _Rebalance) -> None:
        """Start newly assigned partitions where Neo4j says this group's graph stands.

        Only an optimisation: the applier skips what the stores already hold, so a partition read
        from an earlier position (or before this runs) costs re-reading, never double counting.
        """
        pending = rebalance.to_position & consumer.assignment()
        rebalance.to_position.clear()
        if not pending:
            return
        try:
            resume = applier.resume_offsets([tp.partition for tp in pending])
        except M2grlError as exc:
            log.warning("could not read stored offsets for new partitions (%s); starting from Kafka's position", exc)
            return
        for tp in pending:
            consumer.seek(tp, max(resume[tp.partition], 0))
        log.info("assigned partitions resume at %s", {tp.partition: resume[tp.partition] for tp in sorted(pending)})

    def _gather(self, consumer: KafkaConsumer) -> list[SourceRecord]:
        ingest = self.settings.ingest
        deadline = time.monotonic() + ingest.batch_max_ms / 1000
        records: list[SourceRecord] = []
        with translated_errors(self.settings.kafka.bootstrap_servers):
            while len(records) < ingest.batch_max_records and not self.stop.is_set():
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0:
                    break
                polled = consumer.poll(timeout_ms=remaining_ms, max_records=ingest.batch_max_records - len(records))
                if not polled:
                    break
                for tp, batch in polled.items():
                    records.extend(SourceRecord(tp.partition, r.offset, r.key, r.value) for r in batch)
        return records

    def _commit_to_kafka(self, consumer: KafkaConsumer, records: list[SourceRecord]) -> None:
        ends: dict[int, int] = {}
        for record in records:
            ends[record.partition] = max(ends.get(record.partition, -1), record.offset + 1)
        offsets = {TopicPartition(self.topic, p): OffsetAndMetadata(end, "", -1) for p, end in ends.items()}
        try:
            consumer.commit_async(offsets)
        except KafkaError as exc:  # advisory only: Neo4j holds the offsets that matter
            log.debug("advisory Kafka offset commit failed: %s", exc)
        self._update_lag(consumer)

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        try:
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    metrics.LAG.labels(self.topic, str(tp.partition)).set(max(highwater - consumer.position(tp), 0))
        except KafkaError as exc:  # position() may ask the broker; the gauge can wait for the next batch
            log.debug("consumer lag not updated: %s", exc)

    def _behind(self, consumer: KafkaConsumer) -> bool:
        """True when an assigned partition holds messages past this consumer's position."""
        assigned = consumer.assignment()
        if not assigned:
            return False
        with translated_errors(self.settings.kafka.bootstrap_servers):
            ends = consumer.end_offsets(list(assigned))
            return any(consumer.position(tp) < end for tp, end in ends.items())

    def _drained(self, consumer: KafkaConsumer, applier: BatchApplier) -> bool:
        """True when the graph holds every message of every partition of the topic.

        Asked of the graph, not of this consumer's assignment: partitions may still sit with a
        member that crashed and has not yet been evicted from the group.
        """
        with translated_errors(self.settings.kafka.bootstrap_servers):
            partitions = consumer.partitions_for_topic(self.topic) or set()
            ends = consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])
        resume = applier.resume_offsets(sorted(partitions))
        return all(resume[tp.partition] >= end for tp, end in ends.items())
