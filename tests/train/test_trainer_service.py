"""Training rounds over graphs that ingest wrote to the real Neo4j."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2grl import snapshots
from m2grl.graphstore import GraphStore
from m2grl.graphstore.stats import node_events
from m2grl.ingest.events import Event
from m2grl.ingest.replay import replay
from m2grl.settings import Settings
from m2grl.train import pairs as pairs_module
from m2grl.train.trainer import Trainer
from tests.ingest.conftest import run_ingest

pytestmark = pytest.mark.services


def small_training(settings: Settings, snapshot_dir: Path) -> Settings:
    return settings.model_copy(update={"train": settings.train.model_copy(update=dict(
        dim=16, walks_per_node=4, walk_length=6, window=3, batch_size=2048, snapshot_dir=snapshot_dir))})


def test_rounds_publish_grow_and_resume(ingest_settings: Settings, movielens_sample: list[Event],
                                        tmp_path: Path) -> None:
    settings = small_training(ingest_settings, tmp_path / "snapshots")
    first, later = movielens_sample[:8000], movielens_sample[8000:10000]
    replay(settings, first, progress=False)
    run_ingest(settings)

    trainer = Trainer(settings)
    stats = trainer.round()
    snap = snapshots.load(settings.train.snapshot_dir)
    with GraphStore(settings.neo4j) as store:
        items_in_graph = set(node_events(store, settings.views.viewset.item))
    assert stats.version == 1 and stats.full and stats.pairs > 0
    assert set(snap.ids["item"]) == items_in_graph  # every item is servable, walks or not
    assert np.isfinite(snap.vectors["item"]).all()
    assert set(snap.manifest.sigma2) == {"intra:item", "intra:category", "inter:category"}
    first_ids = list(snap.ids["item"])
    first_vectors = snap.vectors["item"].copy()

    replay(settings, later, progress=False)
    run_ingest(settings)
    stats = trainer.round()
    snap = snapshots.load(settings.train.snapshot_dir)
    assert stats.version == 2 and not stats.full
    assert snap.ids["item"][: len(first_ids)] == first_ids  # never re-indexed
    new_items = snap.ids["item"][len(first_ids):]
    assert stats.new_ids["item"] == len(new_items) > 0
    assert not np.array_equal(snap.vectors["item"][: len(first_ids)], first_vectors)  # warm start trained on
    trainer.close()

    resumed = Trainer(settings)
    assert resumed.version == 2 and resumed.graphs["item"].ids.listed() == snap.ids["item"]
    assert resumed.round().version == 3
    assert snapshots.load(settings.train.snapshot_dir).ids["item"][: len(snap.ids["item"])] == snap.ids["item"]
    resumed.close()


def test_kill_9_mid_round_then_restart_resumes(ingest_settings: Settings, movielens_sample: list[Event],
                                              tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from m2grl.settings import settings_env
    from tests.conftest import REPO_ROOT

    settings = small_training(ingest_settings, tmp_path / "snapshots")
    replay(settings, movielens_sample, progress=False)
    run_ingest(settings)
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-m", "m2grl", "train", "--once"]
    assert subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, timeout=600).returncode == 0
    assert snapshots.current_version(settings.train.snapshot_dir) == 1

    slow = {**env, "M2GRL_TRAIN_WALKS_PER_NODE": "40", "M2GRL_TRAIN_BATCH_SIZE": "256"}  # a round long enough to kill
    trainer = subprocess.Popen([*command, "--full"], env=slow, cwd=REPO_ROOT, stderr=subprocess.PIPE)
    seen = b""
    while b"round 2:" not in seen:  # the progress bar of the second round has started
        chunk = trainer.stderr.read1(4096)
        assert chunk, f"trainer ended before its round started: {seen[-2000:]!r}"
        seen += chunk
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    assert snapshots.current_version(settings.train.snapshot_dir) == 1  # the half round left no trace
    assert snapshots.load(settings.train.snapshot_dir).manifest.version == 1

    again = subprocess.run([*command, "--json"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert snapshots.current_version(settings.train.snapshot_dir) == 2
    assert snapshots.load(settings.train.snapshot_dir).ids["item"][: len(snapshots.load(
        settings.train.snapshot_dir, 1).ids["item"])] == snapshots.load(settings.train.snapshot_dir, 1).ids["item"]


def test_new_items_are_published_from_their_side_views_between_and_during_rounds(
        ingest_settings: Settings, movielens_sample: list[Event], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = small_training(ingest_settings, tmp_path / "snapshots")
    replay(settings, movielens_sample[:6000], progress=False)
    run_ingest(settings)
    trainer = Trainer(settings, cold_start=True)
    trainer.round()
    first = snapshots.load(settings.train.snapshot_dir)
    anchor = movielens_sample[0]
    genre = anchor.side["category"]

    def arrive(item: str, category: str, at_ms: int) -> None:
        replay(settings, [Event(anchor.user_id, item, "pv", at_ms, {"category": category})], progress=False)
        run_ingest(settings)

    last_ms = movielens_sample[5999].event_time_ms
    arrive("cold-known-genre", genre, last_ms + 1)
    arrive("cold-new-genre", "a genre nobody has seen", last_ms + 2)
    assert trainer.admit_new_items() == 1  # the other item's only side value has no vector yet
    lane = snapshots.load(settings.train.snapshot_dir)
    assert lane.manifest.version == 2 and lane.manifest.watermark_ms == first.manifest.watermark_ms
    assert lane.ids["item"] == [*first.ids["item"], "cold-known-genre"]
    assert np.array_equal(lane.vectors["item"][:-1], first.vectors["item"])
    row, genre_row = len(first.ids["item"]), first.ids["category"].index(genre)
    assert lane.members["category"][row] == genre_row
    peers = np.flatnonzero(first.members["category"] == genre_row)
    peer_mean = first.vectors["item"][peers].mean(0)
    new = lane.vectors["item"][row]
    assert new @ peer_mean / (np.linalg.norm(new) * np.linalg.norm(peer_mean)) > 0.9
    # A delta of the new row alone, without model state: the model is still the round's.
    assert lane.manifest.chain == [*first.manifest.chain, "d000002"]
    delta = snapshots.SegmentInfo.read(snapshots.segment_dir(settings.train.snapshot_dir, "d000002"))
    assert delta.held == {"item": 1, "category": 0} and delta.table_rows is None
    assert trainer.admit_new_items() == 0  # nothing new since

    # During a round: an item that arrives while the round walks is published between its steps,
    # and the round's own snapshot keeps its row.
    walk = trainer._walk

    def walk_while_an_item_arrives(*args: object, **kwargs: object) -> object:
        arrive("cold-during-round", genre, last_ms + 3)
        trainer.lane.due_at = 0.0
        return walk(*args, **kwargs)

    monkeypatch.setattr(trainer, "_walk", walk_while_an_item_arrives)
    sampled_rows = []
    sampler = pairs_module.NegativeSampler
    monkeypatch.setattr(pairs_module, "NegativeSampler",
                        lambda rows, *args, **kwargs: sampled_rows.append(rows) or sampler(rows, *args, **kwargs))
    stats = trainer.round()
    # Negatives come from rows the tables have, not from rows appended while the round ran.
    assert sampled_rows[0] == trainer.model.shape.rows[0] == len(trainer.graphs["item"].ids) - 1
    during = snapshots.load(settings.train.snapshot_dir, stats.version - 1)
    after = snapshots.load(settings.train.snapshot_dir)
    assert during.ids["item"][-1] == "cold-during-round"
    assert after.manifest.version == stats.version == during.manifest.version + 1
    assert after.ids["item"][: len(during.ids["item"])] == during.ids["item"]  # rows never move
    assert {"cold-new-genre", "cold-during-round"} <= set(after.ids["item"])
    assert np.isfinite(after.vectors["item"]).all()
    trainer.close()

    resumed = Trainer(settings, cold_start=True)
    assert resumed.version == after.manifest.version
    assert resumed.graphs["item"].ids.listed() == after.ids["item"]
    resumed.close()


def test_two_ranks_read_neo4j_once_and_publish_versions_one_process_resumes(
        ingest_settings: Settings, movielens_sample: list[Event], tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from m2grl.settings import settings_env
    from tests.conftest import REPO_ROOT

    settings = small_training(ingest_settings, tmp_path / "snapshots")
    replay(settings, movielens_sample[:8000], progress=False)
    run_ingest(settings)
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
    ranks = subprocess.run([sys.executable, "-m", "m2grl", "train", "--once", "--nproc", "2"], env=env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    snap = snapshots.load(settings.train.snapshot_dir)
    with GraphStore(settings.neo4j) as store:
        items_in_graph = set(node_events(store, settings.views.viewset.item))
    assert snap.manifest.version == 1 and set(snap.ids["item"]) == items_in_graph
    assert np.isfinite(snap.vectors["item"]).all() and (np.linalg.norm(snap.vectors["item"], axis=1) > 0).all()

    replay(settings, movielens_sample[8000:10000], progress=False)
    run_ingest(settings)
    again = subprocess.run([sys.executable, "-m", "m2grl", "train", "--once", "--nproc", "2", "--json"], env=env,
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    later = snapshots.load(settings.train.snapshot_dir)
    assert later.manifest.version == 2 and later.ids["item"][:len(snap.ids["item"])] == snap.ids["item"]
    assert len(later.ids["item"]) > len(snap.ids["item"])  # the new items, read by the leader for both ranks

    alone = Trainer(settings)  # one process resumes from the ranks' version
    assert alone.version == 2 and alone.graphs["item"].ids.listed() == later.ids["item"]
    assert alone.round().version == 3
    alone.close()


def test_kill_9_of_one_rank_mid_round_publishes_nothing_and_the_next_run_resumes(
        ingest_settings: Settings, movielens_sample: list[Event], tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from m2grl.settings import settings_env
    from tests.conftest import REPO_ROOT

    settings = small_training(ingest_settings, tmp_path / "snapshots")
    replay(settings, movielens_sample, progress=False)
    run_ingest(settings)
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "m2grl", "train", "--once", "--nproc", "2"]
    first = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert snapshots.current_version(settings.train.snapshot_dir) == 1

    slow = {**env, "M2GRL_TRAIN_WALKS_PER_NODE": "40", "M2GRL_TRAIN_BATCH_SIZE": "256"}  # a round long enough to kill
    job = subprocess.Popen([*command, "--full"], env=slow, cwd=REPO_ROOT, stderr=subprocess.PIPE)
    seen = b""
    while b"round 2:" not in seen:  # the leader's progress bar: both ranks are in the round's steps
        chunk = job.stderr.read1(4096)
        assert chunk, f"the job ended before its round started: {seen[-2000:]!r}"
        seen += chunk
    (torchrun,) = psutil.Process(job.pid).children()
    ranks = torchrun.children()
    assert len(ranks) == 2
    follower = max(ranks, key=lambda rank: rank.pid)  # either rank will do
    follower.send_signal(signal.SIGKILL)
    job.stderr.read()
    assert job.wait(timeout=300) != 0
    assert snapshots.current_version(settings.train.snapshot_dir) == 1  # the half round left no trace
    assert snapshots.load(settings.train.snapshot_dir).manifest.version == 1

    again = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert snapshots.current_version(settings.train.snapshot_dir) == 2
    assert snapshots.load(settings.train.snapshot_dir, 2).ids["item"] == snapshots.load(
        settings.train.snapshot_dir, 1).ids["item"]


def test_scheduled_rounds_on_two_ranks_follow_the_graph_and_stop_on_sigterm(
        ingest_settings: Settings, movielens_sample: list[Event], tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from m2grl.settings import settings_env
    from tests.conftest import REPO_ROOT

    settings = small_training(ingest_settings, tmp_path / "snapshots")
    replay(settings, movielens_sample[:6000], progress=False)
    run_ingest(settings)
    env = {**os.environ, **settings_env(settings), "OMP_NUM_THREADS": "1", "M2GRL_TRAIN_INTERVAL_S": "2",
           "M2GRL_TRAIN_METRICS_PORT": "0"}
    job = subprocess.Popen([sys.executable, "-m", "m2grl", "train", "--nproc", "2"], env=env, cwd=REPO_ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while (snapshots.current_version(settings.train.snapshot_dir) or 0) < 1:
            assert job.poll() is None and time.monotonic() < deadline, "no first version from the ranks"
            time.sleep(0.5)
        first = snapshots.load(settings.train.snapshot_dir)
        replay(settings, movielens_sample[6000:8000], progress=False)
        run_ingest(settings)
        while len(snapshots.load(settings.train.snapshot_dir).ids["item"]) == len(first.ids["item"]):
            assert job.poll() is None and time.monotonic() < deadline, "the ranks' rounds never took the new items"
            time.sleep(0.5)
    finally:
        job.send_signal(signal.SIGTERM)  # the ranks finish their round and stop together
        _, errors = job.communicate(timeout=300)
    assert job.returncode == 0, errors[-3000:]
    later = snapshots.load(settings.train.snapshot_dir)
    assert later.ids["item"][:len(first.ids["item"])] == first.ids["item"]
    assert b"RanksDisagree" not in errors and b"training round failed" not in errors, errors[-3000:]
