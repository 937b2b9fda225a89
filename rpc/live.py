"""The snapshot being served, and its replacement.

Each newly published version is read, checked and indexed off to the side, then swapped in by one
reference assignment: a call that took ``current`` answers entirely from that version, whatever
happens meanwhile. A version that fails to read or check is logged, counted and never served; the
last good one keeps serving. Every version that went live is remembered (the last HISTORY of them),
so a watcher gets each one exactly once however fast they follow each other.

Rows are append-only across versions of a lineage (training never re-indexes an id), so a view's ids
are kept in one IdColumn shared by all versions: a new version reads only the ids added since, and
each version sees only its own first ``rows`` of them. Its vectors live in one of two VectorBuffers
that take turns (see there). A version whose chain extends the served one's is reached by reading
only the deltas after it; any other (a first, a new base) is read whole and compared with the
spare, so a swap of a million-row view rewrites only the rows that changed either way.

Each version's nearest-neighbour index is the served one's plus the rows that changed
(rpc/index.py); once those pass ``rpc.index_merge_rows``, a background thread folds them into a
copy of the IVF index, and the next refresh rebases the served version's index on it. A view read
whole is searched exhaustively until the same thread has built its IVF index."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from m2grl import snapshots
from m2grl.rpc import metrics
from m2grl.rpc.idtable import new_id_table
from m2grl.rpc.index import VectorIndex
from m2grl.settings import RpcSettings
from m2grl.snapshots import Manifest

log = logging.getLogger(__name__)

HISTORY = 1000
SPARE_WAIT_S = 1.0  # how long a swap waits for calls still answering from its spare buffer's version


def in_background(cfg: RpcSettings) -> None:
    """Make the calling thread one that reads and indexes versions, which must not take CPU from
    the threads answering calls: it runs at a lower priority (``rpc.poller_niceness``; Linux
    schedules threads one by one), and faiss keeps to it rather than spreading over every core."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), cfg.poller_niceness)
    faiss.omp_set_num_threads(1)


def _unit(vectors: np.ndarray, norms: np.ndarray, rows: np.ndarray | list[int] | int | slice) -> np.ndarray:
    """Unit-length vectors of ``rows``: what the index compares."""
    return vectors[rows] / np.maximum(norms[rows], 1e-12)[..., None]


