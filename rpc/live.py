"""The snapshot being served, and its replacement.

Each newly published version is read, checked and indexed off to the side, then swapped in by one
reference assignment: a call that took ``current`` answers entirely from that version, whatever
happens meanwhile. A version that fails to read or check is logged, counted and never served; the
last good one keeps serving. Every version that went live is remembered (the last HISTORY of them),
so a watcher gets each one exactly once however fast they follow each other.

Rows are append-only across versions of a lineage (training never re-indexes an id), so a view's ids
are kept in one IdColumn shared by all versions: a new version reads only the ids added since, and
each version sees only its own first ``rows`` of them. Its vectors, likewise, live in one
VectorStore per view, and a version is that store plus an overlay: the rows in which it differs
from what the store holds. A swap reads only the deltas after the served version (a version whose
chain does not pass through it is read whole and compared with the store), serves the store with
the new rows overlaid, and once no call answers from an older version any more, writes those rows
into the store and serves it alone. Memory is one copy of each view, and a swap costs the rows it
moves, at any number of rows.

Each version's nearest-neighbour index is the served one's plus the rows that changed
(rpc/index.py); once those pass ``rpc.index_merge_rows``, a background thread folds them into a
copy of the HNSW graph, and the next refresh rebases the served version's index on it. A view read
whole is searched exhaustively, in its store, until the same thread has built its graph."""

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
from typing import Protocol

import faiss
import numpy as np

from m2grl import snapshots
from m2grl.grouping import rows_by_value
from m2grl.idtable import new_id_table
from m2grl.rpc import metrics
from m2grl.rpc.index import VectorIndex
from m2grl.settings import RpcSettings
from m2grl.snapshots import Manifest

log = logging.getLogger(__name__)

HISTORY = 1000
FOLD_WAIT_S = 1.0  # how long a swap waits for calls still answering from older versions before writing its rows


def in_background(cfg: RpcSettings) -> None:
    """Make the calling thread one that reads and indexes versions, which must not take CPU from
    the threads answering calls: it runs at a lower priority (``rpc.poller_niceness``; Linux
    schedules threads one by one), and faiss keeps to it rather than spreading over every core."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), cfg.poller_niceness)
    faiss.omp_set_num_threads(1)


def _check_finite(name: str, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise ValueError(f"{name} vectors hold NaN or infinite values")


def _capacity(rows: int) -> int:
    # Room for the rows appended later, so that a store seldom has to be copied whole to grow. The
    # room costs address space, not memory: a page is resident once written.
    return rows + rows // 2 + 1024


def _norms(vectors: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors)).astype(np.float32, copy=False)


Change = tuple[np.ndarray, np.ndarray]  # rows (ascending, int64) and their values, in that order


def _merged(older: Change, newer: Change) -> Change:
    """Two changes one after the other as one: each row once, ascending, the newer value where both have it."""
    rows = np.concatenate([newer[0], older[0]])
    values = np.concatenate([newer[1], older[1]])
    unique, first = np.unique(rows, return_index=True)  # the first occurrence: the newer one
    return unique, values[first]


def _found(among: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``rows`` are in ``among`` (ascending), and where."""
    at = np.minimum(np.searchsorted(among, rows), max(len(among) - 1, 0))
    hit = among[at] == rows if len(among) else np.zeros(len(rows), dtype=bool)
    return hit, at


@dataclass(frozen=True)
class Overlay:
    """The rows (ascending, appended ones among them) in which a version differs from what its
    store holds, with their vectors and lengths."""

    rows: np.ndarray
    vectors: np.ndarray
    norms: np.ndarray

    @classmethod
    def of(cls, change: Change) -> Overlay:
        rows, vectors = change
        return cls(rows.astype(np.int64, copy=False), vectors, _norms(vectors))

    @classmethod
    def empty(cls, dim: int) -> Overlay:
        return cls.of((np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)))

    def __len__(self) -> int:
        return len(self.rows)

    def then(self, change: Change) -> Overlay:
        """This overlay with ``change`` made after it."""
        return Overlay.of(_merged((self.rows, self.vectors), change)) if len(self) else Overlay.of(change)


class _Reader(Protocol):
    @property
    def version(self) -> int: ...


