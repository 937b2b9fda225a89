"""Versioned snapshots: a version is a base plus the deltas since, published atomically, so a
round writes what it changed and a reader never sees a half-written version.

Layout (format 3):

    <snapshot_dir>/
      CURRENT                  the live version's name ("v000042"), replaced atomically
      versions/v000042.json    a version's manifest: rows, watermarks, losses, and its chain: the
                               segments that make it, a base first, then deltas in publishing order
      segments/b000040/        a base: every row of every view as of version 40
      segments/d000041/        a delta: only the rows version 41 changed or appended
      .lock                    held (flock) while a segment goes live, a chain is rewritten or
                               anything is deleted
      pins/<version>-<id>.json a reader's lease on the segments of a version it is loading: retention
                               keeps them until the pin is removed or older than PIN_LEASE_S

A segment folder (immutable once renamed into place):

    segment.json               SegmentInfo: its version, rows before and after per view, counts
    <view>.ids.jsonl           the ids of the rows it appends, one JSON string per line: rows are
                               append-only, so a version's ids are its chain's files end to end
    <view>.rows.npy            int64, ascending: the rows it holds (a delta; a base holds them all)
    <view>.vectors.npy         float32 (rows held, dim): the input vectors U, what serving uses
    <view>.state_rows.npy      int64, ascending: the rows whose trainer state it holds (a delta), ...
    <view>.contexts.npy        ... float32 (k, dim), their context vectors, and
    <view>.squares.npy         float32 (k, 2), both tables' Adagrad accumulators: where the segment
                               carries the model. Not the rows of the vectors: a step moves the
                               context rows of its negatives but not their input vectors, and rows
                               the cold-start lane appended have vectors but no table rows yet
    <side>.members.npy         int64: the side-view value row of items (-1: none) ...
    <side>.members.rows.npy    ... of these item rows (a delta; a base holds every item's)
    model.pt                   the dense parameters, shape and watermarks (torch), where carried

Publishing writes a segment into a hidden folder, fsyncs it, and then, under the lock, renames it
into place, writes the version's manifest and points CURRENT at it. Compaction folds a chain into a
new base for the same version, off to the side, and swaps it into the chains of the versions that
use it under the lock. Retention keeps the newest ``keep`` versions and every segment one of them
needs; nothing else. A kill at any point leaves the last complete version current; what it left
half-written is hidden, and deleted by a later prune.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

from m2grl.errors import SnapshotError
from m2grl.views import VIEW_NAME

FORMAT_VERSION = 3
CURRENT = "CURRENT"
VERSIONS = "versions"
SEGMENTS = "segments"
LOCK = ".lock"
STALE_STAGING_S = 3600  # a hidden folder this old is a crashed writer's, never a live one's
PINS = "pins"
PIN_LEASE_S = 1800.0  # a pin this old is a crashed reader's: a load takes seconds to a minute
FOLD_BLOCK_ROWS = 65536


@dataclass(frozen=True)
class Manifest:
    version: int
    created_ms: int
    watermark_ms: dict[str, int]
    views: list[str]
    dim: int
    rows: dict[str, int]
    losses: dict[str, float]
    sigma2: dict[str, float]
    new_ids: dict[str, int] = field(default_factory=dict)
    # Rows the version's own segment rewrote per view, beside the new_ids it appended.
    changed: dict[str, int] = field(default_factory=dict)
    # Side views whose item memberships the snapshot holds.
    sides: list[str] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)  # set by publish
    # Set by publish: shared by every version whose rows extend the one before (a reader keeps its ids).
    lineage: str = ""
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"snapshot format {data.get('format_version')} is not {FORMAT_VERSION}")
        manifest = cls(**data)
        _check_names("manifest", [*manifest.views, *manifest.sides, *manifest.rows], manifest.chain)
        return manifest

    @property
    def segment(self) -> str:
        """The version's own segment: the last of its chain."""
        return self.chain[-1]


@dataclass(frozen=True)
class SegmentInfo:
    """What segment.json says of a segment."""

    name: str
    version: int
    base: bool
    dim: int
    first: dict[str, int]  # per view: the rows before it, where its ids start (0 in a base)
    rows: dict[str, int]  # per view: the rows after it
    held: dict[str, int]  # per view: the rows it holds vectors of
    state: dict[str, int]  # per view: the rows it holds the trainer's state of
    table_rows: dict[str, int] | None  # the model's table rows per view, where it carries the model
    members: dict[str, int]  # per side view: the memberships it holds

    @classmethod
    def read(cls, folder: Path) -> SegmentInfo:
        info = cls(**json.loads((folder / "segment.json").read_text()))
        _check_names(f"segment {folder.name}", [*info.rows, *info.held, *info.state, *info.members,
                                                 *(info.table_rows or {})], [info.name])
        return info


