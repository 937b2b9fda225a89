"""Snapshots as a base plus deltas: what a reader folds is bit for bit what was published, compaction
changes nothing a reader sees, retention keeps what kept versions need, and a kill at any point of a
publish or a compaction leaves the last complete version readable."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from m2grl import snapshots
from m2grl.rpc.live import LiveSnapshots
from m2grl.settings import RpcSettings

DIM = 8


@dataclass
class Truth:
    """Tables as a trainer holds them, published version by version as bases or deltas."""

    root: Path
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    contexts: dict[str, np.ndarray] = field(default_factory=dict)
    squares: dict[str, np.ndarray] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    members: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    version: int = 0

    def _manifest(self) -> snapshots.Manifest:
        return snapshots.Manifest(version=self.version, created_ms=self.version, watermark_ms={"item": self.version},
                                  views=["item", "category"], dim=DIM,
                                  rows={view: len(ids) for view, ids in self.ids.items()}, losses={}, sigma2={},
                                  sides=["category"])

    def base(self, items: int, categories: int, *, keep: int = 50) -> None:
        self.version += 1
        for view, rows in (("item", items), ("category", categories)):
            self.vectors[view] = self.rng.normal(size=(rows, DIM)).astype(np.float32)
            self.contexts[view] = self.rng.normal(size=(rows, DIM)).astype(np.float32)
            self.squares[view] = self.rng.random(size=(rows, 2)).astype(np.float32)
            self.ids[view] = [f"{view[0]}{n}" for n in range(rows)]
        self.members = self.rng.integers(-1, categories, items)
        segment = snapshots.Segment(
            {view: snapshots.ViewChange(list(self.ids[view]), self.vectors[view], contexts=self.contexts[view],
                                        squares=self.squares[view]) for view in self.ids},
            {"category": snapshots.MembershipChange(self.members.copy())}, self._model(), self._table_rows())
        snapshots.publish(self.root, self._manifest(), segment, keep=keep)

    def _model(self) -> dict[str, object]:
        return {"version": self.version}

    def _table_rows(self) -> dict[str, int]:
        return {view: len(rows) for view, rows in self.vectors.items()}

    def delta(self, *, moved: int = 5, appended: int = 3, keep: int = 50) -> None:
        self.version += 1
        views = {}
        for view in ("item", "category"):
            before = len(self.ids[view])
            grow = appended if view == "item" else 0
            rows = np.sort(self.rng.choice(before, min(moved, before), replace=False))
            state_rows = np.sort(self.rng.choice(before, min(2 * moved, before), replace=False))
            self.ids[view] += [f"{view[0]}{n}" for n in range(before, before + grow)]
            self.vectors[view] = np.vstack([self.vectors[view], np.zeros((grow, DIM), dtype=np.float32)])
            self.contexts[view] = np.vstack([self.contexts[view], np.zeros((grow, DIM), dtype=np.float32)])
            self.squares[view] = np.vstack([self.squares[view], np.zeros((grow, 2), dtype=np.float32)])
            rows = np.concatenate([rows, np.arange(before, before + grow)])
            state_rows = np.concatenate([state_rows, np.arange(before, before + grow)])
            self.vectors[view][rows] = self.rng.normal(size=(len(rows), DIM))
            self.contexts[view][state_rows] = self.rng.normal(size=(len(state_rows), DIM))
            self.squares[view][state_rows] = self.rng.random(size=(len(state_rows), 2))
            views[view] = snapshots.ViewChange(self.ids[view][before:], self.vectors[view][rows], rows,
                                               self.contexts[view][state_rows], self.squares[view][state_rows],
                                               state_rows)
        items = len(self.ids["item"])
        self.members = np.concatenate([self.members, np.full(items - len(self.members), -1)])
        linked = np.unique(self.rng.choice(items, 4))
        self.members[linked] = self.rng.integers(0, len(self.ids["category"]), len(linked))
        segment = snapshots.Segment(views, {"category": snapshots.MembershipChange(self.members[linked], linked)},
                                    self._model(), self._table_rows())
        snapshots.publish(self.root, self._manifest(), segment, keep=keep)

    def check(self, snapshot: snapshots.Snapshot) -> None:
        assert snapshot.manifest.version == self.version
        for view in ("item", "category"):
            assert snapshot.ids[view] == self.ids[view]
            assert np.array_equal(snapshot.vectors[view], self.vectors[view])
        assert np.array_equal(snapshot.members["category"], self.members)

    def check_checkpoint(self) -> None:
        checkpoint = snapshots.load_checkpoint(self.root)
        assert checkpoint is not None and checkpoint.model == {"version": self.version}
        for view in ("item", "category"):
            assert np.array_equal(checkpoint.inputs[view], self.vectors[view])
            assert np.array_equal(checkpoint.contexts[view], self.contexts[view])
            assert np.array_equal(checkpoint.squares[view], self.squares[view])


def test_base_and_deltas_read_back_what_was_published(tmp_path: Path) -> None:
    truth = Truth(tmp_path)
    truth.base(40, 5)
    for _ in range(6):
        truth.delta()
        truth.check(snapshots.load(tmp_path))
        truth.check_checkpoint()
    manifest = snapshots.read_current(tmp_path)
    assert manifest is not None and manifest.chain == ["b000001", *(f"d{v:06d}" for v in range(2, 8))]
    assert manifest.new_ids == {"item": 3, "category": 0}
    # A delta holds only what it changed: its vectors are a few rows, not the table.
    delta_vectors = snapshots.segment_dir(tmp_path, manifest.segment) / "item.vectors.npy"
    assert np.load(delta_vectors).shape == (8, DIM)
    # The same tables published whole read back the same.
    whole = Truth(tmp_path / "whole")
    whole.version = truth.version - 1
    snapshots.publish_base(tmp_path / "whole", truth._manifest(), truth.vectors, truth.ids, keep=2,
                           members={"category": truth.members})
    folded, base = snapshots.load(tmp_path), snapshots.load(tmp_path / "whole")
    for view in ("item", "category"):
        assert folded.vectors[view].tobytes() == base.vectors[view].tobytes() and folded.ids[view] == base.ids[view]


def test_compaction_keeps_every_vector_id_and_state_and_retention_keeps_what_versions_need(tmp_path: Path) -> None:
    truth = Truth(tmp_path)
    truth.base(60, 4, keep=2)
    for _ in range(4):
        truth.delta(keep=2)
    name = snapshots.compact(tmp_path, truth.version, keep=2)
    assert name == "b000005"
    truth.check(snapshots.load(tmp_path))
    truth.check_checkpoint()
    # Version 4 is kept and still needs the old chain; version 5 is the new base alone.
    assert snapshots.read_manifest(tmp_path, 5).chain == ["b000005"]
    assert snapshots.read_manifest(tmp_path, 4).chain == ["b000001", "d000002", "d000003", "d000004"]
    snapshots.load(tmp_path, 4)
    truth.delta(keep=2)  # builds on the new base; version 4 drops out, and with it the old chain
    assert snapshots.read_manifest(tmp_path, 6).chain == ["b000005", "d000006"]
    assert sorted(path.name for path in (tmp_path / snapshots.SEGMENTS).iterdir()) == ["b000005", "d000006"]
    truth.check(snapshots.load(tmp_path))
    truth.check_checkpoint()


def test_a_compaction_racing_a_publish_rewrites_the_newer_chain_too(tmp_path: Path) -> None:
    truth = Truth(tmp_path)
    truth.base(30, 3)
    truth.delta()
    truth.delta()
    compacted = truth.version
    truth.delta()  # published while the compaction of the version before it was being written
    snapshots.compact(tmp_path, compacted, keep=50)
    assert snapshots.read_manifest(tmp_path, truth.version).chain == ["b000003", "d000004"]
    truth.check(snapshots.load(tmp_path))
    truth.delta()
    assert snapshots.read_manifest(tmp_path, truth.version).chain == ["b000003", "d000004", "d000005"]
    truth.check(snapshots.load(tmp_path))


def test_a_server_follows_deltas_and_a_fresh_one_reads_base_and_deltas(tmp_path: Path) -> None:
    truth = Truth(tmp_path)
    truth.base(80, 6)
    live = LiveSnapshots(tmp_path, RpcSettings())
    assert live.refresh()
    for number in range(5):  # each version overlaid on the view's store, then written into it
        truth.delta(moved=7)
        if number == 2:
            snapshots.compact(tmp_path, truth.version, keep=50)  # the chain no longer passes the served version
        assert live.refresh()
        served = live.current
        assert served is not None and served.version == truth.version
        assert served.ids_added == {"item": 3, "category": 0}
        if number != 2:
            assert served.rows_changed["item"] <= 7
        for view in ("item", "category"):
            matrix = np.frombuffer(served.views[view].gather(truth.ids[view])[1], "<f4").reshape(-1, DIM)
            assert np.array_equal(matrix, truth.vectors[view])
        members = served.members["category"]
        assert np.array_equal(members.of(np.arange(members.rows)), truth.members)
        assert np.array_equal(members.items(0), np.flatnonzero(truth.members == 0))
    fresh = LiveSnapshots(tmp_path, RpcSettings())
    assert fresh.refresh() and fresh.current is not None
    matrix = np.frombuffer(fresh.current.views["item"].gather(truth.ids["item"])[1], "<f4").reshape(-1, DIM)
    assert np.array_equal(matrix, truth.vectors["item"])


def test_retention_while_a_server_loads_ends_on_the_newest_version(tmp_path: Path) -> None:
    """keep_snapshots = 2 and publishing as fast as it goes, compaction included: the version a server
    reads is pinned, so none is refused or dropped halfway, and it serves the newest at the end."""
    truth = Truth(tmp_path)
    truth.base(3000, 30, keep=2)
    live = LiveSnapshots(tmp_path, RpcSettings(swap_block_rows=64))
    done = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            while not done.is_set():
                live.refresh()
        except BaseException as exc:
            errors.append(exc)

    server = threading.Thread(target=serve)
    server.start()
    for number in range(40):
        truth.delta(moved=50, keep=2)
        if number % 10 == 9:
            snapshots.compact(tmp_path, truth.version, keep=2)
    time.sleep(0.2)
    done.set()
    server.join()
    assert not errors and not live.refused
    deadline = time.monotonic() + 30
    while (live.current is None or live.current.version != truth.version) and time.monotonic() < deadline:
        live.refresh()
    assert live.current is not None and live.current.version == truth.version
    matrix = np.frombuffer(live.current.views["item"].gather(truth.ids["item"])[1], "<f4").reshape(-1, DIM)
    assert np.array_equal(matrix, truth.vectors["item"])
    assert len(snapshots.published_versions(tmp_path)) == 2


def test_a_publish_that_runs_out_of_disk_leaves_nothing_and_the_last_version_current(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truth = Truth(tmp_path)
    truth.base(100, 5)
    write = snapshots._write_segment

    def full_disk(folder: Path, *args: object) -> object:
        write(folder, *args)  # most of it written, then the disk fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.pt"))

    monkeypatch.setattr(snapshots, "_write_segment", full_disk)
    with pytest.raises(snapshots.SnapshotError, match="No space left on device"):
        truth.delta()
    assert snapshots.current_version(tmp_path) == 1
    assert [path.name for path in (tmp_path / snapshots.SEGMENTS).iterdir()] == ["b000001"]  # no half segment
    monkeypatch.undo()
    truth.version -= 1  # never published: the next publish takes its number (a base: the tables moved on)
    truth.base(120, 6)
    truth.delta()
    truth.check(snapshots.load(tmp_path))


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_snapshot_deltas import Truth
    from m2grl import snapshots
    truth = Truth(Path({root!r}))
    truth.base(20000, 50, keep=3)
    print("ready", flush=True)
    while True:
        truth.delta(moved=4000, appended=500, keep=3)
        if truth.version % 3 == 0:
            snapshots.compact(truth.root, truth.version, keep=3)
""")


