"""Applies one batch of source records to every view's graph store, exactly once.

For each batch: decode; send rejections to the dead-letter topic (skipping any a previous run
already sent); then, per graph store, keep only records past that store's stored offset, fold them
into a delta with the users' session state, and commit delta + sessions + offsets in one
transaction. On an outage nothing is half-applied: the caches are dropped and the batch is retried
from what the stores actually hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from m2grl.errors import GraphStoreUnavailable, M2grlError, StaleOffsetsError, StreamUnavailable
from m2grl.graphstore import GraphStore
from m2grl.graphstore.model import NO_OFFSET, PartitionMark, SessionState
from m2grl.graphstore.writes import BehaviorGraphWriter
from m2grl.ingest import metrics
from m2grl.ingest.deadletter import DeadLetter, DeadLetterQueue
from m2grl.ingest.events import Event, EventRules, Rejection, decode
from m2grl.ingest.sessions import extract
from m2grl.settings import Neo4jSettings, Settings
from m2grl.views import View

log = logging.getLogger(__name__)
SESSION_CACHE_LIMIT = 1_000_000  # users; beyond this the cache restarts empty (state reloads from Neo4j)


class Interrupted(Exception):
    """Shutdown was requested while a batch waited for an outage to end; nothing was committed."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


Decoded = tuple[SourceRecord, Event | Rejection]


@dataclass(frozen=True)
class PreparedBatch:
    """A decoded batch plus, per store, the stored session state of its users, read ahead on the
    consumer thread while the previous batch commits. ``generation`` tells whether the caches were
    dropped since the read (then the read may be stale and is not used)."""

    decoded: list[Decoded]
    sessions: list[dict[str, SessionState]] | None
    generation: int


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    edge_rows: dict[str, int] = field(default_factory=dict)


@dataclass
class _Store:
    """One Neo4j database, the views it holds, and what we know it holds (None: ask it)."""

    writer: BehaviorGraphWriter
    marks: dict[int, PartitionMark] | None = None
    sessions: dict[str, SessionState] = field(default_factory=dict)

    def forget(self) -> None:
        self.marks = None
        self.sessions.clear()


def group_views_by_store(settings: Settings) -> list[tuple[Neo4jSettings, tuple[View, ...]]]:
    """Views that share a Neo4j URI and database share one store; the item view's store comes first."""
    groups: dict[tuple[str, str], tuple[Neo4jSettings, list[View]]] = {}
    for view in settings.views.viewset.all:
        target = settings.neo4j_for(view)
        groups.setdefault((target.bolt_uri, target.database), (target, []))[1].append(view)
    return [(target, tuple(views)) for target, views in groups.values()]