SEGMENT_NAME = re.compile(r"^[bd][0-9]{6,}$")


def _check_names(what: str, views: list[str], segments: list[str]) -> None:
    """Names a snapshot's files and folders are made of: view names as views.py allows them, and
    segment names as ``segment_name`` makes them. A manifest naming ``../x`` is refused, not read."""
    bad = [name for name in views if not isinstance(name, str) or not VIEW_NAME.match(name)]
    bad += [name for name in segments if not isinstance(name, str) or not SEGMENT_NAME.match(name)]
    if bad:
        raise ValueError(f"{what} names {bad!r}, which are no view or segment names")


@dataclass
class ViewChange:
    """One view's part of a segment: the ids it appends (rows ``first``.. on), the vectors of
    ``rows`` (ascending; None: every row, a base) and, where the segment carries the model, the
    context vectors and the (input, context) Adagrad accumulators of ``state_rows`` (ascending;
    None in a base: the first len(contexts) rows)."""

    ids: list[str]
    vectors: NDArray[np.float32]
    rows: NDArray[np.int64] | None = None
    contexts: NDArray[np.float32] | None = None
    squares: NDArray[np.float32] | None = None
    state_rows: NDArray[np.int64] | None = None


@dataclass
class MembershipChange:
    """One side view's memberships in a segment: the value row (-1: none) of ``items`` (None: of
    every item, a base)."""

    values: NDArray[np.int64]
    items: NDArray[np.int64] | None = None


@dataclass
class Segment:
    """What one publish writes. ``model``: the dense parameters, shape and watermarks (torch-saved)
    and ``table_rows`` the model's table rows per view, where the segment carries the model."""

    views: dict[str, ViewChange]
    memberships: dict[str, MembershipChange] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    table_rows: dict[str, int] | None = None

    @property
    def base(self) -> bool:
        return all(change.rows is None for change in self.views.values())


# -- file system ---------------------------------------------------------------------------------


def _name(version: int) -> str:
    return f"v{version:06d}"


def segment_name(version: int, *, base: bool) -> str:
    return f"{'b' if base else 'd'}{version:06d}"


