"""Versioned snapshots, published atomically: readers never see a half-written one.

Layout (format 1):

    <snapshot_dir>/
      CURRENT                      the live version's name, replaced atomically (write, fsync, rename)
      versions/v000042/            immutable once renamed into place
        manifest.json              version, time, watermark, views, dims, per-task losses and σ²
        <view>.ids.json            external ids, row i of the vectors is ids[i]
        <view>.vectors.npy         float32 (rows, dim): the input vectors U, what serving uses
        checkpoint.pt              full model state, id maps and trainer state, for warm starts

A publish writes everything into a hidden temporary folder, fsyncs it, renames it to its version
name, then points CURRENT at it; versions beyond the newest ``keep`` are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
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


def publish(root: Path, manifest: Manifest, vectors: dict[str, np.ndarray], ids: dict[str, list[str]],
            checkpoint: Any, *, keep: int) -> Path:
    """Write a new version and make it current, atomically. Returns its folder."""
    import torch  # only publishing needs torch; readers of snapshots do not

    versions = root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / _name(manifest.version)
    staging = versions / f".tmp-{_name(manifest.version)}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for view, matrix in vectors.items():
        _write_file(staging / f"{view}.vectors.npy", lambda fh, m=matrix: np.save(fh, m.astype(np.float32)))
        _write_file(staging / f"{view}.ids.json", lambda fh, v=view: fh.write(json.dumps(ids[v]).encode()))
    _write_file(staging / "checkpoint.pt", lambda fh: torch.save(checkpoint, fh))
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
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
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
    vectors: dict[str, np.ndarray]
    path: Path


def load(root: Path, version: int | None = None) -> Snapshot:
    """The current (or a given) version, fully read and checked: shapes must match the manifest."""
    version = current_version(root) if version is None else version
    if version is None:
        raise FileNotFoundError(f"no snapshot published under {root}")
    folder = version_dir(root, version)
    manifest = Manifest.from_json((folder / "manifest.json").read_text())
    ids, vectors = {}, {}
    for view in manifest.views:
        ids[view] = json.loads((folder / f"{view}.ids.json").read_text())
        vectors[view] = np.load(folder / f"{view}.vectors.npy")
        if vectors[view].shape != (manifest.rows[view], manifest.dim) or len(ids[view]) != manifest.rows[view]:
            raise ValueError(f"snapshot {folder}: {view} has shape {vectors[view].shape} and {len(ids[view])} ids, "
                             f"manifest says {manifest.rows[view]} x {manifest.dim}")
    return Snapshot(manifest, ids, vectors, folder)


def load_checkpoint(root: Path) -> Any | None:
    import torch

    version = current_version(root)
    if version is None:
        return None
    return torch.load(version_dir(root, version) / "checkpoint.pt", weights_only=False)
