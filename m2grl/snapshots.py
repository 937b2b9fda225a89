"""Versioned snapshots, published atomically: readers never see a half-written one.

Layout (format 2):

    <snapshot_dir>/
      CURRENT                      the live version's name, replaced atomically (write, fsync, rename)
      versions/v000042/            immutable once renamed into place
        manifest.json              version, time, watermark, views, dims, per-task losses and σ²
        <view>.ids.jsonl           external ids, one JSON string per line: line i names row i. Rows
                                   are append-only across versions, so each file extends the last
                                   one's and a reader that has it can read only the new tail
        <view>.vectors.npy         float32 (rows, dim): the input vectors U, what serving uses
        <side>.members.npy         int64 (item rows,): row of each item's value in side view <side>, -1 if none
        checkpoint.pt              model state and trainer state, for warm starts; a version that
                                   only appended new items links its base version's checkpoint

A publish writes everything into a hidden temporary folder, fsyncs it, renames it to its version
name, then points CURRENT at it; versions beyond the newest ``keep`` are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray

FORMAT_VERSION = 2
CURRENT = "CURRENT"
VERSIONS = "versions"


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
    # Side views whose item memberships the snapshot holds (<side>.members.npy).
    members: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"snapshot format {data.get('format_version')} is not {FORMAT_VERSION}")
        return cls(**data)


def _name(version: int) -> str:
    return f"v{version:06d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Any) -> None:
    with path.open("wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def current_version(root: Path) -> int | None:
    try:
        return int((root / CURRENT).read_text().strip().lstrip("v"))
    except (FileNotFoundError, ValueError):
        return None


def version_dir(root: Path, version: int) -> Path:
    return root / VERSIONS / _name(version)


def publish(root: Path, manifest: Manifest, vectors: dict[str, NDArray[Any]], ids: dict[str, list[str]],
            checkpoint: Any, *, keep: int, members: dict[str, NDArray[Any]] | None = None) -> Path:
    """Write a new version and make it current, atomically. Returns its folder. ``members``: per
    side view, the row of each item's value there (-1: none); the manifest must list them."""
    import torch  # only publishing needs torch; readers of snapshots do not

    staging = _staging(root, manifest.version)
    for view, matrix in vectors.items():
        _write_file(staging / f"{view}.vectors.npy", lambda fh, m=matrix: np.save(fh, m.astype(np.float32)))
        _write_file(staging / f"{view}.ids.jsonl", lambda fh, v=view: fh.write(encode_ids(ids[v])))
    for side, rows in (members or {}).items():
        _write_file(staging / f"{side}.members.npy", lambda fh, r=rows: np.save(fh, r.astype(np.int64)))
    _write_file(staging / "checkpoint.pt", lambda fh: torch.save(checkpoint, fh))
    return _make_current(root, staging, manifest, keep)


def publish_appended(root: Path, base: int, manifest: Manifest, view: str, ids: list[str], vectors: NDArray[Any],
                     members: dict[str, NDArray[Any]], *, keep: int) -> Path:
    """Publish version ``base`` with rows appended to ``view``: its ``ids`` and ``vectors`` and, for
    the item view, each new item's value row per side view in ``members``. Every other file is
    hard-linked from ``base``, the checkpoint included (it stays the base's model, whose tables the
    next round grows). This is how new items become servable between training rounds."""
    source = version_dir(root, base)
    staging = _staging(root, manifest.version)
    extended = {f"{view}.vectors.npy", f"{view}.ids.jsonl", *(f"{side}.members.npy" for side in members)}
    for path in source.iterdir():
        if path.name not in extended and path.name != "manifest.json":
            os.link(path, staging / path.name)
    old = np.load(source / f"{view}.vectors.npy", mmap_mode="r")
    _write_file(staging / f"{view}.vectors.npy",
                lambda fh: np.save(fh, np.concatenate([old, vectors.astype(np.float32)])))
    known = (source / f"{view}.ids.jsonl").read_bytes()
    _write_file(staging / f"{view}.ids.jsonl", lambda fh: fh.write(known + encode_ids(ids)))
    for side, rows in members.items():
        before = np.load(source / f"{side}.members.npy")
        _write_file(staging / f"{side}.members.npy",
                    lambda fh, b=before, r=rows: np.save(fh, np.concatenate([b, r.astype(np.int64)])))
    return _make_current(root, staging, manifest, keep)


