"""Applies one batch of source records to every view's graph store, exactly once.

For each batch: decode and, per graph store, plan: keep only records past that store's offsets,
fold them into a delta with the users' session state, build the statements. Planning runs on the
consumer thread while the previous batch commits, against a projection of what the stores will hold
once it has. Then, on the writer thread: send rejections to the dead-letter topic (skipping any a
previous run already sent) and commit each store's delta + sessions + offsets in one transaction.
A plan whose assumed offsets differ from what the store holds at its turn is made again from the
store. On an outage nothing is half-applied: the caches are dropped and the batch is retried from
what the stores actually hold.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from m2grl.errors import GraphStoreUnavailable, M2grlError, OffsetGap, StaleOffsetsError, StreamUnavailable
from m2grl.graphstore import GraphStore
from m2grl.graphstore.model import NO_OFFSET, PartitionMark, SessionState
from m2grl.graphstore.writes import BehaviorGraphWriter, PendingWrite
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
class StorePlan:
    """One store's part of a batch, computed ahead on the consumer thread.

    ``base`` is what the plan assumed the store held (partition -> offset); the writer uses the
    plan only if the store holds exactly that when the batch's turn comes, and plans afresh
    from the store otherwise.
    """

    base: dict[int, int]
    advance: dict[int, int]  # partition -> the batch's last offset, where past the store's
    pending: PendingWrite
    events: int
    edge_rows: dict[str, int]


@dataclass(frozen=True)
class PreparedBatch:
    """A decoded batch and, per store, its plan, made while the previous batch commits.
    ``generation`` tells whether the applier's caches were dropped since (then the plans are void)."""

    decoded: list[Decoded]
    plans: list[StorePlan] | None
    generation: int


@dataclass
class BatchResult:
    records: int = 0
    applied: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    skipped_offsets: int = 0  # offsets inside the batch's gaps (records removed before they were read)
    edge_rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Gap:
    """Offsets ``first``..``last`` of ``partition`` lie between the stored offset and the batch's
    first record past it: never read, the records gone from the topic."""

    partition: int
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def offset_gaps(decoded: list[Decoded], marks: dict[int, PartitionMark]) -> list[Gap]:
    """The gaps between each partition's stored offset (where one is stored) and the batch's first
    record past it."""
    first_new: dict[int, int] = {}
    for record, _ in decoded:
        if record.offset > marks.get(record.partition, PartitionMark()).offset:
            first_new[record.partition] = min(first_new.get(record.partition, record.offset), record.offset)
    gaps = []
    for partition, first in sorted(first_new.items()):
        stored = marks.get(partition, PartitionMark()).offset
        if stored != NO_OFFSET and first > stored + 1:
            gaps.append(Gap(partition, stored + 1, first - 1))
    return gaps


@dataclass
class _Store:
    """One Neo4j database, the views it holds, and the offsets it has committed (None: ask it)."""

    writer: BehaviorGraphWriter
    marks: dict[int, PartitionMark] | None = None


@dataclass
class _Projection:
    """What the stores will hold once every batch planned so far commits. Consumer thread only."""

    generation: int
    offsets: list[dict[int, int]]
    sessions: list[dict[str, SessionState]]


def _described(gaps: list[Gap]) -> str:
    return "; ".join(f"partition {gap.partition}: offsets {gap.first}-{gap.last} ({gap.size} records)" for gap in gaps)


