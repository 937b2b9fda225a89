"""Hot swap of published snapshots: only sound versions go live, the last good one keeps serving."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from m2grl import snapshots
from m2grl.rpc import live as live_module
from m2grl.rpc.live import LiveSnapshots
from m2grl.settings import RpcSettings


def publish(root: Path, version: int, rows: int, fill: float | None = None) -> np.ndarray:
    manifest = snapshots.Manifest(version=version, created_ms=version, watermark_ms={"item": version}, views=["item"],
                                  dim=4, rows={"item": rows}, losses={}, sigma2={"intra:item": 1.0})
    vectors = {"item": np.random.default_rng(version).normal(size=(rows, 4)).astype(np.float32)}
    if fill is not None:
        vectors["item"][0] = fill
    snapshots.publish_base(root, manifest, vectors, {"item": [f"i{n}" for n in range(rows)]}, keep=3)
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
    (snapshots.segment_dir(tmp_path, "b000003") / "item.vectors.npy").write_bytes(b"\x93NUMPY truncated")
    assert not live.refresh() and live.current.version == 1 and 3 in live.refused
    publish(tmp_path, 4, 12)
    assert live.refresh() and live.current.version == 4 and live.current.ids_added == {"item": 2}


def test_a_new_lineage_is_read_afresh(tmp_path: Path) -> None:
    """Training restarted in an emptied folder numbers versions and rows anew; the server follows it
    and does not mix the rows up."""
    live = LiveSnapshots(tmp_path / "a", RpcSettings())
    publish(tmp_path / "a", 1, 10)
    publish(tmp_path / "a", 2, 10)
    live.refresh()
    shutil.rmtree(tmp_path / "a")
    manifest = snapshots.Manifest(version=1, created_ms=2, watermark_ms={}, views=["item"], dim=4, rows={"item": 12},
                                  losses={}, sigma2={})
    snapshots.publish_base(tmp_path / "a", manifest, {"item": np.ones((12, 4), dtype=np.float32)},
                           {"item": [f"other{n}" for n in range(12)]}, keep=3)
    assert live.refresh() and live.current.version == 1
    assert live.current.views["item"].row("other11") == 11 and live.current.views["item"].row("i1") is None


def test_a_version_listing_an_id_twice_is_refused(tmp_path: Path) -> None:
    """Two rows under one id: a call could not say which vector it got. Nothing of it is served."""
    live = LiveSnapshots(tmp_path, RpcSettings())
    publish(tmp_path, 1, 3)
    live.refresh()
    manifest = snapshots.Manifest(version=2, created_ms=2, watermark_ms={}, views=["item"], dim=4, rows={"item": 5},
                                  losses={}, sigma2={})
    snapshots.publish_base(tmp_path, manifest, {"item": np.ones((5, 4), dtype=np.float32)},
                           {"item": ["i0", "i1", "i2", "i3", "i1"]}, keep=3)
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


def publish_vectors(root: Path, version: int, vectors: np.ndarray) -> None:
    manifest = snapshots.Manifest(version=version, created_ms=version, watermark_ms={"item": version}, views=["item"],
                                  dim=vectors.shape[1], rows={"item": len(vectors)}, losses={}, sigma2={})
    snapshots.publish_base(root, manifest, {"item": vectors}, {"item": [f"i{n}" for n in range(len(vectors))]},
                           keep=3)


def served_matrix(view: live_module.ServedView) -> np.ndarray:
    found, raw = view.gather([f"i{n}" for n in range(view.rows)])
    assert all(found)
    return np.frombuffer(raw, "<f4").reshape(view.rows, view.dim)


def moved(vectors: np.ndarray, rows: list[int], appended: int) -> np.ndarray:
    fresh = np.random.default_rng(len(vectors)).normal(size=(appended, vectors.shape[1])).astype(np.float32)
    after = np.vstack([vectors, fresh])
    after[rows] = -vectors[rows] - 1
    return after


def test_versions_share_one_store_each_serving_its_own_vectors(tmp_path: Path, monkeypatch) -> None:
    """Blocks of 3 rows: changed rows on block edges and appended rows are all found; each version
    serves exactly its own vectors, also the one before it, still answering while the next goes
    live, whose rows stay overlaid on the store until that call ends."""
    monkeypatch.setattr(live_module, "FOLD_WAIT_S", 0.05)
    live = LiveSnapshots(tmp_path, RpcSettings(swap_block_rows=3))
    v1 = publish(tmp_path, 1, 10)
    live.refresh()
    store = live.current.views["item"].store
    v2 = moved(v1, [2, 3, 9], appended=2)
    publish_vectors(tmp_path, 2, v2)
    assert live.refresh()
    second = live.current.views["item"]
    assert second.store is store and len(second.overlay) == 0 and store.rows == 12  # written: nothing read v1
    assert np.array_equal(served_matrix(second), v2)
    for row in (2, 3, 9, 11):
        assert second.index.search(second.unit(row), 1)[0][0] == row
    v3 = moved(v2, [0, 5, 11], appended=1)
    publish_vectors(tmp_path, 3, v3)
    assert live.refresh()  # while a call still answers from version 2
    third = live.current.views["item"]
    assert third.store is store and third.overlay.rows.tolist() == [0, 5, 11, 12] and store.rows == 12
    assert np.array_equal(served_matrix(third), v3)
    assert np.allclose(np.linalg.norm(third.unit(np.arange(13)), axis=1), 1.0)
    assert np.array_equal(served_matrix(second), v2)  # the version before is untouched
    for row in (0, 5, 11, 12):
        assert third.index.search(third.unit(row), 1)[0][0] == row
    del second
    assert not live.refresh()  # no new version, but the overlay goes into the store
    folded = live.current.views["item"]
    assert folded.version == 3 and len(folded.overlay) == 0 and store.rows == 13 and store.version == 3
    assert np.array_equal(store.vectors[:13], v3) and np.allclose(store.norms[:13], np.linalg.norm(v3, axis=1))
    assert np.array_equal(served_matrix(folded), v3) and np.array_equal(served_matrix(third), v3)


def test_a_store_still_answering_calls_is_not_written_over(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(live_module, "FOLD_WAIT_S", 0.05)
    live = LiveSnapshots(tmp_path, RpcSettings())
    v1 = publish(tmp_path, 1, 10)
    live.refresh()
    held = live.current.views["item"]  # a call that is still answering from version 1
    v2 = moved(v1, [1], appended=0)
    publish_vectors(tmp_path, 2, v2)
    live.refresh()
    v3 = moved(v2, [4], appended=1)
    publish_vectors(tmp_path, 3, v3)
    assert live.refresh()
    assert live.current.views["item"].overlay.rows.tolist() == [1, 4, 10]  # both versions' rows, overlaid
    assert np.array_equal(held.store.vectors[:10], v1)
    assert np.array_equal(served_matrix(held), v1)
    assert np.array_equal(served_matrix(live.current.views["item"]), v3)
    found, raw = live.current.views["item"].gather(["i4", "nobody", "i10", "i0"])
    assert found == [True, False, True, True]
    assert np.frombuffer(raw, "<f4").reshape(3, 4).tolist() == v3[[4, 10, 0]].tolist()


def test_a_refused_version_leaves_the_store_sound(tmp_path: Path) -> None:
    live = LiveSnapshots(tmp_path, RpcSettings(swap_block_rows=4))
    v1 = publish(tmp_path, 1, 10)
    live.refresh()
    v2 = moved(v1, [3], appended=1)
    publish_vectors(tmp_path, 2, v2)
    live.refresh()
    broken = moved(v2, [0, 6], appended=0)
    broken[9] = np.inf  # found in the third block, after two blocks of changes
    publish_vectors(tmp_path, 3, broken)
    assert not live.refresh() and "infinite" in live.refused[3]
    v4 = moved(v2, [6, 10], appended=2)
    publish_vectors(tmp_path, 4, v4)
    assert live.refresh()
    assert np.array_equal(served_matrix(live.current.views["item"]), v4)
    v5 = moved(v4, [1], appended=0)
    publish_vectors(tmp_path, 5, v5)
    assert live.refresh()
    assert np.array_equal(served_matrix(live.current.views["item"]), v5)


def served_with_graph(root: Path, cfg: RpcSettings, rng: np.random.Generator) -> tuple[LiveSnapshots, np.ndarray]:
    """A first version of 3,000 rows, served (by exhaustive search at once) and then indexed."""
    vectors = rng.normal(size=(3_000, 8)).astype(np.float32)
    publish_vectors(root, 1, vectors)
    live = LiveSnapshots(root, cfg)
    assert live.refresh() and live.current.views["item"].index.exact
    assert live.wait_for_merges(timeout=60)
    assert not live.current.views["item"].index.exact and live.current.version == 1
    return live, vectors


def test_a_graph_view_is_patched_then_read_whole_when_most_rows_change(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    live, v1 = served_with_graph(tmp_path, RpcSettings(exact_below=1_000, hnsw_m=8, swap_block_rows=500), rng)
    v2 = moved(v1, rng.choice(3_000, 30, replace=False).tolist(), appended=10)
    publish_vectors(tmp_path, 2, v2)
    live.refresh()
    patched = live.current.views["item"]
    assert not patched.index.exact and len(patched.index) == 3_010
    v3 = rng.normal(size=(3_020, 8)).astype(np.float32)  # as after a full training rebuild
    publish_vectors(tmp_path, 3, v3)
    live.refresh()
    rebuilt = live.current.views["item"]
    assert rebuilt.store is not patched.store and len(rebuilt.index) == 3_020
    assert rebuilt.index.exact and live.wait_for_merges(timeout=60)  # a new graph, in the background
    assert not live.current.views["item"].index.exact
    for view, vectors in ((patched, v2), (rebuilt, v3)):
        assert np.array_equal(served_matrix(view), vectors)
        for row in (0, 2_999, len(vectors) - 1):
            assert view.index.search(view.unit(row), 1)[0] == [row]


def test_rows_changed_since_the_graph_was_built_fold_into_it_in_the_background(tmp_path: Path) -> None:
    """Each swap searches the changed rows exactly beside the shared graph; past
    index_merge_rows a merge runs in a thread, and the next refresh rebases the served version on
    it, keeping what changed after the merge began exact."""
    rng = np.random.default_rng(6)
    live, vectors = served_with_graph(tmp_path, RpcSettings(exact_below=1_000, hnsw_m=8, index_merge_rows=50), rng)
    built = live.current.views["item"].index
    for version in (2, 3):
        vectors = moved(vectors, rng.choice(3_000, 30, replace=False).tolist(), appended=5)
        publish_vectors(tmp_path, version, vectors)
        assert live.refresh()
    view = live.current.views["item"]
    assert view.index.approximate is built.approximate and len(view.index.fresh) > 50  # a merge started
    live._merging["item"].join(timeout=60)
    assert not live.refresh()  # no new version: the merge is installed
    merged = live.current.views["item"]
    assert live.current.version == 3 and merged.index.approximate is not built.approximate
    assert len(merged.index.fresh) == 0 and merged.store is view.store
    for row in (0, 1_500, 3_009):
        assert merged.index.search(merged.unit(row), 1)[0] == [row]
    assert np.array_equal(served_matrix(merged), vectors)


def test_a_rollback_of_current_is_served_with_a_warning_and_watchers_hear_of_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = LiveSnapshots(tmp_path, RpcSettings())
    publish(tmp_path, 1, 10)
    second = publish(tmp_path, 2, 12)
    publish(tmp_path, 3, 14)
    assert live.refresh() and live.current.version == 3
    _, sequence = live.latest()
    snapshots.make_current(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger="m2grl.rpc.live"):
        assert live.refresh()
    assert "moved back from version 3 to 2" in caplog.text
    view = live.current.views["item"]
    assert live.current.version == 2 and view.rows == 12 and view.row("i13") is None
    assert served_matrix(view).tolist() == second.tolist()
    assert [event.version for event in live.went_live_after(sequence, timeout=0)] == [2]
    publish(tmp_path, 4, 15)  # the trainer publishes again: forward from the rolled-back version
    assert live.refresh() and live.current.version == 4 and live.current.views["item"].row("i14") == 14


def test_rolling_back_to_a_version_that_is_gone_says_which_are_kept(tmp_path: Path) -> None:
    for version in (1, 2, 3, 4):
        publish(tmp_path, version, 10)
    with pytest.raises(ValueError, match=r"version 1 is not in .* \(versions kept: 2, 3, 4\)"):
        snapshots.make_current(tmp_path, 1)
    assert snapshots.current_version(tmp_path) == 4


def test_a_pinned_version_keeps_its_segments_through_retention(tmp_path: Path) -> None:
    def base(version: int) -> None:
        manifest = snapshots.Manifest(version=version, created_ms=version, watermark_ms={}, views=["item"], dim=4,
                                      rows={"item": 3}, losses={}, sigma2={})
        snapshots.publish_base(tmp_path, manifest, {"item": np.ones((3, 4), np.float32)},
                               {"item": ["a", "b", "c"]}, keep=2)

    base(1)
    with snapshots.pinned(tmp_path, 1) as manifest:
        for version in (2, 3, 4, 5):
            base(version)
        assert snapshots.published_versions(tmp_path) == [4, 5]  # its manifest goes, its segments stay
        assert snapshots.segment_infos(tmp_path, manifest)[0].version == 1
    base(6)
    assert not snapshots.segment_dir(tmp_path, "b000001").exists()
    assert not list((tmp_path / snapshots.PINS).iterdir())


def test_versions_pruned_while_a_server_loads_them_are_still_served(tmp_path: Path, monkeypatch) -> None:
    """keep_snapshots = 2 and a publisher faster than the server's loads: without a pin, retention
    deleted the version being read and the server silently gave up on it, every time."""
    stop = threading.Event()
    published: list[int] = []

    def publisher() -> None:
        version = 1
        while not stop.is_set():
            manifest = snapshots.Manifest(version=version, created_ms=version, watermark_ms={}, views=["item"],
                                          dim=4, rows={"item": 50}, losses={}, sigma2={})
            rng = np.random.default_rng(version)
            snapshots.publish_base(tmp_path, manifest, {"item": rng.normal(size=(50, 4)).astype(np.float32)},
                                   {"item": [f"i{n}" for n in range(50)]}, keep=2)
            published.append(version)
            version += 1
            time.sleep(0.02)

    load = LiveSnapshots._load
    failures: list[BaseException] = []

    def slow_load(self: LiveSnapshots, manifest: snapshots.Manifest, served: object) -> object:
        time.sleep(0.2)  # a load takes long enough for several versions to be published and pruned
        try:
            return load(self, manifest, served)
        except BaseException as exc:
            failures.append(exc)
            raise

    monkeypatch.setattr(LiveSnapshots, "_load", slow_load)
    live = LiveSnapshots(tmp_path, RpcSettings())
    thread = threading.Thread(target=publisher)
    thread.start()
    served: list[int] = []
    try:
        while len(served) < 5:
            if live.refresh():
                served.append(live.current.version)
    finally:
        stop.set()
        thread.join()
    assert not failures and not live.refused
    assert served == sorted(served) and len(published) > len(served)  # it skipped versions, never failed one