def adopt(root: Path, folder: Path, *, keep: int) -> Path:
    """Make a complete version folder published under another root (on the same file system)
    current in ``root``, by renaming it in: publishing without writing, for versions written ahead."""
    manifest = read_manifest(folder)
    staging = _staging(root, manifest.version)
    staging.rmdir()
    folder.rename(staging)
    return _make_current(root, staging, manifest, keep)


def _staging(root: Path, version: int) -> Path:
    versions = root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    staging = versions / f".tmp-{_name(version)}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _make_current(root: Path, staging: Path, manifest: Manifest, keep: int) -> Path:
    """Add the manifest, rename the staged folder to its version and point CURRENT at it."""
    versions = root / VERSIONS
    final = versions / _name(manifest.version)
    _write_file(staging / "manifest.json", lambda fh: fh.write(json.dumps(asdict(manifest), indent=2).encode()))
    _fsync_dir(staging)
    if final.exists():
        shutil.rmtree(final)  # a crashed publish of the same version that got as far as the rename
    staging.rename(final)
    _fsync_dir(versions)
    pointer = root / f".{CURRENT}.tmp"
    _write_file(pointer, lambda fh: fh.write(_name(manifest.version).encode()))
    pointer.replace(root / CURRENT)
    _fsync_dir(root)
    prune(root, keep)
    return final


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` versions (never the current one), and crashed publishes."""
    versions = root / VERSIONS
    live = current_version(root)
    names = sorted(p.name for p in versions.iterdir() if p.name.startswith("v"))
    for name in names[:-keep]:
        if name != (_name(live) if live is not None else None):
            shutil.rmtree(versions / name, ignore_errors=True)
    for leftover in versions.glob(".tmp-*"):
        if time.time() - leftover.stat().st_mtime > 3600:  # a crashed publish; never a live one
            shutil.rmtree(leftover, ignore_errors=True)


@dataclass(frozen=True)
class Snapshot:
    manifest: Manifest
    ids: dict[str, list[str]]
    vectors: dict[str, NDArray[np.float32]]
    path: Path
    members: dict[str, NDArray[np.int64]] = field(default_factory=dict)


def encode_ids(ids: list[str]) -> bytes:
    return "".join(json.dumps(ext) + "\n" for ext in ids).encode()


def read_ids(folder: Path, view: str, *, offset: int = 0) -> tuple[list[str], int]:
    """The ids of ``view`` from byte ``offset`` on (the end of a shorter version's file, whose ids a
    reader already holds), and the file's size: the offset to pass for the next version."""
    with (folder / f"{view}.ids.jsonl").open("rb") as fh:
        fh.seek(max(offset - 1, 0))
        tail = fh.read()
    if offset:
        # The cheap half of the append-only promise: a line must end where the known ids did.
        if not tail.startswith(b"\n") or (len(tail) > 1 and tail[1:2] != b'"'):
            raise ValueError(f"{folder}: {view} ids do not continue at byte {offset}; the file was rewritten")
        tail = tail[1:]
    return [json.loads(line) for line in tail.splitlines()], offset + len(tail)


def read_manifest(folder: Path) -> Manifest:
    return Manifest.from_json((folder / "manifest.json").read_text())


def read_vectors(folder: Path, manifest: Manifest, view: str) -> NDArray[np.float32]:
    vectors: NDArray[np.float32] = np.load(folder / f"{view}.vectors.npy")  # float32: checked below
    _check_vectors(folder, manifest, view, vectors.shape, vectors.dtype, fortran_order=False)
    return vectors


def vector_blocks(folder: Path, manifest: Manifest, view: str,
                  rows_per_block: int) -> Iterator[tuple[int, NDArray[np.float32]]]:
    """The view's vectors as (first row, block of rows), read into one small buffer that each block
    reuses (copy what you keep): for a reader that must not hold the whole matrix a second time."""
    with (folder / f"{view}.vectors.npy").open("rb") as fh:
        version = _read_magic(fh)
        header = _NPY_HEADERS.get(version)
        if header is None:
            raise ValueError(f"snapshot {folder}: {view} vectors are in .npy format {version}, not 1.0 or 2.0")
        shape, fortran_order, dtype = header(fh)
        _check_vectors(folder, manifest, view, shape, dtype, fortran_order)
        rows, dim = shape
        buffer = np.empty((max(1, min(rows_per_block, rows)), dim), dtype=np.float32)
        for start in range(0, rows, len(buffer)):
            block = buffer[:min(len(buffer), rows - start)]
            if fh.readinto(block.data.cast("B")) != block.nbytes:
                raise EOFError(f"snapshot {folder}: {view} vectors end before row {start + len(block)} of {rows}")
            yield start, block


# numpy's stubs (lib/format.pyi) leave these untyped; typed here as numpy documents them.
_read_magic: Callable[[BinaryIO], tuple[int, int]] = np.lib.format.read_magic
_NPY_HEADERS: dict[tuple[int, int], Callable[[BinaryIO], tuple[tuple[int, ...], bool, np.dtype[Any]]]] = {
    (1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _check_vectors(folder: Path, manifest: Manifest, view: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                   fortran_order: bool) -> None:
    if shape != (manifest.rows[view], manifest.dim) or dtype != np.float32 or fortran_order:
        raise ValueError(f"snapshot {folder}: {view} vectors are {dtype} {shape}"
                         f"{' (column-major)' if fortran_order else ''}, manifest says float32 "
                         f"{manifest.rows[view]} x {manifest.dim}")


def read_members(folder: Path, manifest: Manifest, side: str) -> NDArray[np.int64]:
    rows: NDArray[np.int64] = np.load(folder / f"{side}.members.npy")  # as publish writes them
    items = manifest.rows[manifest.views[0]]
    if rows.shape != (items,) or (items and not -1 <= rows.min() <= rows.max() < manifest.rows[side]):
        raise ValueError(f"snapshot {folder}: {side} memberships do not fit {items} items and "
                         f"{manifest.rows[side]} {side} values")
    return rows


def load(root: Path, version: int | None = None) -> Snapshot:
    """The current (or a given) version, fully read and checked: shapes must match the manifest."""
    version = current_version(root) if version is None else version
    if version is None:
        raise FileNotFoundError(f"no snapshot published under {root}")
    folder = version_dir(root, version)
    manifest = read_manifest(folder)
    ids, vectors = {}, {}
    for view in manifest.views:
        ids[view], _ = read_ids(folder, view)
        vectors[view] = read_vectors(folder, manifest, view)
        if len(ids[view]) != manifest.rows[view]:
            raise ValueError(f"snapshot {folder}: {len(ids[view])} {view} ids, manifest says {manifest.rows[view]}")
    members = {side: read_members(folder, manifest, side) for side in manifest.members}
    return Snapshot(manifest, ids, vectors, folder, members)


def load_checkpoint(root: Path) -> tuple[int, Any, dict[str, list[str]]] | None:
    """The current version, its checkpoint and its ids per view (which may extend the checkpoint's
    tables: rows appended between rounds), or None before a first publish."""
    import torch

    version = current_version(root)
    if version is None:
        return None
    folder = version_dir(root, version)
    manifest = read_manifest(folder)
    ids = {view: read_ids(folder, view)[0] for view in manifest.views}
    return version, torch.load(folder / "checkpoint.pt", weights_only=False), ids