class BatchApplier:
    def __init__(self, settings: Settings, dead_letters: DeadLetterQueue, *, stop: threading.Event,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        ingest = settings.ingest
        self.topic = ingest.topic
        self.gap_ms = int(ingest.session_gap_s * 1000)
        self.backoff_max_s = ingest.retry_backoff_max_s
        self.rules = EventRules(behaviors=frozenset(ingest.behaviors), max_bytes=ingest.max_event_bytes,
                                min_time_ms=ingest.min_event_time_ms, max_future_ms=int(ingest.max_future_s * 1000))
        self.dead_letters = dead_letters
        self.stop = stop
        self.clock_ms = clock_ms
        groups = group_views_by_store(settings)
        self._graph_stores = [GraphStore(target) for target, _ in groups]
        self.stores = [_Store(BehaviorGraphWriter(store, views, self.topic))
                       for store, (_, views) in zip(self._graph_stores, groups)]
        # Source offsets already in the dead-letter topic beyond the primary store's mark.
        self._already_dead: dict[int, set[int]] | None = None
        self._forget_requested = False
        self._generation = 0

    def ensure_schema(self) -> bool:
        """Create the schema, waiting out a Neo4j outage (a consumer may start while Neo4j is down);
        False when stopped while waiting."""
        delay = 0.5
        while True:
            try:
                for store in self.stores:
                    store.writer.ensure_schema()
                return True
            except GraphStoreUnavailable as exc:
                log.warning("neo4j unavailable at start-up; retrying in %.1f s: %s", delay, exc)
                metrics.RETRIES.labels("neo4j").inc()
                if self.stop.wait(delay):
                    return False
                delay = min(delay * 2, self.backoff_max_s)

    def close(self) -> None:
        for store in self._graph_stores:
            store.close()

    def forget(self) -> None:
        """Drop everything cached about the stores (after a failed commit)."""
        self._generation += 1
        for store in self.stores:
            store.forget()
        self._already_dead = None

    def request_forget(self) -> None:
        """Ask for the caches to be dropped before the next batch (safe from any thread: partitions
        moved, so what this process knows about the stores may be stale)."""
        self._forget_requested = True

    def resume_offsets(self, partitions: Sequence[int]) -> dict[int, int]:
        """Next offset to read per partition: one past the least-advanced store's mark.

        Reads the stores directly, never the caches, so it may run beside a batch being applied.
        """
        resume: dict[int, int] = {}
        for store in self.stores:
            marks = store.writer.load_marks()
            for p in partitions:
                mark = marks.get(p, PartitionMark()).offset
                resume[p] = min(resume.get(p, mark + 1), mark + 1)
        return resume

    def prepare(self, records: Sequence[SourceRecord]) -> PreparedBatch:
        """Decode a batch and read its users' sessions ahead; runs on the consumer thread, beside apply."""
        now = self.clock_ms()
        metrics.EVENTS_IN.labels(self.topic).inc(len(records))
        decoded = [(record, decode(record.value, self.rules, now_ms=now)) for record in records]
        generation = self._generation  # read before the sessions, so a drop during the read shows
        users = {outcome.user_id for _, outcome in decoded if isinstance(outcome, Event)}
        try:
            sessions = [store.writer.load_sessions(users) for store in self.stores]
        except M2grlError:
            sessions = None  # the writer reads them itself, under its retry loop
        return PreparedBatch(decoded, sessions, generation)

    def apply(self, batch: PreparedBatch) -> BatchResult:
        """Apply a prepared batch (in partition order), retrying through outages until done or stopped."""
        delay = 0.5
        while True:
            if self._forget_requested:
                self._forget_requested = False
                self.forget()
            try:
                ahead = batch.sessions if batch.generation == self._generation else None
                return self._apply_once(batch.decoded, ahead)
            except StaleOffsetsError as exc:
                log.warning("another consumer wrote these partitions first; re-reading the stores (%s)", exc)
                metrics.RETRIES.labels("stale_offsets").inc()
                self.forget()
            except (GraphStoreUnavailable, StreamUnavailable) as exc:
                cause = "neo4j" if isinstance(exc, GraphStoreUnavailable) else "kafka"
                log.warning("%s unavailable, batch not committed; retrying in %.1f s: %s", cause, delay, exc)
                metrics.RETRIES.labels(cause).inc()
                self.forget()  # the commit may or may not have happened: ask the stores again
                if self.stop.wait(delay):
                    raise Interrupted from exc
                delay = min(delay * 2, self.backoff_max_s)

    def _marks(self, store: _Store) -> dict[int, PartitionMark]:
        if store.marks is None:
            store.marks = store.writer.load_marks()
        return store.marks

    def _dead_letters_to_send(self, decoded: list[Decoded]) -> list[DeadLetter]:
        primary = self._marks(self.stores[0])
        rejected = [(record, outcome) for record, outcome in decoded
                    if isinstance(outcome, Rejection) and record.offset > primary.get(record.partition,
                                                                                      PartitionMark()).offset]
        if not rejected:
            return []
        if self._already_dead is None:
            self._already_dead = {}
        for partition in {record.partition for record, _ in rejected} - set(self._already_dead):
            mark = primary.get(partition, PartitionMark())
            self._already_dead[partition] = self.dead_letters.sent_since(partition, mark.dead_letter_offset)
        return [DeadLetter(r.partition, r.offset, r.key, r.value, outcome) for r, outcome in rejected
                if r.offset not in self._already_dead[r.partition]]

    def _apply_once(self, decoded: list[Decoded], ahead: list[dict[str, SessionState]] | None) -> BatchResult:
        started = time.perf_counter()
        result = BatchResult(records=len(decoded))
        letters = self._dead_letters_to_send(decoded)
        dead_letter_ends = self.dead_letters.send(letters) if letters else {}
        for letter in letters:
            self._already_dead.setdefault(letter.partition, set()).add(letter.offset)  # type: ignore[union-attr]
            metrics.DEAD_LETTERED.labels(letter.rejection.reason.value).inc()
        result.dead_lettered = len(letters)

        last_offset: dict[int, int] = {}
        for record, _ in decoded:
            last_offset[record.partition] = max(last_offset.get(record.partition, NO_OFFSET), record.offset)

        for index, store in enumerate(self.stores):
            marks = self._marks(store)
            held = {p: marks.get(p, PartitionMark()) for p in last_offset}
            advance = {p: off for p, off in last_offset.items() if off > held[p].offset}
            if not advance:
                continue
            events = [outcome for record, outcome in decoded
                      if isinstance(outcome, Event) and record.offset > held[record.partition].offset]
            missing_users = {e.user_id for e in events} - store.sessions.keys()
            if missing_users:
                # The cache wins over the read-ahead: it holds what commits since then changed.
                known = ahead[index] if ahead is not None else store.writer.load_sessions(missing_users)
                store.sessions.update({user: known[user] for user in missing_users if user in known})
            delta = extract(events, store.sessions, store.writer.views, self.gap_ms)
            new_marks = {
                p: PartitionMark(offset=off, dead_letter_offset=dead_letter_ends.get(p, held[p].dead_letter_offset)
                                 if index == 0 else NO_OFFSET)
                for p, off in advance.items()
            }
            store.writer.commit(delta, {p: held[p].offset for p in advance}, new_marks)
            marks.update(new_marks)
            if len(store.sessions) + len(delta.sessions) > SESSION_CACHE_LIMIT:
                self.forget()  # also voids read-ahead sessions, which the cache no longer overrides
            store.sessions.update(delta.sessions)
            if index == 0:
                result.applied = len(events)
            for view in store.writer.views:
                rows = len(delta.transitions[view.name]) + len(delta.memberships.get(view.name, {}))
                result.edge_rows[view.name] = rows
                metrics.EDGES_WRITTEN.labels(view.name).inc(rows)

        result.replayed = sum(1 for record, outcome in decoded if isinstance(outcome, Event)) - result.applied
        metrics.EVENTS_APPLIED.labels(self.topic).inc(result.applied)
        metrics.EVENTS_SKIPPED.labels(self.topic).inc(result.replayed)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_EVENTS.observe(len(decoded))
        return result
