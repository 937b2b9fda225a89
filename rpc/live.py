"""The snapshot being served, and its replacement.

Each newly published version is read, checked and indexed off to the side, then swapped in by one
reference assignment: a call that took ``current`` answers entirely from that version, whatever
happens meanwhile. A version that fails to read or check is logged, counted and never served; the
last good one keeps serving. Every version that went live is remembered (the last HISTORY of them),
so a watcher gets each one exactly once however fast they follow each other.

Rows are append-only across versions (training never re-indexes an id), so a view's ids are kept in
one IdColumn shared by all versions: a new version reads only the ids added since, and each version
sees only its own first ``rows`` of them. That keeps a swap of a million-row view to reading its
vectors and re-indexing what changed, without long pauses for the threads answering calls.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2grl.rpc import metrics
from m2grl.rpc.idtable import new_id_table
from m2grl.rpc.index import VectorIndex, unit_rows
from m2grl.settings import RpcSettings
from m2grl.train import snapshots
from m2grl.train.snapshots import Manifest

log = logging.getLogger(__name__)

HISTORY = 1000


CHUNK_ROWS = 65536  # checks of a new version go this many rows at a time: see _chunks


def _chunks(vectors: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) blocks. Whole-matrix temporaries (64 MB at a million rows) were mapped,
    faulted in and unmapped by the kernel at each swap; blocks keep a swap's transient memory at a
    few megabytes (and the one 0.43 s stall of an answering call seen during swaps has not recurred)."""
    for start in range(0, len(vectors), CHUNK_ROWS):
        yield start, vectors[start:start + CHUNK_ROWS]


