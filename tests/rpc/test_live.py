"""Hot swap of published snapshots: only sound versions go live, the last good one keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from m2grl.rpc import live as live_module
from m2grl.rpc.live import LiveSnapshots
from m2grl.settings import RpcSettings
from m2grl.train import snapshots


def publish(root: Path, version: int, rows: int, fill: float | None = None) -> np.ndarray:
    manifest = snapshots.Manifest(version=version, created_ms=version, watermark_ms={"item": version}, views=["item"],
                                  dim=4, rows={"item": rows}, losses={}, sigma2={"intra:item": 1.0})
    vectors = {"item": np.random.default_rng(version).normal(size=(rows, 4)).astype(np.float32)}
    if fill is not None:
        vectors["item"][0] = fill
    snapshots.publish(root, manifest, vectors, {"item": [f"i{n}" for n in range(rows)]}, {"version": version}, keep=3)
    return vectors["item"]


def test_new_versions_go_live_with_their_index_and_added_ids(tmp_path: Path) -> None:
    live = LiveSnapshots(tmp_path, RpcSettings())
    assert live.current is None and not live.refresh()
    publish(tmp_path, 1, 10)
    assert live.refresh() and live.current.version == 1 and live.current.views["item"].rows == 10
    assert not live.refresh()  # nothing new
    first = live.current
    vectors = publish(tmp_path, 2, 14)
    assert live.refresh()
    second = live.current.views["item"]
    assert live.current.version == 2 and live.current.ids_added == {"item": 4}
    assert second.row("i13") == 13 and second.id(13) == "i13"
    found, raw = second.gather(["i13", "nobody", "i2"])
    assert found == [True, False, True]
    assert np.frombuffer(raw, "<f4").reshape(2, 4).tolist() == vectors[[13, 2]].tolist()
    assert second.rows_of(["i2", "nobody", "i13"]) == [2, -1, 13]
    assert second.index.search(second.unit(13), 1)[0][0] == 13  # the new rows are searchable
    # The version served before still answers as it did: the ids added since are not its own.
    assert first.views["item"].row("i13") is None and first.views["item"].row("i3") == 3
    assert first.views["item"].rows_of(["i13", "i3"]) == [-1, 3]
    assert first.views["item"].gather(["i13"]) == ([False], b"")


def test_a_version_without_rows_goes_live_and_grows(tmp_path: Path) -> None:
    """What training publishes before any event arrived: served (every id unknown), not refused."""
    live = LiveSnapshots(tmp_path, RpcSettings())
    publish(tmp_path, 1, 0)
    assert live.refresh() and live.current.views["item"].rows == 0 and not live.refused
    assert live.current.views["item"].rows_of(["i0"]) == [-1]
    assert live.current.views["item"].gather(["i0"]) == ([False], b"")
    publish(tmp_path, 2, 3)
    assert live.refresh() and live.current.views["item"].row("i2") == 2


def test_a_corrupt_version_is_refused_and_the_last_good_one_keeps_serving(tmp_path: Path) -> None:
    live = LiveSnapshots(tmp_path, RpcSettings())
    publish(tmp_path, 1, 10)
    live.refresh()
    publish(tmp_path, 2, 10, fill=float("nan"))
    assert not live.refresh()
    assert live.current.version == 1 and "NaN" in live.refused[2]
    publish(tmp_path, 3, 10)
    (snapshots.version_dir(tmp_path, 3) / "item.vectors.npy").write_bytes(b"\x93NUMPY truncated")
    assert not live.refresh() and live.current.version == 1 and 3 in live.refused
    publish(tmp_path, 4, 12)
    assert live.refresh() and live.current.version == 4 and live.current.ids_added == {"item": 2}


def test_a_rewritten_id_file_is_read_afresh(tmp_path: Path) -> None:
    """Training restarted in an emptied folder numbers rows anew; the server must not mix them up."""
    live = LiveSnapshots(tmp_path / "a", RpcSettings())
    publish(tmp_path / "a", 1, 10)
    live.refresh()
    manifest = snapshots.Manifest(version=2, created_ms=2, watermark_ms={}, views=["item"], dim=4, rows={"item": 12},
                                  losses={}, sigma2={})
    snapshots.publish(tmp_path / "a", manifest, {"item": np.ones((12, 4), dtype=np.float32)},
                      {"item": [f"other{n}" for n in range(12)]}, {}, keep=3)
    assert live.refresh()
    assert live.current.views["item"].row("other11") == 11 and live.current.views["item"].row("i1") is None


def test_a_version_listing_an_id_twice_is_refused(tmp_path: Path) -> None:
    """Two rows under one id: a call could not say which vector it got. Nothing of it is served."""
    live = LiveSnapshots(tmp_path, RpcSettings())
    publish(tmp_path, 1, 3)
    live.refresh()
    manifest = snapshots.Manifest(version=2, created_ms=2, watermark_ms={}, views=["item"], dim=4, rows={"item": 5},
                                  losses={}, sigma2={})
    snapshots.publish(tmp_path, manifest, {"item": np.ones((5, 4), dtype=np.float32)},
                      {"item": ["i0", "i1", "i2", "i3", "i1"]}, {}, keep=3)
    assert not live.refresh() and "listed twice" in live.refused[2]
    assert live.current.version == 1 and live.current.views["item"].rows_of(["i1", "i3"]) == [1, -1]


def test_watchers_get_every_version_exactly_once(tmp_path: Path) -> None:
    live = LiveSnapshots(tmp_path, RpcSettings())
    seen: list[int] = []

    def watch() -> None:
        last = 0
        while last < 5:
            fresh = live.went_live_after(last, timeout=10)
            assert fresh, "timed out"
            seen.extend(served.version for served in fresh)
            last = fresh[-1].version

    watcher = threading.Thread(target=watch)
    watcher.start()
    for version in (1, 2, 3, 4, 5):  # faster than the watcher may loop
        publish(tmp_path, version, 5 + version)
        live.refresh()
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert seen == [1, 2, 3, 4, 5]


def test_moved_rows_are_found_across_chunk_boundaries_and_reindexed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(live_module, "CHUNK_ROWS", 3)  # a new version is compared a few rows at a time
    live = LiveSnapshots(tmp_path, RpcSettings())
    before = publish(tmp_path, 1, 10)
    live.refresh()
    after = np.vstack([before, np.ones((2, 4), dtype=np.float32)])
    after[[2, 3, 9]] = -before[[2, 3, 9]]
    manifest = snapshots.Manifest(version=2, created_ms=2, watermark_ms={"item": 2}, views=["item"], dim=4,
                                  rows={"item": 12}, losses={}, sigma2={"intra:item": 1.0})
    snapshots.publish(tmp_path, manifest, {"item": after}, {"item": [f"i{n}" for n in range(12)]}, {}, keep=3)
    assert live_module._changed_rows(before, after).tolist() == [2, 3, 9]
    assert live.refresh()
    view = live.current.views["item"]
    for row in (2, 3, 9, 11):
        assert view.index.search(view.unit(row), 1)[0][0] in {row, 10 if row == 11 else row}