def _holds(base: dict[int, int], marks: dict[int, PartitionMark]) -> bool:
    return all(base.get(p, NO_OFFSET) == marks.get(p, PartitionMark()).offset for p in base.keys() | marks.keys())


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
        self.on_offset_gap = ingest.on_offset_gap
        self.rules = EventRules.of(ingest)
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
        self._projection: _Projection | None = None
        self._reproject_requested = False

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
        """Drop everything cached about the stores (after a failed commit); voids the plans made so far."""
        self._generation += 1
        for store in self.stores:
            store.marks = None
        self._already_dead = None

    def request_forget(self) -> None:
        """Ask for the caches to be dropped before the next batch (safe from any thread: partitions
        moved, so what this process knows about the stores may be stale)."""
        self._forget_requested = True
        self._reproject_requested = True

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
        """Decode a batch and plan its writes; runs on the consumer thread while the writer commits
        the batch before it."""
        now = self.clock_ms()
        metrics.EVENTS_IN.labels(self.topic).inc(len(records))
        decoded = [(record, decode(record.value, self.rules, now_ms=now)) for record in records]
        try:
            projection = self._current_projection()
            plans = [self._plan(decoded, store, projection.offsets[index], projection.sessions[index])
                     for index, store in enumerate(self.stores)]
        except M2grlError:
            self._projection = None  # half-updated; the writer plans this batch itself, under its retry loop
            return PreparedBatch(decoded, None, -1)
        return PreparedBatch(decoded, plans, projection.generation)

    def _current_projection(self) -> _Projection:
        projection = self._projection
        if (projection is None or self._reproject_requested or projection.generation != self._generation
                or any(len(sessions) > SESSION_CACHE_LIMIT for sessions in projection.sessions)):
            self._reproject_requested = False
            # Generation first, then offsets, then (while planning) sessions: a batch committing
            # in between shows as offsets that differ from the store's when the plan is used.
            generation = self._generation
            offsets = [{p: mark.offset for p, mark in store.writer.load_marks().items()} for store in self.stores]
            projection = _Projection(generation, offsets, [{} for _ in self.stores])
            self._projection = projection
        return projection

    def _plan(self, decoded: list[Decoded], store: _Store, offsets: dict[int, int],
              sessions: dict[str, SessionState]) -> StorePlan:
        """Plan ``store``'s part of a batch from the ``offsets`` and ``sessions`` it holds before
        it, and advance both to what it will hold after."""
        last_offset: dict[int, int] = {}
        for record, _ in decoded:
            last_offset[record.partition] = max(last_offset.get(record.partition, NO_OFFSET), record.offset)
        base = dict(offsets)
        advance = {p: off for p, off in last_offset.items() if off > base.get(p, NO_OFFSET)}
        events = [outcome for record, outcome in decoded
                  if isinstance(outcome, Event) and record.offset > base.get(record.partition, NO_OFFSET)]
        missing_users = {e.user_id for e in events} - sessions.keys()
        if missing_users:
            sessions.update(store.writer.load_sessions(missing_users))
        delta = extract(events, sessions, store.writer.views, self.gap_ms)
        sessions.update(delta.sessions)
        offsets.update(advance)
        edge_rows = {view.name: len(delta.transitions[view.name]) + len(delta.memberships.get(view.name, {}))
                     for view in store.writer.views}
        return StorePlan(base, advance, store.writer.prepare(delta), len(events), edge_rows)

    def apply(self, batch: PreparedBatch) -> BatchResult:
        """Apply a prepared batch (in partition order), retrying through outages until done or stopped."""
        delay = 0.5
        while True:
            if self._forget_requested:
                self._forget_requested = False
                self.forget()
            try:
                return self._apply_once(batch)
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

    def _apply_once(self, batch: PreparedBatch) -> BatchResult:
        started = time.perf_counter()
        decoded = batch.decoded
        result = BatchResult(records=len(decoded))
        gaps = offset_gaps(decoded, self._marks(self.stores[0]))
        if gaps and self.on_offset_gap == "stop":
            raise OffsetGap(f"topic {self.topic}: {_described(gaps)} gone before ingest read them; stopping as "
                            "ingest.on_offset_gap says (set it to count to go on without them)")
        letters = self._dead_letters_to_send(decoded)
        dead_letter_ends = self.dead_letters.send(letters) if letters else {}
        for letter in letters:
            self._already_dead.setdefault(letter.partition, set()).add(letter.offset)  # type: ignore[union-attr]
            metrics.DEAD_LETTERED.labels(letter.rejection.reason.value).inc()
        result.dead_lettered = len(letters)

        plans = batch.plans if batch.plans is not None and batch.generation == self._generation else None
        for index, store in enumerate(self.stores):
            marks = self._marks(store)
            plan = plans[index] if plans is not None else None
            if plan is None or not _holds(plan.base, marks):
                metrics.REPLANNED.inc()
                plan = self._plan(decoded, store, {p: mark.offset for p, mark in marks.items()}, {})
            if not plan.advance:
                continue
            new_marks = {
                p: PartitionMark(offset=off, dead_letter_offset=dead_letter_ends.get(
                    p, marks.get(p, PartitionMark()).dead_letter_offset) if index == 0 else NO_OFFSET)
                for p, off in plan.advance.items()
            }
            store.writer.write(plan.pending, {p: plan.base.get(p, NO_OFFSET) for p in plan.advance}, new_marks)
            marks.update(new_marks)
            if index == 0:
                result.applied = plan.events
            result.edge_rows.update(plan.edge_rows)
            for view, rows in plan.edge_rows.items():
                metrics.EDGES_WRITTEN.labels(view).inc(rows)

        for gap in gaps:  # counted once the batch that passes it is committed, not on each retry
            metrics.OFFSET_GAPS.labels(self.topic, str(gap.partition)).inc()
            metrics.OFFSETS_SKIPPED.labels(self.topic, str(gap.partition)).inc(gap.size)
        if gaps:
            log.error("topic %s: %s gone before ingest read them (retention or compaction); going on without "
                      "them", self.topic, _described(gaps))
        result.skipped_offsets = sum(gap.size for gap in gaps)
        result.replayed = sum(1 for record, outcome in decoded if isinstance(outcome, Event)) - result.applied
        metrics.EVENTS_APPLIED.labels(self.topic).inc(result.applied)
        metrics.EVENTS_SKIPPED.labels(self.topic).inc(result.replayed)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_EVENTS.observe(len(decoded))
        return result