def _check_finite(name: str, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise ValueError(f"{name} vectors hold NaN or infinite values")


def _capacity(rows: int) -> int:
    # Room for the ids appended after a buffer is made: a buffer that must grow is copied whole.
    return rows + rows // 4 + 1024


class IdColumn:
    """A view's external ids in row order, as far as any version of one lineage read so far has
    them, and the table that finds their rows (rpc/csrc/id_table.cpp: with a dict, looking up a
    call's 100 ids among a million was most of GetEmbeddings' time, spent waiting on memory)."""

    def __init__(self, lineage: str) -> None:
        self.lineage = lineage
        self.ids: list[str] = []
        self.table = new_id_table()

    def extend(self, root: Path, manifest: Manifest, view: str, infos: list[snapshots.SegmentInfo]) -> None:
        fresh = snapshots.read_ids(root, manifest, view, len(self.ids), infos)
        self.table.add(fresh)  # refuses (ValueError, nothing added) an id it has, or one listed twice
        self.ids.extend(fresh)


@dataclass(frozen=True)
class ServedView:
    name: str
    column: IdColumn
    vectors: np.ndarray  # float32 rows × dim, as published
    norms: np.ndarray
    index: VectorIndex
    buffer: VectorBuffer  # what vectors and norms live in

    @property
    def rows(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def row(self, ext: str) -> int | None:
        """The row of ``ext`` in this version, or None (rows of later versions do not count)."""
        row = self.column.table.rows((ext,), self.rows)[0]
        return row if row >= 0 else None

    def rows_of(self, ids: Sequence[str]) -> list[int]:
        """Rows of ``ids`` in this version, -1 for unknown ones."""
        return self.column.table.rows(ids, self.rows)

    def gather(self, ids: Sequence[str]) -> tuple[list[bool], bytes]:
        """Per id, whether this version has it; the vectors of those it has, in order, as float32
        little-endian bytes, one after the other. All in compiled code holding the GIL: numpy
        releases it even for tiny arrays, and on a busy server taking it back cost far more than
        the work (measured: 10× on GetEmbeddings)."""
        return self.column.table.gather(ids, self.rows, self._raw, 4 * self.dim)

    @functools.cached_property
    def _raw(self) -> memoryview:
        if not self.vectors.size:  # a view without rows yet (training published an empty graph)
            return memoryview(b"")
        return self.vectors.astype("<f4", copy=False).data.cast("B")

    def unit(self, rows: np.ndarray | list[int] | int) -> np.ndarray:
        return _unit(self.vectors, self.norms, rows)

    def id(self, row: int) -> str:
        return self.column.ids[row]


class VectorBuffer:
    """The memory one view's versions are served from, reused across versions: vectors and norms
    with room for rows appended later. Each view has two that take turns:
    the one the live version reads, and a spare that the version before it read. A swap brings the
    spare up to the new version by rewriting only the rows that differ (an incremental round moves
    about 1 %), block by block, and then serves from it. Going live thus neither allocates nor frees
    hundreds of megabytes nor copies the whole matrix: at 1M × 64 on two cores, either, once a
    second, stalled calls for 60–190 ms, even from another process (BENCHMARKS.md).

    The first ``rows`` vectors and their norms always agree; a buffer is changed only while no
    served view reads it."""

    def __init__(self, column: IdColumn, vectors: np.ndarray, norms: np.ndarray, rows: int, version: int) -> None:
        self.column = column
        self.version = version  # the snapshot version it holds
        self.vectors = vectors  # capacity × dim; the rows past ``rows`` are room, not data
        self.norms = norms
        self.rows = rows
        # The views served from it: one a version, two where a merged index replaced a version's own.
        self._readers: list[weakref.ref[ServedView]] = []

    @classmethod
    def read(cls, name: str, column: IdColumn, blocks: Iterable[tuple[int, np.ndarray]], rows: int, dim: int,
             version: int) -> VectorBuffer:
        """A new buffer of a version read whole: a first one, or one that changed too much to patch."""
        vectors = np.empty((_capacity(rows), dim), dtype=np.float32)
        norms = np.zeros(len(vectors), dtype=np.float32)
        for start, block in blocks:
            _check_finite(name, block)
            vectors[start:start + len(block)] = block
            norms[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))  # a block in cache
        return cls(column, vectors, norms, rows, version)

    def copied(self, rows: int) -> VectorBuffer:
        """A second buffer holding what this one holds, with room for ``rows``: a view's first spare,
        or a bigger one."""
        vectors = np.empty((max(self.capacity, _capacity(rows)), self.dim), dtype=np.float32)
        vectors[:self.rows] = self.vectors[:self.rows]
        norms = np.zeros(len(vectors), dtype=np.float32)
        norms[:self.rows] = self.norms[:self.rows]
        return VectorBuffer(self.column, vectors, norms, self.rows, self.version)

    @property
    def capacity(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def in_use(self) -> bool:
        self._readers = [reader for reader in self._readers if reader() is not None]
        return bool(self._readers)

    def unread_within(self, seconds: float) -> bool:
        """Whether no served view reads this buffer, waiting up to ``seconds`` for calls still
        answering from one (they take milliseconds; a spare's version went out of date a swap ago)."""
        deadline = time.monotonic() + seconds
        while self.in_use():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def fits(self, column: IdColumn, rows: int, dim: int) -> bool:
        """Whether a version with these ids, rows and dimension can be written over this one."""
        return self.column is column and self.dim == dim and self.rows <= rows <= self.capacity

    def differences(self, name: str, blocks: Iterable[tuple[int, np.ndarray]],
                    limit: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The rows of a later version, read ``blocks`` at a time, that differ from this buffer's or
        are new (ascending), and their vectors; None as soon as more than ``limit`` rows do. Reads
        only; ValueError if the version holds a NaN or infinite value."""
        rows: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        count = 0
        for start, block in blocks:
            _check_finite(name, block)
            known = min(len(block), max(0, self.rows - start))
            differ = np.flatnonzero((block[:known] != self.vectors[start:start + known]).any(axis=1))
            picked = np.concatenate([differ, np.arange(known, len(block))])
            count += len(picked)
            if count > limit:
                return None
            if len(picked):
                rows.append(start + picked)
                vectors.append(block[picked])
        if not rows:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(rows), np.concatenate(vectors)

    def apply(self, version: int, rows: int, changed: np.ndarray, vectors: np.ndarray) -> None:
        """Make this buffer hold ``version``, of ``rows`` rows, in which the rows ``changed``
        (ascending, every appended row among them) have ``vectors``: as ``differences`` or the
        deltas describe it."""
        if len(changed) and (changed[-1] >= rows or len(vectors) != len(changed)):
            raise ValueError(f"a change of {len(changed)} rows does not fit {rows} rows")
        if rows > self.capacity or not np.array_equal(changed[changed >= self.rows], np.arange(self.rows, rows)):
            raise ValueError(f"a change from {self.rows} to {rows} rows lacks appended rows")
        _check_finite(f"version {version}", vectors)
        self.vectors[changed] = vectors
        self.norms[changed] = np.linalg.norm(vectors, axis=1)
        self.rows = rows
        self.version = version

    def unit(self, rows: np.ndarray | slice) -> np.ndarray:
        return _unit(self.vectors, self.norms, rows)

    def serve(self, name: str, index: VectorIndex) -> ServedView:
        view = ServedView(name, self.column, self.vectors[:self.rows], self.norms[:self.rows], index, self)
        self._readers.append(weakref.ref(view))
        view.gather([])  # the byte view is made here, not by the first call
        return view


class Members:
    """Item rows → value rows of one side view, and the reverse (the items of each value), made on
    first use: only diverse recommendations need it, and sorting millions of items at every swap
    would cost more than the swap."""

    def __init__(self, of_item: np.ndarray, values: int) -> None:
        self.of_item = of_item
        self.values = values
        self._reverse: tuple[np.ndarray, np.ndarray] | None = None

    def changed(self, items: np.ndarray, values: np.ndarray, rows: int, value_rows: int) -> Members:
        """These memberships with ``items`` set to ``values`` and ``rows`` items in all (new ones
        without a value unless set): a copy, the served one stays as it is."""
        of_item = np.full(rows, -1, dtype=np.int64)
        kept = min(rows, len(self.of_item))
        of_item[:kept] = self.of_item[:kept]
        of_item[items] = values
        return Members(of_item, value_rows)

    def items(self, value: int) -> np.ndarray:
        if self._reverse is None:  # two calls may both build it; either result is the same
            order = np.argsort(self.of_item, kind="stable")
            self._reverse = order, np.searchsorted(self.of_item[order], np.arange(self.values + 1))
        order, starts = self._reverse
        return order[starts[value]:starts[value + 1]]


@dataclass(frozen=True)
class ServedVersion:
    manifest: Manifest
    views: dict[str, ServedView]
    members: dict[str, Members]
    # Ids new per view since the version served before this one, and rows whose vector changed.
    ids_added: dict[str, int]
    rows_changed: dict[str, int]

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def item_view(self) -> str:
        return self.manifest.views[0]


@dataclass(frozen=True)
class WentLive:
    """What a watcher is told about a version that went live."""

    version: int
    created_ms: int
    ids_added: dict[str, int]
    rows_changed: dict[str, int]


@dataclass(frozen=True)
class Behind:
    """The change a view's spare buffer lacks: from the version it holds to the live one."""

    since: int
    until: int
    rows: np.ndarray
    vectors: np.ndarray


Change = tuple[np.ndarray, np.ndarray]  # rows (ascending) and their vectors


def _differing(served: np.ndarray, new: np.ndarray, block: int) -> np.ndarray:
    """The rows (ascending) in which ``new`` differs from ``served`` or is longer, compared
    ``block`` rows at a time."""
    parts = [start + np.flatnonzero((new[start:start + block] != served[start:start + block]).any(axis=1))
             for start in range(0, len(served), block)]
    return np.concatenate([*parts, np.arange(len(served), len(new))]).astype(np.int64)


def _merged(older: Change, newer: Change) -> Change:
    """Two changes one after the other as one: each row once, ascending, the newer vector where both have it."""
    rows = np.concatenate([newer[0], older[0]])
    vectors = np.concatenate([newer[1], older[1]])
    unique, first = np.unique(rows, return_index=True)  # the first occurrence: the newer one
    return unique, vectors[first]


class _Chain:
    """A version's segments as a swap needs them, each read once: the deltas after the served
    version (``names``; None: the version is read whole) and, only where needed, the whole chain.
    A swap by deltas then opens those deltas, not every segment of the chain."""

    def __init__(self, root: Path, manifest: Manifest, names: list[str] | None) -> None:
        self.root, self.manifest, self.names = root, manifest, names

    @functools.cached_property
    def whole(self) -> list[snapshots.SegmentInfo]:
        return snapshots.segment_infos(self.root, self.manifest)

    @functools.cached_property
    def deltas(self) -> list[snapshots.SegmentInfo]:
        assert self.names is not None
        return snapshots.delta_infos(self.root, self.names)


class LiveSnapshots:
    def __init__(self, root: Path, cfg: RpcSettings) -> None:
        self.root = root
        self.cfg = cfg
        self._current: ServedVersion | None = None
        self._columns: dict[str, IdColumn] = {}
        self._buffers: dict[str, list[VectorBuffer]] = {}  # per view: the live one and its spare, in no order
        self._behind: dict[str, Behind] = {}  # per view: what its spare lacks, where known
        self._changed = threading.Condition()
        self._history: list[WentLive] = []
        self.refused: dict[int, str] = {}  # version -> why
        self._merging: dict[str, threading.Thread] = {}  # per view: the index merge running, if any
        self._merged: dict[str, VectorIndex] = {}  # per view: a merge done, not yet installed
        self._merged_lock = threading.Lock()

    @property
    def current(self) -> ServedVersion | None:
        return self._current

    def refresh(self) -> bool:
        """Serve the newest published version if it is new and sound; True when one went live.
        Called from one thread only (the server's poller), which also installs finished index merges."""
        self._install_merges()
        version = snapshots.current_version(self.root)
        served = self._current
        if version is None or version in self.refused or (served is not None and version <= served.version
                                                          and not self._new_lineage(version, served)):
            return False
        try:
            fresh = self._load(version, served)
        except FileNotFoundError:
            return False  # pruned while being read: a newer version is current, take it next time
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            self.refused[version] = f"{type(exc).__name__}: {exc}"
            metrics.SNAPSHOTS_REFUSED.inc()
            log.error("snapshot version %d refused, still serving %s: %s", version,
                      served.version if served else "nothing", self.refused[version])
            return False
        with self._changed:
            self._current = fresh
            self._history = [*self._history[-(HISTORY - 1):],
                             WentLive(version, fresh.manifest.created_ms, fresh.ids_added, fresh.rows_changed)]
            self._changed.notify_all()
        metrics.LIVE_VERSION.set(version)
        log.info("serving snapshot version %d (%s)", version,
                 ", ".join(f"{view.name}: {view.rows:,}" for view in fresh.views.values()))
        self._start_merges(fresh)
        return True

    # -- index merges --------------------------------------------------------------------------------

    def _start_merges(self, served: ServedVersion) -> None:
        for name, view in served.views.items():
            metrics.INDEX_EXACT_ROWS.labels(name).set(len(view.index.fresh))
            running = self._merging.get(name)
            if view.index.merge_due(self.cfg) and (running is None or not running.is_alive()):
                self._merging[name] = threading.Thread(target=self._merge, args=(name, view.index), daemon=True,
                                                       name=f"index-merge-{name}")
                self._merging[name].start()

    def _merge(self, name: str, index: VectorIndex) -> None:
        in_background(self.cfg)
        started = time.perf_counter()
        try:
            merged = index.merged(self.cfg)
        except (RuntimeError, MemoryError) as exc:  # faiss's errors; the exact part keeps serving
            log.error("could not merge the %s index: %s", name, exc)
            return
        with self._merged_lock:
            self._merged[name] = merged
        what = "built the IVF index of" if index.exact else "merged into the IVF index"
        log.info("%s: %s %d rows in %.1f s", name, what, len(index.fresh), time.perf_counter() - started)

    def wait_for_merges(self, timeout: float | None = None) -> bool:
        """Wait for the index merges running to end, then install them (as ``refresh`` does; call it
        from the same thread). False if one is still running after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._merging.values()):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._install_merges()
        return not any(thread.is_alive() for thread in self._merging.values())

    def _install_merges(self) -> None:
        """Rebase the served version's indexes on the merges done since the last refresh: the same
        version, answering from the same vectors, with a smaller exact part."""
        with self._merged_lock:
            ready, self._merged = self._merged, {}
        served = self._current
        if not ready or served is None:
            return
        views = dict(served.views)
        for name, merged in ready.items():
            view = views.get(name)
            index = view.index.rebased(merged) if view is not None else None
            if view is not None and index is not None:
                views[name] = view.buffer.serve(name, index)
                metrics.INDEX_MERGES.labels(name).inc()
        if any(view is not served.views[name] for name, view in views.items()):  # else all were dropped
            served = self._current = dataclasses.replace(served, views=views)
        self._start_merges(served)

    def _new_lineage(self, version: int, served: ServedVersion) -> bool:
        """Whether an older version number than the served one starts a new lineage (training
        restarted in an emptied folder): then it is served, not ignored."""
        if version == served.version:
            return False
        try:
            return snapshots.read_manifest(self.root, version).lineage != served.manifest.lineage
        except (OSError, ValueError):
            return False

    def went_live_after(self, version: int, timeout: float) -> list[WentLive]:
        """The versions that went live after ``version``, oldest first, waiting up to ``timeout``
        seconds for one (empty then)."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._history) and self._history[-1].version > version, timeout)
            return [event for event in self._history if event.version > version]

    def _load(self, version: int, served: ServedVersion | None) -> ServedVersion:
        manifest = snapshots.read_manifest(self.root, version)
        if served is not None and served.manifest.lineage != manifest.lineage:
            log.warning("snapshot %d starts a new lineage (training restarted from scratch): reading it whole", version)
            served = None
        deltas = self._deltas_after(manifest, served)
        infos = _Chain(self.root, manifest, deltas)
        views, changed = {}, {}
        for name in manifest.views:
            before = served.views.get(name) if served else None
            views[name], changed[name] = self._load_view(manifest, infos, name, before, deltas)
        members = {side: self._members(manifest, infos, side, served, deltas) for side in manifest.sides}
        added = {name: view.rows - (served.views[name].rows if served and name in served.views else 0)
                 for name, view in views.items()}
        return ServedVersion(manifest, views, members, added, changed)

    def _deltas_after(self, manifest: Manifest, served: ServedVersion | None) -> list[str] | None:
        """The deltas of ``manifest``'s chain after the served version, where the chain passes
        through it (None: it does not, so the version is read whole)."""
        if served is None:
            return None
        reached = [at for at, name in enumerate(manifest.chain) if snapshots.segment_version(name) == served.version]
        return manifest.chain[reached[-1] + 1:] if reached else None

    def _members(self, manifest: Manifest, infos: _Chain, side: str,
                 served: ServedVersion | None, deltas: list[str] | None) -> Members:
        items, values = manifest.rows[manifest.views[0]], manifest.rows[side]
        if served is None or deltas is None or side not in served.members:
            return Members(snapshots.read_members(self.root, manifest, side, infos.whole), values)
        changed_items, changed_values = snapshots.read_member_changes(self.root, infos.deltas, side)
        if len(changed_items) and (changed_items.max() >= items or changed_values.max() >= values):
            raise ValueError(f"{side} memberships of snapshot {manifest.version} do not fit its rows")
        return served.members[side].changed(changed_items, changed_values, items, values)

    def _load_view(self, manifest: Manifest, infos: _Chain, name: str,
                   before: ServedView | None, deltas: list[str] | None) -> tuple[ServedView, int]:
        """The view of the new version, and how many of its rows that were served before changed."""
        column = self._column(manifest, infos, name)
        rows = manifest.rows[name]
        spare = self._spare(name, before, column, rows, manifest.dim)
        if spare is not None and before is not None:
            found = self._change_for(spare, before, deltas, manifest, infos, name)
            if found is not None:
                change, since_served = found
                try:
                    spare.apply(manifest.version, rows, *change)
                except BaseException:
                    self._buffers[name].remove(spare)  # half-written: never to be read
                    self._behind.pop(name, None)
                    raise
                if since_served is None:  # the spare was out of step: compare it with the served rows
                    since_served = _differing(before.vectors, spare.vectors[:rows], self.cfg.swap_block_rows)
                self._behind[name] = Behind(before.buffer.version, manifest.version, since_served,
                                            spare.vectors[since_served].copy())
                old = since_served[since_served < before.rows]
                # Rows a whole read found different from the spare may equal the served version's.
                moved = old if deltas is not None else old[(spare.vectors[old] != before.vectors[old]).any(axis=1)]
                index = before.index.moved(rows, since_served, spare.unit(since_served), self.cfg)
                if index is None:  # its IVF part is rebuilt in the background (_start_merges)
                    index = VectorIndex.searched_exactly(spare.unit(slice(0, rows)))
                return spare.serve(name, index), len(moved)
        # Let go of the spare first: a view read whole then takes three buffers at most, not four.
        spare = None
        self._buffers.pop(name, None)
        self._behind.pop(name, None)
        buffer = VectorBuffer.read(name, column, self._blocks(manifest, infos, name), rows, manifest.dim,
                                   manifest.version)
        # Its spare is made now, not by the next swap: that would copy the whole buffer while serving.
        self._buffers[name] = [buffer, buffer.copied(rows)]
        index = VectorIndex.searched_exactly(buffer.unit(slice(0, rows)))  # IVF part: _start_merges
        return buffer.serve(name, index), (before.rows if before is not None else 0)

    def _change_for(self, spare: VectorBuffer, before: ServedView, deltas: list[str] | None, manifest: Manifest,
                    infos: _Chain,
                    name: str) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray | None] | None:
        """The rows and vectors that bring ``spare`` to the new version, and the rows (ascending)
        in which the new version may differ from the served one (None: not known). From the deltas
        after the served version plus what the spare lacks of it; or, where the version is read
        whole, from the rows that differ from the spare's. None: too many differ, read it afresh."""
        served = before.buffer.version
        behind = self._behind.get(name)
        lacking = (None if spare.version == served else
                   behind if behind is not None and (behind.since, behind.until) == (spare.version, served) else None)
        if deltas is not None and (spare.version == served or lacking is not None):
            change = snapshots.read_changes(self.root, infos.deltas, name)
            if lacking is None:
                return change, change[0]
            return _merged((lacking.rows, lacking.vectors), change), change[0]
        rows = manifest.rows[name]
        # Past the share where the IVF centroids are retrained, the version is read whole anyway.
        limit = rows if rows < self.cfg.exact_below else int(self.cfg.ivf_retrain_share * rows)
        differ = spare.differences(name, self._blocks(manifest, infos, name), limit)
        if differ is None:
            return None
        # Without what the spare lacked, rows the spare alone had out of date are missed: counted
        # against the spare then, and the next swap compares whole again.
        if spare.version == served:
            return differ, differ[0]
        return differ, None if lacking is None else np.union1d(differ[0], lacking.rows)

    def _spare(self, name: str, before: ServedView | None, column: IdColumn, rows: int,
               dim: int) -> VectorBuffer | None:
        """The buffer to write the version after ``before`` into, or None when it must be read whole."""
        if before is None or before.column is not column or before.dim != dim or before.rows > rows:
            return None
        live = before.buffer
        for buffer in self._buffers.get(name, []):
            if buffer is not live and buffer.fits(column, rows, dim) and buffer.unread_within(SPARE_WAIT_S):
                return buffer
        spare = live.copied(rows)
        self._buffers[name] = [live, spare]
        return spare

    def _blocks(self, manifest: Manifest, infos: _Chain,
                name: str) -> Iterator[tuple[int, np.ndarray]]:
        return snapshots.fold_blocks(self.root, infos.whole, name, "vectors", manifest.rows[name], manifest.dim,
                                     self.cfg.swap_block_rows)

    def _column(self, manifest: Manifest, infos: _Chain, name: str) -> IdColumn:
        """The view's shared ids extended to this version; a new column for a new lineage
        (training restarted from an empty snapshot folder)."""
        column = self._columns.get(name)
        fresh = column is None or column.lineage != manifest.lineage or len(column.ids) > manifest.rows[name]
        if fresh:
            column = self._columns[name] = IdColumn(manifest.lineage)
        assert column is not None
        if len(column.ids) < manifest.rows[name]:
            # Ids past those the column holds were appended after the served version: in its deltas.
            column.extend(self.root, manifest, name, infos.whole if fresh or infos.names is None else infos.deltas)
        return column