class _Shared:
    """Memory that every version served from it reads, written in place: only once each live reader
    (a version's served object, weakly held) is of the version whose rows are written, which reads
    those rows from its own overlay until then."""

    def __init__(self) -> None:
        self._readers: list[weakref.ref[_Reader]] = []

    def _read_by(self, reader: _Reader) -> None:
        self._readers.append(weakref.ref(reader))

    def read_only_at(self, version: int, deadline: float) -> bool:
        """Whether every live reader is of ``version``, waiting until ``deadline`` (``time.monotonic``)
        for calls still answering from older ones (they take milliseconds)."""
        while True:
            alive = [reader for ref in self._readers if (reader := ref()) is not None]
            self._readers = [weakref.ref(reader) for reader in alive]
            if all(reader.version == version for reader in alive):
                return True
            del alive
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)


class IdColumn:
    """A view's external ids in row order, as far as any version of one lineage read so far has
    them, in the table that finds their rows (m2grl/csrc/id_table.cpp: with a dict, looking up a
    call's 100 ids among a million was most of GetEmbeddings' time, spent waiting on memory) and
    gives the ids of rows back. No Python object per id: a str in a list cost 61 bytes each."""

    def __init__(self, lineage: str) -> None:
        self.lineage = lineage
        self.table = new_id_table()

    def __len__(self) -> int:
        return len(self.table)

    def extend(self, root: Path, manifest: Manifest, view: str, infos: list[snapshots.SegmentInfo]) -> None:
        fresh = snapshots.read_ids(root, manifest, view, len(self.table), infos)
        self.table.add(fresh)  # refuses (ValueError, nothing added) an id it has, or one listed twice