@pytest.mark.parametrize("after_s", [0.3, 0.7, 1.1, 1.6])
def test_a_kill_during_publish_or_compaction_leaves_the_last_complete_version(tmp_path: Path, after_s: float) -> None:
    root = tmp_path / "snapshots"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), root=str(root))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(after_s)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=60)
    current = snapshots.current_version(root)
    snapshot = snapshots.load(root)  # whole and consistent: every shape checked against its manifest
    assert snapshot.manifest.version == current
    assert len(snapshot.ids["item"]) == len(snapshot.vectors["item"]) == 20000 + 500 * (current - 1)
    assert snapshots.load_checkpoint(root) is not None
    # Publishing goes on from there; what the kill left half-written is hidden and never served.
    truth = Truth(root, version=current)
    truth.base(100, 5, keep=3)
    assert snapshots.load(root).manifest.version == current + 1


class _RunsCode:
    """A pickle that would run ``touch`` when loaded, as a tampered model.pt could."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return os.system, (f"touch {self.marker}",)


def test_a_tampered_snapshot_is_refused_unread(tmp_path: Path) -> None:
    import json

    import torch

    truth = Truth(tmp_path / "snapshots")
    truth.base(10, 3)
    root = truth.root
    manifest = snapshots.read_current(root)
    assert manifest is not None
    marker = tmp_path / "ran"
    torch.save({"version": _RunsCode(marker)}, snapshots.segment_dir(root, manifest.segment) / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt"):
        snapshots.load_checkpoint(root)
    assert not marker.exists()  # the pickle's code never ran

    path = snapshots.manifest_path(root, manifest.version)
    data = json.loads(path.read_text())
    data["views"] = ["item", "../../outside"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="outside"):
        snapshots.read_current(root)
    data["views"], data["chain"] = ["item", "category"], ["../b000001"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="b000001"):
        snapshots.read_current(root)
