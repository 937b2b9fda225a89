"""Applies one batch of source records to every view's graph store, exactly once.

For each batch: decode and, per graph store, plan: keep only records past that store's offsets,
fold them into a delta with the users' session state, build the statements. Planning runs on the
consumer thread while the previous batch commits, against a projection of what the stores will hold
once it has. Then, on the writer thread: commit each store's delta + sessions + offsets in one
transaction, the item view's store last; inside its transaction, with the partitions locked, the
rejections go to the dead-letter topic (skipping any already there). A plan whose assumed offsets
differ from what the store holds at its turn is made again from the store. On an outage nothing is
half-applied: the caches are dropped and the batch is retried from what the stores actually hold.
Events that Neo4j refuses to store are found by trial (rolled-back transactions over halves of the
batch) and dead-lettered, so one such event never stops ingest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from m2grl.errors import (
    GraphStoreError,
    GraphStoreRefused,
    GraphStoreUnavailable,
    M2grlError,
    OffsetGap,
    StaleOffsetsError,
    StreamUnavailable,
)
from m2grl.graphstore import GraphStore
from m2grl.graphstore.model import NO_OFFSET, PartitionMark, SessionState
from m2grl.graphstore.writes import BehaviorGraphWriter, PendingWrite
from m2grl.ingest import metrics
from m2grl.ingest.deadletter import DeadLetter, DeadLetterQueue
from m2grl.ingest.events import Event, EventRules, Reason, Rejection, decode_message
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


@dataclass
class _SentLetters:
    """Source offsets of one partition found dead-lettered between dead-letter offsets ``start``
    and ``end``; grown by scanning on from ``end``."""

    start: int
    end: int
    offsets: set[int]


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
        # Per source partition: rejections already in the dead-letter topic past the stored mark.
        self._sent: dict[int, _SentLetters] = {}
        self._sent_uncounted: dict[tuple[int, int], Reason] = {}  # counted once a commit covers them
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
        self._sent.clear()

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
        decoded = [(record, decode_message(record.key, record.value, self.rules, now_ms=now)) for record in records]
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
        """Apply a prepared batch (in partition order), retrying through outages until done or stopped;
        events Neo4j refuses to store are dead-lettered."""
        delay = 0.5
        refusal: GraphStoreRefused | None = None
        while True:
            if self._forget_requested:
                self._forget_requested = False
                self.forget()
            try:
                if refusal is not None:
                    batch = self._without_refused(batch, refusal)
                    refusal = None
                return self._apply_once(batch)
            except GraphStoreRefused as exc:
                refusal = exc
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

    def _send_dead_letters(self, decoded: list[Decoded], stored: Mapping[int, PartitionMark]) -> dict[int, int]:
        """Send the batch's rejections past the ``stored`` marks that are not in the dead-letter topic
        yet; return each scanned partition's dead-letter end. Runs with the partitions locked in
        the primary store, so nobody else sends letters for them meanwhile."""
        rejected = [(record, outcome) for record, outcome in decoded
                    if isinstance(outcome, Rejection) and record.partition in stored
                    and record.offset > stored[record.partition].offset]
        ends: dict[int, int] = {}
        for partition in sorted({record.partition for record, _ in rejected}):
            sent = self._letters_sent(partition, stored[partition].dead_letter_offset)
            ends[partition] = sent.end
        letters = [DeadLetter(r.partition, r.offset, r.key, r.value, outcome) for r, outcome in rejected
                   if r.offset not in self._sent[r.partition].offsets]
        if letters:
            for partition, end in self.dead_letters.send(letters).items():
                ends[partition] = max(ends[partition], end)
                self._sent[partition].end = ends[partition]
            for letter in letters:
                self._sent[letter.partition].offsets.add(letter.offset)
                self._sent_uncounted[(letter.partition, letter.offset)] = letter.rejection.reason
        return ends

    def _letters_sent(self, partition: int, dead_letter_offset: int) -> _SentLetters:
        """What is in the dead-letter topic for ``partition`` from the stored ``dead_letter_offset``
        on: scanned from where the last scan ended, or afresh when that does not cover it."""
        start = max(dead_letter_offset, 0)
        known = self._sent.get(partition)
        if known is None or known.start > start:
            offsets, end = self.dead_letters.sent_since(partition, start)
            known = self._sent[partition] = _SentLetters(start, end, offsets)
        else:
            offsets, end = self.dead_letters.sent_since(partition, known.end)
            known.offsets |= offsets
            known.end = end
        return known

    def _count_dead_letters(self, committed: Mapping[int, PartitionMark]) -> int:
        """Count the letters sent for offsets the primary store now holds; forget those offsets."""
        done = [key for key in self._sent_uncounted if key[0] in committed and key[1] <= committed[key[0]].offset]
        for key in done:
            metrics.DEAD_LETTERED.labels(self._sent_uncounted.pop(key).value).inc()
        for partition, mark in committed.items():
            if partition in self._sent:
                self._sent[partition].offsets = {o for o in self._sent[partition].offsets if o > mark.offset}
        return len(done)

    def _without_refused(self, batch: PreparedBatch, refusal: GraphStoreRefused) -> PreparedBatch:
        """The batch with each event Neo4j refuses to store turned into a rejection (dead-lettered
        with the refusal), found by trial: halves of the batch are written and rolled back."""
        self.forget()  # plans made ahead assumed the refused events' sessions; they are void now
        decoded = batch.decoded
        refused: dict[int, str] = {}
        candidates: set[int] = set()
        for store in self.stores:
            marks = self._marks(store)
            pending = [index for index, (record, outcome) in enumerate(decoded)
                       if isinstance(outcome, Event) and index not in refused
                       and record.offset > marks.get(record.partition, PartitionMark()).offset]
            candidates.update(pending)
            refused.update(self._refused_among(store, decoded, pending))
        if not refused:
            raise GraphStoreError(f"Neo4j refused a batch of {len(candidates)} events but none of them on its own "
                                  f"(so none can be set aside): {refusal}") from refusal
        if len(refused) == len(candidates):
            self._check_store_accepts_writes(refusal)
        for index, detail in sorted(refused.items()):
            record = decoded[index][0]
            log.error("topic %s partition %d offset %d: Neo4j refuses to store this event; dead-lettering it as "
                      "%s: %s", self.topic, record.partition, record.offset, Reason.REFUSED.value, detail)
        return PreparedBatch([(record, Rejection(Reason.REFUSED, refused[index]) if index in refused else outcome)
                              for index, (record, outcome) in enumerate(decoded)], None, -1)

    def _check_store_accepts_writes(self, refusal: GraphStoreRefused) -> None:
        """Raise unless every store takes (in a rolled-back trial) an event with plain short values: when
        all of a batch is refused, the fault may lie with the store rather than the data."""
        probe = Event("m2grl-probe-user", "m2grl-probe-item", "probe", self.clock_ms(),
                      {view.name: "m2grl-probe" for store in self.stores for view in store.writer.views
                       if not view.is_item})
        record = SourceRecord(partition=-1, offset=0, key=None, value=None)
        for store in self.stores:
            try:
                store.writer.trial(self._plan([(record, probe)], store, {}, {}).pending)
            except GraphStoreRefused as exc:
                raise GraphStoreError(f"Neo4j refuses even a plain trial write, so the store, not the data, is "
                                      f"failing: {exc} (the batch failed with: {refusal})") from exc

    def _refused_among(self, store: _Store, decoded: list[Decoded], indices: list[int]) -> dict[int, str]:
        """Which of the events at ``indices`` ``store`` refuses, by bisection over trial writes."""
        if not indices:
            return {}
        part = [decoded[index] for index in indices]
        offsets = {p: mark.offset for p, mark in self._marks(store).items()}
        try:
            store.writer.trial(self._plan(part, store, offsets, {}).pending)
            return {}
        except GraphStoreRefused as exc:
            if len(indices) == 1:
                return {indices[0]: str(exc)[:900]}
        middle = len(indices) // 2
        return {**self._refused_among(store, decoded, indices[:middle]),
                **self._refused_among(store, decoded, indices[middle:])}

    def _apply_once(self, batch: PreparedBatch) -> BatchResult:
        started = time.perf_counter()
        decoded = batch.decoded
        result = BatchResult(records=len(decoded))
        gaps = offset_gaps(decoded, self._marks(self.stores[0]))
        if gaps and self.on_offset_gap == "stop":
            raise OffsetGap(f"topic {self.topic}: {_described(gaps)} gone before ingest read them; stopping as "
                            "ingest.on_offset_gap says (set it to count to go on without them)")

        plans = batch.plans if batch.plans is not None and batch.generation == self._generation else None
        # The primary store (the item view's, which records the dead letters) commits last: an event
        # another store refuses is then never already held by it, and is dead-lettered with it.
        for index in reversed(range(len(self.stores))):
            store = self.stores[index]
            marks = self._marks(store)
            plan = plans[index] if plans is not None else None
            if plan is None or not _holds(plan.base, marks):
                metrics.REPLANNED.inc()
                plan = self._plan(decoded, store, {p: mark.offset for p, mark in marks.items()}, {})
            if not plan.advance:
                continue
            primary = index == 0
            committed = store.writer.write(
                plan.pending, {p: plan.base.get(p, NO_OFFSET) for p in plan.advance}, plan.advance,
                on_claimed=(lambda stored: self._send_dead_letters(decoded, stored)) if primary else None)
            marks.update(committed)
            if primary:
                result.applied = plan.events
                result.dead_lettered = self._count_dead_letters(committed)
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