class VectorStore(_Shared):
    """One view's vectors and their lengths, shared by the versions served from it, with room for
    rows appended later. Its first ``rows`` rows are those of ``version``; each version served from
    it overlays the rows in which it differs, and ``fold`` writes them in place once only that
    version reads it. One copy per view, and going live neither allocates nor frees hundreds of
    megabytes nor copies the matrix: at 1M × 64 on two cores, either, once a second, stalled calls
    for 60–190 ms, even from another process (BENCHMARKS.md)."""

    def __init__(self, column: IdColumn, vectors: np.ndarray, norms: np.ndarray, rows: int, version: int) -> None:
        super().__init__()
        self.column = column
        self.vectors = vectors  # capacity × dim; the rows past ``rows`` are room, not data
        self.norms = norms
        self.rows = rows
        self.version = version

    @classmethod
    def read(cls, name: str, column: IdColumn, blocks: Iterable[tuple[int, np.ndarray]], rows: int, dim: int,
             version: int) -> VectorStore:
        """The store of a version read whole: a first one, or one that changed too much to overlay."""
        vectors = np.empty((_capacity(rows), dim), dtype=np.float32)
        norms = np.zeros(len(vectors), dtype=np.float32)
        for start, block in blocks:
            _check_finite(name, block)
            vectors[start:start + len(block)] = block
            norms[start:start + len(block)] = _norms(block)  # a block in cache
        return cls(column, vectors, norms, rows, version)

    def grown(self, rows: int) -> VectorStore:
        """A copy of this store with room for ``rows``: the seldom case where appended rows outgrow it."""
        vectors = np.empty((_capacity(rows), self.dim), dtype=np.float32)
        vectors[:self.rows] = self.vectors[:self.rows]
        norms = np.zeros(len(vectors), dtype=np.float32)
        norms[:self.rows] = self.norms[:self.rows]
        return VectorStore(self.column, vectors, norms, self.rows, self.version)

    @property
    def capacity(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @functools.cached_property
    def raw(self) -> memoryview:
        """The whole buffer as bytes, for the compiled gather."""
        if not self.vectors.size:
            return memoryview(b"")
        return self.vectors.astype("<f4", copy=False).data.cast("B")

    def fits(self, column: IdColumn, rows: int, dim: int) -> bool:
        """Whether a version with these ids, rows and dimension can be overlaid on this store."""
        return self.column is column and self.dim == dim and self.rows <= rows

    def differences(self, name: str, blocks: Iterable[tuple[int, np.ndarray]], limit: int) -> Change | None:
        """The rows of a later version, read ``blocks`` at a time, that differ from this store's or
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
        return np.concatenate(rows).astype(np.int64), np.concatenate(vectors)

    def values(self, overlay: Overlay, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The vectors and lengths of ``rows`` in the version that overlays ``overlay`` on this store."""
        vectors, norms = self.vectors[rows], self.norms[rows]
        if len(overlay):
            hit, at = _found(overlay.rows, rows)
            vectors[hit], norms[hit] = overlay.vectors[at[hit]], overlay.norms[at[hit]]
        return vectors, norms

    def fold(self, version: int, rows: int, overlay: Overlay) -> None:
        """Make this store hold ``version``, of ``rows`` rows, which overlaid ``overlay`` on it. Only
        once ``read_only_at(version)``: an older version reads these rows as they were."""
        if rows > self.capacity or (len(overlay) and overlay.rows[-1] >= rows):
            raise ValueError(f"an overlay of {len(overlay)} rows does not fit {rows} rows")
        self.vectors[overlay.rows] = overlay.vectors
        self.norms[overlay.rows] = overlay.norms
        self.rows = rows
        self.version = version

    def serve(self, name: str, version: int, rows: int, overlay: Overlay, index: VectorIndex) -> ServedView:
        if rows > self.capacity:
            raise ValueError(f"{rows} rows do not fit a store of {self.capacity}")
        view = ServedView(name, version, self, rows, overlay, index)
        self._read_by(view)
        return view


@dataclass(frozen=True, eq=False)
class ServedView:
    """One view of one version: its store with its overlay, its ids, its index."""

    name: str
    version: int
    store: VectorStore
    rows: int
    overlay: Overlay
    index: VectorIndex

    @property
    def column(self) -> IdColumn:
        return self.store.column

    @property
    def dim(self) -> int:
        return self.store.dim

    def row(self, ext: str) -> int | None:
        """The row of ``ext`` in this version, or None (rows of later versions do not count)."""
        row = self.column.table.rows((ext,), self.rows)[0]
        return row if row >= 0 else None

    def rows_of(self, ids: Sequence[str]) -> list[int]:
        """Rows of ``ids`` in this version, -1 for unknown ones."""
        return self.column.table.rows(ids, self.rows)

    def gather(self, ids: Sequence[str]) -> tuple[list[bool], bytes]:
        """Per id, whether this version has it; the vectors of those it has, in order, as float32
        little-endian bytes, one after the other. In compiled code holding the GIL: numpy releases
        it even for tiny arrays, and on a busy server taking it back cost far more than the work
        (measured: 10× on GetEmbeddings). Only while a version's overlay is not yet in its store
        (milliseconds after it goes live) are its rows patched in with numpy."""
        found, raw = self.column.table.gather(ids, self.rows, self.store.raw, 4 * self.dim)
        if not len(self.overlay) or not raw:
            return found, raw
        rows = np.array([row for row in self.rows_of(ids) if row >= 0], dtype=np.int64)
        hit, at = _found(self.overlay.rows, rows)
        if not hit.any():
            return found, raw
        vectors = np.frombuffer(raw, dtype="<f4").reshape(len(rows), self.dim).copy()
        vectors[hit] = self.overlay.vectors[at[hit]]
        return found, vectors.tobytes()

    def matrix(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (a copy)."""
        return self.store.values(self.overlay, np.asarray(rows, dtype=np.int64))[0]

    def unit(self, rows: np.ndarray | list[int] | int) -> np.ndarray:
        """Unit-length vectors of ``rows``: what the index compares."""
        picked = np.asarray(rows, dtype=np.int64)
        vectors, norms = self.store.values(self.overlay, picked.reshape(-1))
        unit = vectors / np.maximum(norms, 1e-12)[:, None]
        return unit.reshape(*picked.shape, self.dim)

    def id(self, row: int) -> str:
        return self.column.table.ids((row,))[0]

    def ids(self, rows: Sequence[int]) -> list[str]:
        return self.column.table.ids(rows)


class MemberStore(_Shared):
    """One side view's value row per item row (-1: none), shared by the versions served from it as
    a VectorStore is, with room for items appended later."""

    def __init__(self, of_item: np.ndarray, rows: int, version: int) -> None:
        super().__init__()
        self.of_item = of_item  # int32, capacity; -1 past ``rows``
        self.rows = rows
        self.version = version

    @classmethod
    def read(cls, of_item: np.ndarray, version: int) -> MemberStore:
        store = np.full(_capacity(len(of_item)), -1, dtype=np.int32)
        store[:len(of_item)] = of_item
        return cls(store, len(of_item), version)

    def grown(self, rows: int) -> MemberStore:
        store = np.full(_capacity(rows), -1, dtype=np.int32)
        store[:self.rows] = self.of_item[:self.rows]
        return MemberStore(store, self.rows, self.version)

    def fold(self, version: int, rows: int, overlay: Change) -> None:
        """As VectorStore.fold."""
        if rows > len(self.of_item):
            raise ValueError(f"{rows} items do not fit a store of {len(self.of_item)}")
        self.of_item[overlay[0]] = overlay[1]
        self.rows = rows
        self.version = version

    def serve(self, version: int, rows: int, values: int, overlay: Change) -> Members:
        members = Members(version, self, rows, values, overlay)
        self._read_by(members)
        return members


@dataclass(frozen=True, eq=False)
class Members:
    """Item rows → value rows of one side view in one version (its store with an overlay), and the
    reverse (the items of each value), made on first use: only diverse recommendations need it, and
    sorting millions of items at every swap would cost more than the swap."""

    version: int
    store: MemberStore
    rows: int  # items
    values: int  # value rows
    overlay: Change  # items (ascending) and their value rows, where they differ from the store

    def of(self, items: np.ndarray | list[int]) -> np.ndarray:
        """The value rows of ``items`` (-1: none)."""
        items = np.asarray(items, dtype=np.int64)
        values = self.store.of_item[items]
        if len(self.overlay[0]):
            hit, at = _found(self.overlay[0], items)
            values[hit] = self.overlay[1][at[hit]]
        return values

    def folded(self) -> Members:
        """This version once its overlay is in the store: the same memberships, and the reverse
        if a call made it already (sorting every item again for the same version is wasted)."""
        members = self.store.serve(self.version, self.rows, self.values, (self.overlay[0][:0], self.overlay[1][:0]))
        if "_reverse" in self.__dict__:  # functools.cached_property keeps it there
            members.__dict__["_reverse"] = self.__dict__["_reverse"]
        return members

    def items(self, value: int) -> np.ndarray:
        order, starts = self._reverse
        return order[starts[value]:starts[value + 1]]

    @functools.cached_property
    def _reverse(self) -> tuple[np.ndarray, np.ndarray]:
        # Two calls may both build it; either result is the same.
        return rows_by_value(self.of(np.arange(self.rows)), self.values)


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
    """What a watcher is told about a version that went live; ``sequence`` counts the versions that
    went live in this process (a rollback or a new lineage lowers the version number, not it)."""

    sequence: int
    version: int
    created_ms: int
    ids_added: dict[str, int]
    rows_changed: dict[str, int]


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
        """Serve the version CURRENT names if it is sound and not the one served (a newer one, a rollback
        or a new lineage); True when one went live.
        Called from one thread only (the server's poller), which also installs finished index
        merges and writes overlays into their stores."""
        self._install_merges()
        self._fold(wait_s=0.0)
        version = snapshots.current_version(self.root)
        served = self._current
        if version is None or version in self.refused or (served is not None and version == served.version):
            return False
        try:
            with snapshots.pinned(self.root, version) as manifest:
                if served is not None and version < served.version and manifest.lineage == served.manifest.lineage:
                    log.warning("CURRENT moved back from version %d to %d (a rollback): serving %d", served.version,
                                version, version)
                fresh = self._load(manifest, served)
        except FileNotFoundError as exc:
            if snapshots.current_version(self.root) != version:
                return False  # pruned before it could be pinned: a newer version is current, take it next time
            self._refuse(version, served, exc)
            return False
        except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
            self._refuse(version, served, exc)
            return False
        del served  # the version before must not look like a call still answering from it
        with self._changed:
            self._current = fresh
            sequence = self._history[-1].sequence + 1 if self._history else 1
            self._history = [*self._history[-(HISTORY - 1):], WentLive(
                sequence, version, fresh.manifest.created_ms, fresh.ids_added, fresh.rows_changed)]
            self._changed.notify_all()
        metrics.LIVE_VERSION.set(version)
        log.info("serving snapshot version %d (%s)", version,
                 ", ".join(f"{view.name}: {view.rows:,}" for view in fresh.views.values()))
        del fresh
        self._fold(wait_s=FOLD_WAIT_S)
        assert self._current is not None
        self._start_merges(self._current)
        return True

    def _refuse(self, version: int, served: ServedVersion | None, exc: BaseException) -> None:
        self.refused[version] = f"{type(exc).__name__}: {exc}"
        metrics.SNAPSHOTS_REFUSED.inc()
        log.error("snapshot version %d refused, still serving %s: %s", version,
                  served.version if served else "nothing", self.refused[version])

    def _fold(self, wait_s: float) -> None:
        """Write the served version's overlays into their stores, where no call answers from an
        older version any more (waiting up to ``wait_s`` for those), and serve it from the stores
        alone: the same version, the same answers. An overlay whose store an older version still
        reads stays, and the next refresh tries again."""
        served = self._current
        if served is None:
            return
        views, members = dict(served.views), dict(served.members)
        deadline = time.monotonic() + wait_s
        for name, view in served.views.items():
            store = view.store
            if store.version != served.version and store.read_only_at(served.version, deadline):
                store.fold(served.version, view.rows, view.overlay)
                index = view.index.folded(store.vectors, store.norms, self.cfg)
                views[name] = store.serve(name, served.version, view.rows, Overlay.empty(store.dim), index)
        for side, member in served.members.items():
            if member.store.version != served.version and member.store.read_only_at(served.version, deadline):
                member.store.fold(served.version, member.rows, member.overlay)
                members[side] = member.folded()
        if any(views[name] is not view for name, view in served.views.items()) or \
                any(members[side] is not member for side, member in served.members.items()):
            self._current = dataclasses.replace(served, views=views, members=members)
        else:
            pending = [name for name, view in served.views.items() if len(view.overlay)]
            if pending and wait_s:
                log.warning("version %d: calls still answer from an older version after %.1f s; its rows of %s "
                            "stay overlaid until they end", served.version, wait_s, ", ".join(pending))

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
        what = "built the graph of" if index.exact else "merged into the graph"
        log.info("%s: %s %d rows in %.1f s", name, what, len(index) if index.exact else len(index.fresh),
                 time.perf_counter() - started)

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
                views[name] = view.store.serve(name, view.version, view.rows, view.overlay, index)
                metrics.INDEX_MERGES.labels(name).inc()
        if any(view is not served.views[name] for name, view in views.items()):  # else all were dropped
            served = self._current = dataclasses.replace(served, views=views)
        self._start_merges(served)

    def latest(self) -> tuple[ServedVersion | None, int]:
        """The version served and the sequence number it went live with (0: none yet), together."""
        with self._changed:
            return self._current, self._history[-1].sequence if self._history else 0

    def went_live_after(self, sequence: int, timeout: float) -> list[WentLive]:
        """The versions that went live after the one numbered ``sequence``, oldest first, waiting up
        to ``timeout`` seconds for one (empty then)."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._history) and self._history[-1].sequence > sequence, timeout)
            return [event for event in self._history if event.sequence > sequence]

    # -- reading a version ---------------------------------------------------------------------------

    def _load(self, manifest: Manifest, served: ServedVersion | None) -> ServedVersion:
        """The version of ``manifest``, built beside the served one without writing anything it reads."""
        if served is not None and served.manifest.lineage != manifest.lineage:
            log.warning("snapshot %d starts a new lineage (training restarted from scratch): reading it whole",
                        manifest.version)
            served = None
        deltas = self._deltas_after(manifest, served)
        infos = _Chain(self.root, manifest, deltas)
        views, changed = {}, {}
        for name in manifest.views:
            before = served.views.get(name) if served else None
            views[name], changed[name] = self._load_view(manifest, infos, name, before, deltas)
        members = {side: self._members(manifest, infos, side, served, deltas) for side in manifest.sides}
        added = {name: max(view.rows - (served.views[name].rows if served and name in served.views else 0), 0)
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
            of_item = snapshots.read_members(self.root, manifest, side, infos.whole)
            return MemberStore.read(of_item, manifest.version).serve(manifest.version, items, values,
                                                                     (of_item[:0], of_item[:0].astype(np.int32)))
        changed_items, changed_values = snapshots.read_member_changes(self.root, infos.deltas, side)
        if len(changed_items) and (changed_items.max() >= items or changed_values.max() >= values):
            raise ValueError(f"{side} memberships of snapshot {manifest.version} do not fit its rows")
        before = served.members[side]
        store = before.store if items <= len(before.store.of_item) else before.store.grown(items)
        overlay = _merged(before.overlay, (changed_items.astype(np.int64), changed_values.astype(np.int32)))
        return store.serve(manifest.version, items, values, overlay)

    def _load_view(self, manifest: Manifest, infos: _Chain, name: str,
                   before: ServedView | None, deltas: list[str] | None) -> tuple[ServedView, int]:
        """The view of the new version, and how many of its rows that were served before changed."""
        column = self._column(manifest, infos, name)
        rows = manifest.rows[name]
        if before is not None and before.store.fits(column, rows, manifest.dim):
            store = before.store if rows <= before.store.capacity else before.store.grown(rows)
            found = self._change_for(store, before, deltas, manifest, infos, name)
            if found is not None:
                overlay, (changed, vectors) = found
                unit = vectors / np.maximum(_norms(vectors), 1e-12)[:, None]
                index = before.index.moved(rows, changed, unit, self.cfg)
                if index is None:  # too much change at once: its graph is built afresh in the background
                    index = VectorIndex.searched_exactly(store.vectors, store.norms, store.rows).moved(
                        rows, overlay.rows, overlay.vectors / np.maximum(overlay.norms, 1e-12)[:, None], self.cfg)
                assert index is not None
                return store.serve(name, manifest.version, rows, overlay, index), int((changed < before.rows).sum())
        store = VectorStore.read(name, column, self._blocks(manifest, infos, name), rows, manifest.dim,
                                 manifest.version)
        index = VectorIndex.searched_exactly(store.vectors, store.norms, rows)  # graph part: _start_merges
        return (store.serve(name, manifest.version, rows, Overlay.empty(manifest.dim), index),
                before.rows if before is not None else 0)

    def _change_for(self, store: VectorStore, before: ServedView, deltas: list[str] | None, manifest: Manifest,
                    infos: _Chain, name: str) -> tuple[Overlay, Change] | None:
        """The new version's overlay on ``store``, and the rows (ascending) in which it differs from
        the served version, with their vectors: from the deltas after the served version or, where
        the version is read whole, by comparing it with the store. None: too many rows differ, read
        it afresh."""
        if deltas is not None:
            change = snapshots.read_changes(self.root, infos.deltas, name)
            _check_finite(f"version {manifest.version}", change[1])
            return before.overlay.then(change), change
        rows = manifest.rows[name]
        # Past the share where a version is read whole and indexed afresh, it is read whole anyway.
        limit = rows if rows < self.cfg.exact_below else int(self.cfg.read_whole_share * rows)
        differ = store.differences(name, self._blocks(manifest, infos, name), limit)
        if differ is None:
            return None
        overlay = Overlay.of(differ)
        # Rows outside both overlays hold the store's vector in either version.
        candidates = np.union1d(overlay.rows, before.overlay.rows).astype(np.int64)
        old = candidates[candidates < before.rows]
        new_vectors = store.values(overlay, old)[0]
        moved = old[(new_vectors != before.matrix(old)).any(axis=1)]
        changed = np.concatenate([moved, candidates[candidates >= before.rows]])
        return overlay, (changed, store.values(overlay, changed)[0])

    def _blocks(self, manifest: Manifest, infos: _Chain,
                name: str) -> Iterator[tuple[int, np.ndarray]]:
        return snapshots.fold_blocks(self.root, infos.whole, name, "vectors", manifest.rows[name], manifest.dim,
                                     self.cfg.swap_block_rows)

    def _column(self, manifest: Manifest, infos: _Chain, name: str) -> IdColumn:
        """The view's shared ids extended to this version; a new column for a new lineage
        (training restarted from an empty snapshot folder)."""
        column = self._columns.get(name)
        fresh = column is None or column.lineage != manifest.lineage or len(column) > manifest.rows[name]
        if fresh:
            column = self._columns[name] = IdColumn(manifest.lineage)
        assert column is not None
        if len(column) < manifest.rows[name]:
            # Ids past those the column holds were appended after the served version: in its deltas.
            column.extend(self.root, manifest, name, infos.whole if fresh or infos.names is None else infos.deltas)
        return column
