"""Scheduling and publishing, without services: rounds never overlap, readers never see half a snapshot."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from m2grl import snapshots
from m2grl.errors import ConfigError
from m2grl.settings import load_settings
from m2grl.train.service import exclusive_trainer, run_scheduled
from m2grl.train.trainer import RoundStats


def test_rounds_never_overlap_and_missed_ticks_coalesce() -> None:
    running, peak, calls, fulls = 0, 0, 0, []
    lock = threading.Lock()
    stop = threading.Event()

    def slow_round(*, full: bool) -> RoundStats:
        nonlocal running, peak, calls
        with lock:
            running += 1
            peak = max(peak, running)
            calls += 1
        fulls.append(full)
        time.sleep(0.3)  # six ticks' worth
        with lock:
            running -= 1
        return RoundStats(version=calls, full=full, seconds=0.3, pairs=0, steps=0)

    worker = threading.Thread(target=lambda: run_scheduled(slow_round, 0.05, stop, first_full=True))
    worker.start()
    time.sleep(1.25)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert peak == 1
    assert 2 <= calls <= 6  # ~4 back to back, not one per 50 ms tick
    assert fulls[0] is True and not any(fulls[1:])


def test_every_nth_round_is_a_full_rebuild_counting_from_the_last_full_one() -> None:
    fulls: list[bool] = []
    stop = threading.Event()

    def quick_round(*, full: bool) -> RoundStats:
        fulls.append(full)
        if len(fulls) >= 9:
            stop.set()
        return RoundStats(version=len(fulls), full=full or len(fulls) == 2, seconds=0.0, pairs=0, steps=0)

    # Round 2 comes back full although not asked to be (the trainer had no model yet): the count restarts there.
    run_scheduled(quick_round, 0.01, stop, full_every=3)
    assert fulls[:9] == [False, False, False, False, True, False, False, True, False]


def write_version(root: Path, version: int, rows: int) -> None:
    manifest = snapshots.Manifest(version=version, created_ms=0, watermark_ms={"item": version}, views=["item"],
                                  dim=4, rows={"item": rows}, losses={}, sigma2={})
    vectors = {"item": np.full((rows, 4), float(version), dtype=np.float32)}
    ids = {"item": [f"i{n}" for n in range(rows)]}
    snapshots.publish_base(root, manifest, vectors, ids, keep=3)


def test_readers_only_ever_see_whole_versions(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    write_version(root, 1, 101)
    seen: list[int] = []
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                snap = snapshots.load(root)
            except FileNotFoundError:
                continue  # pruned while we read an old version: a clean miss, the caller retries
            except Exception as exc:  # any other failure is what this test looks for
                errors.append(repr(exc))
                continue
            version = snap.manifest.version
            if not ((snap.vectors["item"] == version).all() and len(snap.ids["item"]) == 100 + version):
                errors.append(f"mixed snapshot at version {version}")
            seen.append(version)

    thread = threading.Thread(target=reader)
    thread.start()
    for version in range(2, 30):
        write_version(root, version, 100 + version)
    done.set()
    thread.join()
    assert not errors
    # The reader may be mid-read when the last write lands, so the final version is checked here.
    assert seen and seen == sorted(seen)
    assert snapshots.load(root).manifest.version == 29
    kept = sorted(p.name for p in (root / snapshots.VERSIONS).iterdir())
    assert kept == ["v000027.json", "v000028.json", "v000029.json"]
    assert sorted(p.name for p in (root / snapshots.SEGMENTS).iterdir()) == ["b000027", "b000028", "b000029"]


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    settings = load_settings(train={"snapshot_dir": str(tmp_path)})
    with (exclusive_trainer(settings), pytest.raises(ConfigError, match="another trainer"),
          exclusive_trainer(settings)):
        pass


def test_a_version_written_under_another_root_is_adopted_whole(tmp_path: Path) -> None:
    staged, served = tmp_path / "staged", tmp_path / "served"
    write_version(served, 1, rows=3)
    for version in (2, 3):
        write_version(staged, version, rows=3 + version)
    snapshots.adopt(served, staged, 2, keep=3)
    assert snapshots.current_version(served) == 2
    assert not snapshots.segment_dir(staged, "b000002").exists() and snapshots.segment_dir(staged, "b000003").exists()
    # It extends the served rows, so readers keep the ids they have.
    assert snapshots.read_manifest(served, 2).lineage == snapshots.read_manifest(served, 1).lineage
    adopted = snapshots.load(served)
    assert adopted.manifest.version == 2 and adopted.vectors["item"].shape == (5, 4)
    assert (adopted.vectors["item"] == 2.0).all() and adopted.ids["item"][-1] == "i4"


def test_vectors_read_block_by_block_are_the_published_ones_and_a_bad_file_is_refused(tmp_path: Path) -> None:
    manifest = snapshots.Manifest(version=1, created_ms=0, watermark_ms={}, views=["item"], dim=3, rows={"item": 10},
                                  losses={}, sigma2={})
    vectors = np.arange(30, dtype=np.float32).reshape(10, 3)
    snapshots.publish_base(tmp_path, manifest, {"item": vectors}, {"item": [f"i{n}" for n in range(10)]}, keep=3)
    manifest = snapshots.read_manifest(tmp_path, 1)
    folder = snapshots.segment_dir(tmp_path, manifest.segment)
    blocks = [(start, block.copy()) for start, block in snapshots.vector_blocks(tmp_path, manifest, "item", 4)]
    assert [start for start, _ in blocks] == [0, 4, 8] and [len(block) for _, block in blocks] == [4, 4, 2]
    assert np.array_equal(np.concatenate([block for _, block in blocks]), vectors)
    with pytest.raises(ValueError, match="row 10 are in none of its segments"):
        list(snapshots.vector_blocks(tmp_path, snapshots.Manifest(**{**manifest.__dict__, "rows": {"item": 11}}),
                                     "item", 4))
    path = folder / "item.vectors.npy"
    path.write_bytes(path.read_bytes()[:-5])  # the last row cut short
    with pytest.raises(EOFError, match="ends before row 10 of 10"):
        list(snapshots.vector_blocks(tmp_path, manifest, "item", 4))
    np.save(path, vectors.astype(np.float64))
    with pytest.raises(ValueError, match="float64"):
        list(snapshots.vector_blocks(tmp_path, manifest, "item", 4))