def segment_version(name: str) -> int:
    """The version whose state a segment completes (b000040 and d000040: version 40)."""
    return int(name[1:])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    with path.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _save(path: Path, array: NDArray[Any], dtype: type) -> None:
    _write_file(path, lambda fh: np.save(fh, np.ascontiguousarray(array, dtype=dtype)))


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one."""
    staged = path.with_name(f".{path.name}.tmp")
    _write_file(staged, lambda fh: fh.write(data))
    staged.replace(path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """The snapshot folder's lock: one publish, compaction commit or prune at a time, across
    threads and processes (each holder opens the file itself, so flock excludes them all)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _staging(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def current_version(root: Path) -> int | None:
    try:
        return int((root / CURRENT).read_text().strip().lstrip("v"))
    except (FileNotFoundError, ValueError):
        return None


def manifest_path(root: Path, version: int) -> Path:
    return root / VERSIONS / f"{_name(version)}.json"


def segment_dir(root: Path, name: str) -> Path:
    return root / SEGMENTS / name


def read_manifest(root: Path, version: int) -> Manifest:
    return Manifest.from_json(manifest_path(root, version).read_text())


def read_current(root: Path) -> Manifest | None:
    """The current version's manifest, or None before a first publish."""
    version = current_version(root)
    return None if version is None else read_manifest(root, version)


def segment_infos(root: Path, manifest: Manifest) -> list[SegmentInfo]:
    return [SegmentInfo.read(segment_dir(root, name)) for name in manifest.chain]


def published_versions(root: Path) -> list[int]:
    folder = root / VERSIONS
    if not folder.exists():
        return []
    return sorted(int(path.stem.lstrip("v")) for path in folder.glob("v*.json"))


# -- publishing ----------------------------------------------------------------------------------


def publish(root: Path, manifest: Manifest, segment: Segment, *, keep: int) -> Manifest:
    """Write ``segment`` and make ``manifest``'s version current, atomically; returns the manifest
    as published (its chain and lineage set). A base starts a chain; a delta extends the current
    version's and must hold every row appended since it, and ``manifest.rows`` must count them."""
    previous = read_current(root)
    if not segment.base and previous is None:
        raise ValueError("a delta needs a version to extend; publish a base first")
    first = {view: 0 if segment.base else previous.rows.get(view, 0)  # type: ignore[union-attr]
             for view in segment.views}
    name = segment_name(manifest.version, base=segment.base)
    try:
        staging = _staging(root / SEGMENTS, name)
    except OSError as exc:
        raise SnapshotError(f"snapshot version {manifest.version} not written to {root}: {exc}") from exc
    try:
        info = _write_segment(staging, name, manifest, segment, first)
        with _locked(root):
            latest = read_current(root)  # a compaction may have rewritten its chain meanwhile
            if not segment.base and (latest is None or latest.version != previous.version  # type: ignore[union-attr]
                                     or latest.rows != previous.rows):  # type: ignore[union-attr]
                raise ValueError("the current version changed while a delta on it was written")
            chain = [name] if segment.base or latest is None else [*latest.chain, name]
            lineage = (latest.lineage if latest is not None and (not segment.base or _extends(latest, info))
                       else uuid.uuid4().hex)
            published = replace(manifest, chain=chain, lineage=lineage,
                                new_ids={v: info.rows[v] - info.first[v] for v in info.rows} if not segment.base
                                else manifest.new_ids)
            _go_live(root, staging, name, published)
            _prune_locked(root, keep)
    except OSError as exc:  # a full disk above all: what was written goes, the last version stays current
        raise SnapshotError(f"snapshot version {manifest.version} not written to {root}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already where it went live
    return published


def _extends(previous: Manifest, info: SegmentInfo) -> bool:
    """Whether a base can belong to the lineage of ``previous``: it has at least its rows (the
    trainer never re-indexes an id; a new lineage tells readers to read ids afresh)."""
    return all(info.rows.get(view, 0) >= rows for view, rows in previous.rows.items())


def _go_live(root: Path, staging: Path, name: str, manifest: Manifest) -> None:
    """Rename a staged segment into place, write its version's manifest, point CURRENT at it.
    Called with the lock held."""
    final = segment_dir(root, name)
    if final.exists():
        shutil.rmtree(final)  # a crashed publish of the same version, never current
    staging.rename(final)
    _fsync_dir(final.parent)
    (root / VERSIONS).mkdir(exist_ok=True)
    _replace_file(manifest_path(root, manifest.version), json.dumps(asdict(manifest), indent=1).encode())
    _replace_file(root / CURRENT, _name(manifest.version).encode())


def _write_segment(folder: Path, name: str, manifest: Manifest, segment: Segment,
                   first: dict[str, int]) -> SegmentInfo:
    held, state = {}, {}
    for view, change in segment.views.items():
        rows = manifest.rows[view]
        expected = rows if change.rows is None else len(change.rows)
        if change.vectors.shape != (expected, manifest.dim) or first[view] + len(change.ids) != rows:
            raise ValueError(f"{view}: {len(change.ids)} ids after row {first[view]} and vectors "
                             f"{change.vectors.shape} do not make {rows} rows of dim {manifest.dim}")
        if change.rows is not None:
            appended = change.rows[change.rows >= first[view]]
            if not np.array_equal(appended, np.arange(first[view], rows)) or np.any(np.diff(change.rows) <= 0):
                raise ValueError(f"{view}: a delta's rows must ascend and hold every appended row")
            _save(folder / f"{view}.rows.npy", change.rows, np.int64)
        _save(folder / f"{view}.vectors.npy", change.vectors, np.float32)
        _write_file(folder / f"{view}.ids.jsonl", lambda fh, ids=change.ids: fh.write(encode_ids(ids)))  # type: ignore[misc]
        held[view] = expected
        state[view] = 0
        if change.contexts is not None and change.squares is not None:
            if (change.rows is None) != (change.state_rows is None) or (
                    change.state_rows is not None and len(change.state_rows) != len(change.contexts)):
                raise ValueError(f"{view}: a delta's state needs its rows, a base's none")
            if change.state_rows is not None:
                _save(folder / f"{view}.state_rows.npy", change.state_rows, np.int64)
            _save(folder / f"{view}.contexts.npy", change.contexts, np.float32)
            _save(folder / f"{view}.squares.npy", change.squares, np.float32)
            state[view] = len(change.contexts)
    members = {}
    for side, membership in segment.memberships.items():
        _save(folder / f"{side}.members.npy", membership.values, np.int64)
        if membership.items is not None:
            _save(folder / f"{side}.members.rows.npy", membership.items, np.int64)
        members[side] = len(membership.values)
    if segment.model is not None:
        import torch  # only the trainer's state needs torch; readers of snapshots do not

        _write_file(folder / "model.pt", lambda fh: torch.save(segment.model, fh))
    info = SegmentInfo(name=name, version=manifest.version, base=segment.base, dim=manifest.dim, first=first,
                       rows={view: manifest.rows[view] for view in segment.views}, held=held, state=state,
                       table_rows=segment.table_rows if segment.model is not None else None, members=members)
    _write_file(folder / "segment.json", lambda fh: fh.write(json.dumps(asdict(info), indent=1).encode()))
    _fsync_dir(folder)
    return info


def publish_base(root: Path, manifest: Manifest, vectors: dict[str, NDArray[Any]], ids: dict[str, list[str]], *,
                 keep: int, members: dict[str, NDArray[Any]] | None = None) -> Manifest:
    """A version that is a base of whole tables without a model: for tools and tests."""
    segment = Segment({view: ViewChange(ids[view], np.asarray(matrix, dtype=np.float32))
                       for view, matrix in vectors.items()},
                      {side: MembershipChange(np.asarray(rows, dtype=np.int64))
                       for side, rows in (members or {}).items()})
    return publish(root, manifest, segment, keep=keep)


def adopt(root: Path, source: Path, version: int, *, keep: int) -> Manifest:
    """Make a version published under another root (on the same file system) current in ``root``,
    by renaming its segments in: publishing without writing, for versions written ahead. Its
    chain's segments that ``root`` already has are taken to be the same."""
    manifest = read_manifest(source, version)
    with _locked(root):
        latest = read_current(root)
        infos = segment_infos(source, manifest)
        if latest is not None and _extends(latest, infos[-1]):
            manifest = replace(manifest, lineage=latest.lineage)
        for name in manifest.chain:
            if not segment_dir(root, name).exists():
                staged = _staging(root / SEGMENTS, name)
                staged.rmdir()
                segment_dir(source, name).rename(staged)
                staged.rename(segment_dir(root, name))
        _fsync_dir(root / SEGMENTS)
        (root / VERSIONS).mkdir(exist_ok=True)
        _replace_file(manifest_path(root, version), json.dumps(asdict(manifest), indent=1).encode())
        _replace_file(root / CURRENT, _name(version).encode())
        _prune_locked(root, keep)
    return manifest


def make_current(root: Path, version: int) -> Manifest:
    """Point CURRENT at a published ``version`` (a rollback, or forward again), once every segment of
    its chain is there; servers follow it with a warning. ValueError when it cannot be served."""
    with _locked(root):
        try:
            manifest = read_manifest(root, version)
        except FileNotFoundError:
            kept = ", ".join(str(v) for v in published_versions(root)) or "none"
            raise ValueError(f"version {version} is not in {root} (versions kept: {kept})") from None
        missing = [name for name in manifest.chain if not (segment_dir(root, name) / "segment.json").exists()]
        if missing:
            raise ValueError(f"version {version} lacks segments {', '.join(missing)}")
        _replace_file(root / CURRENT, _name(version).encode())
    return manifest


# -- pins ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(root: Path, version: int) -> Iterator[Manifest]:
    """``version``'s manifest, its segments kept from retention and compaction until the block ends,
    so that a reader loading it never finds them deleted halfway. FileNotFoundError when the version
    is gone already. Where the folder is read-only to this process, the version is read unpinned."""
    pin: Path | None = None
    try:
        with _locked(root):
            manifest = read_manifest(root, version)
            pin = root / PINS / f"{_name(version)}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
            pin.parent.mkdir(exist_ok=True)
            pin.write_text(json.dumps(manifest.chain))  # no fsync: after a crash no reader needs it
    except OSError as exc:
        # Read-only to this process, or full: no pin, as before pins (a server must not refuse a
        # version because it cannot write beside it).
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        manifest = read_manifest(root, version)
    try:
        yield manifest
    finally:
        if pin is not None:
            pin.unlink(missing_ok=True)


def _pinned_segments(root: Path) -> set[str]:
    """The segments live pins hold; deletes the pins of readers that crashed."""
    held: set[str] = set()
    folder = root / PINS
    if not folder.exists():
        return held
    for pin in folder.glob("*.json"):
        try:
            if time.time() - pin.stat().st_mtime > PIN_LEASE_S:
                pin.unlink(missing_ok=True)
            else:
                held.update(json.loads(pin.read_text()))
        except (OSError, ValueError):  # removed by its reader meanwhile, or half-written by a crash
            continue
    return held


# -- retention -----------------------------------------------------------------------------------


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` versions (never the current one), every segment none of
    those needs and no reader has pinned, and what crashed writers left."""
    with _locked(root):
        _prune_locked(root, keep)


def _prune_locked(root: Path, keep: int) -> None:
    live = current_version(root)
    versions = published_versions(root)
    kept = set(versions[-keep:]) | ({live} if live is not None else set())
    needed = _pinned_segments(root)
    for version in versions:
        if version in kept:
            try:
                needed.update(read_manifest(root, version).chain)
            except (OSError, ValueError):  # unreadable: nothing of it can be served
                kept.discard(version)
    for version in versions:
        if version not in kept:
            manifest_path(root, version).unlink(missing_ok=True)
    segments = root / SEGMENTS
    if segments.exists():
        for path in segments.iterdir():
            if path.name.startswith(".tmp-"):
                if time.time() - path.stat().st_mtime > STALE_STAGING_S:
                    shutil.rmtree(path, ignore_errors=True)
            elif path.name not in needed:
                shutil.rmtree(path, ignore_errors=True)


# -- compaction ----------------------------------------------------------------------------------


def segment_bytes(root: Path, name: str) -> int:
    return sum(path.stat().st_size for path in segment_dir(root, name).iterdir())


def delta_share(root: Path, manifest: Manifest) -> tuple[float, int]:
    """The bytes of a version's deltas as a share of its base's, and how many deltas it has."""
    sizes = [segment_bytes(root, name) for name in manifest.chain]
    return sum(sizes[1:]) / max(sizes[0], 1), len(sizes) - 1


def compact(root: Path, version: int, *, keep: int) -> str | None:
    """Fold ``version``'s chain into a new base for the same version, and put that base in place
    of the chain in every version that extends it; its name, or None where the chain is a base
    already. Reads and writes block by block; readers and publishers go on meanwhile."""
    manifest = read_manifest(root, version)
    if len(manifest.chain) == 1:
        return None
    name = segment_name(version, base=True)
    staging = _staging(root / SEGMENTS, name)
    try:
        _write_folded(root, manifest, staging, name)
        with _locked(root):
            final = segment_dir(root, name)
            if final.exists():
                shutil.rmtree(final)  # a crashed compaction's, which no chain names
            staging.rename(final)
            _fsync_dir(final.parent)
            for other in published_versions(root):
                chain = read_manifest(root, other).chain
                if manifest.segment in chain:
                    rest = chain[chain.index(manifest.segment) + 1:]
                    rewritten = replace(read_manifest(root, other), chain=[name, *rest])
                    _replace_file(manifest_path(root, other), json.dumps(asdict(rewritten), indent=1).encode())
            _prune_locked(root, keep)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return name


def _write_folded(root: Path, manifest: Manifest, folder: Path, name: str) -> None:
    infos = segment_infos(root, manifest)
    carrier = next((info for info in reversed(infos) if info.table_rows is not None), None)
    state = {}
    for view in manifest.views:
        rows = manifest.rows[view]
        with (folder / f"{view}.ids.jsonl").open("wb") as out:
            for info in infos:
                if info.rows.get(view, 0) > info.first.get(view, 0):
                    with (segment_dir(root, info.name) / f"{view}.ids.jsonl").open("rb") as source:
                        shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        _write_blocks(folder / f"{view}.vectors.npy", (rows, manifest.dim),
                      fold_blocks(root, infos, view, "vectors", rows, manifest.dim))
        table_rows = carrier.table_rows.get(view, 0) if carrier is not None and carrier.table_rows else 0
        state[view] = table_rows
        if table_rows:
            _write_blocks(folder / f"{view}.contexts.npy", (table_rows, manifest.dim),
                          fold_blocks(root, infos, view, "contexts", table_rows, manifest.dim))
            _write_blocks(folder / f"{view}.squares.npy", (table_rows, 2),
                          fold_blocks(root, infos, view, "squares", table_rows, 2))
    for side in manifest.sides:
        _save(folder / f"{side}.members.npy", read_members(root, manifest, side, infos), np.int64)
    if carrier is not None:
        shutil.copyfile(segment_dir(root, carrier.name) / "model.pt", folder / "model.pt")
    info = SegmentInfo(name=name, version=manifest.version, base=True, dim=manifest.dim,
                       first={view: 0 for view in manifest.views}, rows=dict(manifest.rows),
                       held=dict(manifest.rows), state=state,
                       table_rows=carrier.table_rows if carrier is not None else None,
                       members={side: manifest.rows[manifest.views[0]] for side in manifest.sides})
    _write_file(folder / "segment.json", lambda fh: fh.write(json.dumps(asdict(info), indent=1).encode()))
    if carrier is not None:
        with (folder / "model.pt").open("rb+") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _write_blocks(path: Path, shape: tuple[int, int], blocks: Iterator[tuple[int, NDArray[np.float32]]]) -> None:
    with path.open("wb") as fh:
        _write_header(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
        for _, block in blocks:
            fh.write(block.tobytes())
        fh.flush()
        os.fsync(fh.fileno())


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    manifest: Manifest
    ids: dict[str, list[str]]
    vectors: dict[str, NDArray[np.float32]]
    members: dict[str, NDArray[np.int64]] = field(default_factory=dict)


def encode_ids(ids: list[str]) -> bytes:
    return "".join(json.dumps(ext) + "\n" for ext in ids).encode()


def read_ids(root: Path, manifest: Manifest, view: str, start: int = 0,
             infos: list[SegmentInfo] | None = None) -> list[str]:
    """The ids of ``view``'s rows from ``start`` on (a reader that holds the first ones of this
    lineage reads only the segments past them)."""
    ids: list[str] = []
    for info in infos if infos is not None else segment_infos(root, manifest):
        first, rows = info.first.get(view, 0), info.rows.get(view, 0)
        if rows <= start or rows <= first:
            continue
        with (segment_dir(root, info.name) / f"{view}.ids.jsonl").open("rb") as fh:
            lines = fh.read().splitlines()
        if len(lines) != rows - first:
            raise ValueError(f"snapshot {info.name}: {len(lines)} {view} ids, its segment says {rows - first}")
        # One parse of all lines as a JSON array: a loads() per line was 14 s of a server's 25 s
        # first load at 1 M ids.
        ids.extend(json.loads(b"[" + b",".join(lines[max(0, start - first):]) + b"]"))
    if start + len(ids) != manifest.rows[view]:
        raise ValueError(f"snapshot {manifest.version}: {start + len(ids)} {view} ids, manifest says "
                         f"{manifest.rows[view]}")
    return ids


class _NpyRows:
    """Rows of a .npy file, read by seeking: neither mapped nor loaded whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as fh:
            version = _read_magic(fh)
            header = _NPY_HEADERS.get(version)
            if header is None:
                raise ValueError(f"{path}: .npy format {version}, not 1.0 or 2.0")
            shape, fortran_order, dtype = header(fh)
            self.offset = fh.tell()
        if fortran_order or len(shape) not in (1, 2):
            raise ValueError(f"{path}: {'column-major ' if fortran_order else ''}shape {shape}")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, lo: int, hi: int) -> NDArray[Any]:
        out = np.empty((hi - lo, *self.shape[1:]), dtype=self.dtype)
        with self.path.open("rb") as fh:
            fh.seek(self.offset + lo * self.row_bytes)
            if fh.readinto(out.data.cast("B")) != out.nbytes:
                raise EOFError(f"{self.path}: ends before row {hi} of {len(self)}")
        return out


# numpy's stubs (lib/format.pyi) leave these untyped; typed here as numpy documents them.
_read_magic: Callable[[BinaryIO], tuple[int, int]] = np.lib.format.read_magic
_write_header: Callable[[BinaryIO, dict[str, Any]], None] = np.lib.format.write_array_header_1_0
_NPY_HEADERS: dict[tuple[int, int], Callable[[BinaryIO], tuple[tuple[int, ...], bool, np.dtype[Any]]]] = {
    (1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

_PARTS: dict[str, tuple[str, int | None]] = {  # part -> (dtype, width; None: the dimension)
    "vectors": ("<f4", None), "contexts": ("<f4", None), "squares": ("<f4", 2)}


def _sources(root: Path, infos: list[SegmentInfo], view: str,
             part: str) -> list[tuple[NDArray[np.int64] | None, _NpyRows]]:
    """Per segment holding ``part`` of ``view``: its rows (None: 0.. in order) and the file."""
    found = []
    for info in infos:
        count = info.held.get(view, 0) if part == "vectors" else info.state.get(view, 0)
        if not count:
            continue
        folder = segment_dir(root, info.name)
        listing = "rows" if part == "vectors" else "state_rows"
        rows = None if info.base else np.load(folder / f"{view}.{listing}.npy")
        data = _NpyRows(folder / f"{view}.{part}.npy")
        dtype, width = _PARTS[part]
        if (len(data) != count or (rows is not None and len(rows) != count) or data.dtype != np.dtype(dtype)
                or data.shape[1:] != (width or info.dim,)):
            raise ValueError(f"snapshot {info.name}: {view} {part} are {data.dtype} {data.shape}, "
                             f"its segment says {count} rows")
        found.append((rows, data))
    return found


def fold_blocks(root: Path, infos: list[SegmentInfo], view: str, part: str, rows: int, width: int,
                rows_per_block: int = FOLD_BLOCK_ROWS) -> Iterator[tuple[int, NDArray[np.float32]]]:
    """``part`` (vectors, contexts or squares) of ``view``'s first ``rows`` rows as the chain
    ``infos`` makes them, later segments over earlier ones, as (first row, block of rows) in one
    buffer that each block reuses (copy what you keep): a reader never holds the chain twice."""
    sources = _sources(root, infos, view, part)
    buffer = np.empty((max(1, min(rows_per_block, rows)), width), dtype=np.float32)
    covered = np.empty(len(buffer), dtype=bool)
    for start in range(0, rows, len(buffer)):
        stop = min(start + len(buffer), rows)
        block, seen = buffer[:stop - start], covered[:stop - start]
        seen[:] = False
        for held, data in sources:
            if held is None:
                hi = min(stop, len(data))
                if hi > start:
                    block[:hi - start] = data.read(start, hi)
                    seen[:hi - start] = True
            else:
                lo, hi = np.searchsorted(held, (start, stop))
                if hi > lo:
                    block[held[lo:hi] - start] = data.read(int(lo), int(hi))
                    seen[held[lo:hi] - start] = True
        if not seen.all():
            raise ValueError(f"snapshot chain {[info.name for info in infos]}: {view} {part} of row "
                             f"{start + int(np.argmin(seen))} are in none of its segments")
        yield start, block


def vector_blocks(root: Path, manifest: Manifest, view: str,
                  rows_per_block: int) -> Iterator[tuple[int, NDArray[np.float32]]]:
    """The version's vectors of ``view``, base and deltas folded, block by block (``fold_blocks``)."""
    return fold_blocks(root, segment_infos(root, manifest), view, "vectors", manifest.rows[view], manifest.dim,
                       rows_per_block)


def delta_infos(root: Path, names: list[str]) -> list[SegmentInfo]:
    """What the deltas ``names`` say of themselves; ValueError if one is a base."""
    infos = [SegmentInfo.read(segment_dir(root, name)) for name in names]
    bases = [info.name for info in infos if info.base]
    if bases:
        raise ValueError(f"{', '.join(bases)}: a base, not a delta")
    return infos


def read_changes(root: Path, infos: list[SegmentInfo], view: str) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """The rows of ``view`` that the deltas ``infos`` (``delta_infos``) changed or appended (ascending, each once)
    and their vectors, later deltas over earlier ones: what moves a reader from the version before
    the first of them to the version of the last."""
    rows_parts, vector_parts = [], []
    dim = 0
    for info in infos:
        dim = info.dim
        for held, data in _sources(root, [info], view, "vectors"):
            assert held is not None
            rows_parts.append(held)
            vector_parts.append(data.read(0, len(data)))
    if not rows_parts:
        return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
    rows, vectors = np.concatenate(rows_parts), np.concatenate(vector_parts)
    # Last write wins: unique over the reversed order keeps each row's latest vector.
    unique, last = np.unique(rows[::-1], return_index=True)
    return unique, vectors[::-1][last]


def read_member_changes(root: Path, infos: list[SegmentInfo],
                        side: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The items whose membership in ``side`` the deltas ``infos`` (``delta_infos``) set (ascending, each once) and
    their value rows, later deltas over earlier ones."""
    items_parts, value_parts = [], []
    for info in infos:
        if side in info.members:
            folder = segment_dir(root, info.name)
            items_parts.append(np.load(folder / f"{side}.members.rows.npy"))
            value_parts.append(np.load(folder / f"{side}.members.npy"))
            if len(items_parts[-1]) != len(value_parts[-1]):
                raise ValueError(f"snapshot {info.name}: {side} memberships and their items differ in length")
    if not items_parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    items, values = np.concatenate(items_parts)[::-1], np.concatenate(value_parts)[::-1]
    unique, last = np.unique(items, return_index=True)
    return unique, values[last]


def read_members(root: Path, manifest: Manifest, side: str,
                 infos: list[SegmentInfo] | None = None) -> NDArray[np.int64]:
    """Each item's value row in side view ``side`` (-1: none), base and deltas folded."""
    items = manifest.rows[manifest.views[0]]
    out = np.full(items, -1, dtype=np.int64)
    for info in infos if infos is not None else segment_infos(root, manifest):
        if side not in info.members:
            continue
        folder = segment_dir(root, info.name)
        values = np.load(folder / f"{side}.members.npy")
        where = np.arange(len(values)) if info.base else np.load(folder / f"{side}.members.rows.npy")
        if len(where) != len(values) or (len(where) and where.max() >= items):
            raise ValueError(f"snapshot {info.name}: {side} memberships do not fit {items} items")
        out[where] = values
    if items and not -1 <= out.min() <= out.max() < manifest.rows[side]:
        raise ValueError(f"snapshot {manifest.version}: {side} memberships do not fit {manifest.rows[side]} values")
    return out


def _gather(blocks: Iterator[tuple[int, NDArray[np.float32]]], shape: tuple[int, int], *, rank: int = 0,
            ranks: int = 1) -> NDArray[np.float32]:
    """The rows of ``blocks`` (``shape`` in all), or with several ``ranks`` only those r with
    r mod ranks = rank, in order: one rank's shard of a sharded trainer's table."""
    if ranks == 1:
        out = np.empty(shape, dtype=np.float32)
        for start, block in blocks:
            out[start:start + len(block)] = block
        return out
    out = np.empty((max(0, (shape[0] - rank + ranks - 1) // ranks), shape[1]), dtype=np.float32)
    for start, block in blocks:
        first = start + (rank - start) % ranks  # this rank's first row in the block
        kept = block[first - start::ranks]
        at = (first - rank) // ranks
        out[at:at + len(kept)] = kept
    return out


def load(root: Path, version: int | None = None) -> Snapshot:
    """The current (or a given) version, fully read and checked."""
    version = current_version(root) if version is None else version
    if version is None:
        raise FileNotFoundError(f"no snapshot published under {root}")
    manifest = read_manifest(root, version)
    infos = segment_infos(root, manifest)
    ids = {view: read_ids(root, manifest, view, infos=infos) for view in manifest.views}
    vectors = {view: _gather(fold_blocks(root, infos, view, "vectors", manifest.rows[view], manifest.dim),
                             (manifest.rows[view], manifest.dim)) for view in manifest.views}
    members = {side: read_members(root, manifest, side, infos) for side in manifest.sides}
    return Snapshot(manifest, ids, vectors, members)


@dataclass(frozen=True)
class Checkpoint:
    """What a trainer resumes from: the current version's manifest and ids, and the model as its
    chain last carried it: the dense part (``model``, torch-loaded) and per view the table rows'
    input vectors, context vectors and (input, context) Adagrad accumulators."""

    manifest: Manifest
    ids: dict[str, list[str]]
    model: dict[str, Any]
    inputs: dict[str, NDArray[np.float32]]
    contexts: dict[str, NDArray[np.float32]]
    squares: dict[str, NDArray[np.float32]]


def load_checkpoint(root: Path, *, rank: int = 0, ranks: int = 1) -> Checkpoint | None:
    """The current version's checkpoint, or None before a first publish (or where no version of
    the chain carries a model). With several ``ranks``, its tables hold only ``rank``'s shard of
    rows (global row r on rank r mod ranks): a checkpoint is written in global rows, whatever
    number of ranks wrote it, so any number can read it."""
    import torch

    manifest = read_current(root)
    if manifest is None:
        return None
    infos = segment_infos(root, manifest)
    carrier = next((info for info in reversed(infos) if info.table_rows is not None), None)
    ids = {view: read_ids(root, manifest, view, infos=infos) for view in manifest.views}
    if carrier is None or carrier.table_rows is None:
        return Checkpoint(manifest, ids, {}, {}, {}, {})
    dim = manifest.dim
    inputs, contexts, squares = {}, {}, {}
    for view, rows in carrier.table_rows.items():
        inputs[view] = _gather(fold_blocks(root, infos, view, "vectors", rows, dim), (rows, dim),
                               rank=rank, ranks=ranks)
        contexts[view] = _gather(fold_blocks(root, infos, view, "contexts", rows, dim), (rows, dim),
                                 rank=rank, ranks=ranks)
        squares[view] = _gather(fold_blocks(root, infos, view, "squares", rows, 2), (rows, 2), rank=rank, ranks=ranks)
    path = segment_dir(root, carrier.name) / "model.pt"
    try:  # tensors, numbers, strings and containers of them only: a pickle in the folder runs no code
        model = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds more than tensors and plain values; refused unread: "
                         f"{str(exc).splitlines()[0]}") from None
    return Checkpoint(manifest, ids, model, inputs, contexts, squares)