def _changed_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Rows of ``before`` whose vector differs in ``after`` (which may have more rows)."""
    found = [start + np.flatnonzero((chunk != after[start:start + len(chunk)]).any(axis=1))
             for start, chunk in _chunks(before)]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


class IdColumn:
    """A view's external ids in row order, as far as any version read so far has them, and the
    table that finds their rows (rpc/csrc/id_table.cpp: with a dict, looking up a call's 100 ids
    among a million was most of GetEmbeddings' time, spent waiting on memory)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.table = new_id_table()
        self.bytes_read = 0  # how far into the ids file those ids reach

    def extend(self, folder: Path, view: str) -> None:
        fresh, bytes_read = snapshots.read_ids(folder, view, offset=self.bytes_read)
        self.table.add(fresh)  # refuses (ValueError, nothing added) an id it has, or one listed twice
        self.ids.extend(fresh)
        self.bytes_read = bytes_read


@dataclass(frozen=True)
class ServedView:
    name: str
    column: IdColumn
    vectors: np.ndarray  # float32 rows × dim, as published
    norms: np.ndarray
    index: VectorIndex

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
        return memoryview(self.vectors.astype("<f4", copy=False)).cast("B")

    def unit(self, rows: np.ndarray | list[int] | int) -> np.ndarray:
        """Unit-length vectors of ``rows``: what the index compares."""
        return self.vectors[rows] / np.maximum(self.norms[rows], 1e-12)[..., None]

    def id(self, row: int) -> str:
        return self.column.ids[row]


@dataclass(frozen=True)
class Members:
    """Item rows → value rows of one side view, and the reverse: the items of each value."""

    of_item: np.ndarray
    order: np.ndarray  # item rows sorted by value
    starts: np.ndarray  # items of value v: order[starts[v]:starts[v + 1]]

    @classmethod
    def of(cls, of_item: np.ndarray, values: int) -> Members:
        order = np.argsort(of_item, kind="stable")
        starts = np.searchsorted(of_item[order], np.arange(values + 1))
        return cls(of_item, order, starts)

    def items(self, value: int) -> np.ndarray:
        return self.order[self.starts[value]:self.starts[value + 1]]


@dataclass(frozen=True)
class ServedVersion:
    manifest: Manifest
    views: dict[str, ServedView]
    members: dict[str, Members]
    # Ids new per view since the version served before this one.
    ids_added: dict[str, int]

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


class LiveSnapshots:
    def __init__(self, root: Path, cfg: RpcSettings) -> None:
        self.root = root
        self.cfg = cfg
        self._current: ServedVersion | None = None
        self._columns: dict[str, IdColumn] = {}
        self._changed = threading.Condition()
        self._history: list[WentLive] = []
        self.refused: dict[int, str] = {}  # version -> why

    @property
    def current(self) -> ServedVersion | None:
        return self._current

    def refresh(self) -> bool:
        """Serve the newest published version if it is new and sound; True when one went live.
        Called from one thread only (the server's poller)."""
        version = snapshots.current_version(self.root)
        served = self._current
        if version is None or version in self.refused or (served is not None and version <= served.version):
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
                             WentLive(version, fresh.manifest.created_ms, fresh.ids_added)]
            self._changed.notify_all()
        metrics.LIVE_VERSION.set(version)
        log.info("serving snapshot version %d (%s)", version,
                 ", ".join(f"{view.name}: {view.rows:,}" for view in fresh.views.values()))
        return True

    def went_live_after(self, version: int, timeout: float) -> list[WentLive]:
        """The versions that went live after ``version``, oldest first, waiting up to ``timeout``
        seconds for one (empty then)."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._history) and self._history[-1].version > version, timeout)
            return [event for event in self._history if event.version > version]

    def _load(self, version: int, served: ServedVersion | None) -> ServedVersion:
        folder = snapshots.version_dir(self.root, version)
        manifest = snapshots.read_manifest(folder)
        views = {name: self._load_view(folder, manifest, name, served.views.get(name) if served else None)
                 for name in manifest.views}
        members = {side: Members.of(snapshots.read_members(folder, manifest, side), manifest.rows[side])
                   for side in manifest.members}
        added = {name: view.rows - (served.views[name].rows if served and name in served.views else 0)
                 for name, view in views.items()}
        return ServedVersion(manifest, views, members, added)

    def _load_view(self, folder: Path, manifest: Manifest, name: str, before: ServedView | None) -> ServedView:
        vectors = snapshots.read_vectors(folder, manifest, name)
        if not all(np.isfinite(chunk).all() for _, chunk in _chunks(vectors)):
            raise ValueError(f"{name} vectors hold NaN or infinite values")
        column = self._column(folder, manifest, name)
        index = None
        if before is not None and before.dim == manifest.dim and before.column is column and before.rows <= len(vectors):
            # Patch what changed: an incremental round moves a small share of the rows.
            changed = _changed_rows(before.vectors, vectors)
            fresh = np.concatenate([changed, np.arange(before.rows, len(vectors))])
            norms = np.concatenate([before.norms, np.empty(len(vectors) - before.rows, dtype=np.float32)])
            norms[fresh] = np.linalg.norm(vectors[fresh], axis=1)
            index = before.index.updated(len(vectors), changed, unit_rows(vectors[fresh]), self.cfg)
        if index is None:
            norms = np.linalg.norm(vectors, axis=1)
            index = VectorIndex.build(unit_rows(vectors), self.cfg)
        view = ServedView(name, column, vectors, norms, index)
        view.gather([])  # the byte view is made here, not by the first call
        return view

    def _column(self, folder: Path, manifest: Manifest, name: str) -> IdColumn:
        """The view's shared ids extended to this version; a new column if the file was rewritten
        (training restarted from an empty snapshot folder)."""
        column = self._columns.setdefault(name, IdColumn())
        try:
            if len(column.ids) < manifest.rows[name]:
                column.extend(folder, name)
        except ValueError:
            log.warning("%s ids of snapshot %d do not extend the served ones: reading them afresh",
                        name, manifest.version)
            column = self._columns[name] = IdColumn()
            column.extend(folder, name)
        if len(column.ids) != manifest.rows[name]:
            raise ValueError(f"{len(column.ids)} {name} ids, manifest says {manifest.rows[name]}")
        return column
