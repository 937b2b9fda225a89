"""A side view in a Neo4j server of its own: each store keeps its own offsets, the consumer resumes
from the least advanced one, and a kill -9 between the two stores' commits loses nothing and counts
nothing twice. Training then reads each view from where it lives."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2grl import snapshots
from m2grl.graphstore import GraphStore
from m2grl.graphstore.maintenance import wipe_graph
from m2grl.graphstore.stats import view_stats
from m2grl.ingest.events import Event
from m2grl.ingest.replay import replay
from m2grl.services import launcher
from m2grl.services.launcher import free_port
from m2grl.settings import Settings, ViewStore
from m2grl.train.trainer import Trainer
from tests.ingest.conftest import kill_at_random_moments, run_ingest, with_ingest
from tests.ingest.reference import assert_same_graph, expected_graph, stored_graph

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def second_neo4j(stack: Settings) -> Iterator[str]:
    """Another Neo4j server, started by the same launcher on free ports; its bolt URI."""
    state = Path(tempfile.mkdtemp(prefix="m2grl-second-neo4j-"))
    bolt = free_port()
    other = stack.model_copy(update={
        "neo4j": stack.neo4j.model_copy(update={"bolt_port": bolt, "http_port": free_port()}),
        "services": stack.services.model_copy(update={"state_dir": state})})
    service = launcher.service_named(other, "neo4j")
    launcher.start(service, report=lambda _: None)
    try:
        yield f"bolt://127.0.0.1:{bolt}"
    finally:
        launcher.stop(service, report=lambda _: None)
        shutil.rmtree(state, ignore_errors=True)


def test_a_view_in_its_own_server_survives_kills_exactly(ingest_settings: Settings, second_neo4j: str,
                                                         movielens_sample: list[Event], tmp_path: Path) -> None:
    settings = with_ingest(ingest_settings, batch_max_records=300)
    settings = settings.model_copy(update={"views": settings.views.model_copy(
        update={"stores": {"category": ViewStore(uri=second_neo4j)}})})
    category = settings.views.viewset.by_name("category")
    with GraphStore(settings.neo4j_for(category)) as store:
        wipe_graph(store)
    events = movielens_sample[:8000]
    replay(settings, events, progress=False)
    kill_at_random_moments(settings, tmp_path, kills=3, seed=3, between_s=(3.0, 6.0))
    run_ingest(settings)
    assert_same_graph(stored_graph(settings), expected_graph(events, ("category",), 30 * 60 * 1000))
    with GraphStore(settings.neo4j) as default, GraphStore(settings.neo4j_for(category)) as own:
        assert view_stats(default, category).edges == 0, "the category graph must live only in its own server"
        assert view_stats(own, category).edges > 0 and view_stats(own, settings.views.viewset.item).edges == 0

    settings = settings.model_copy(update={"train": settings.train.model_copy(update=dict(
        dim=16, walks_per_node=2, walk_length=5, window=2, snapshot_dir=tmp_path / "snapshots"))})
    trainer = Trainer(settings)
    try:
        trainer.round()
    finally:
        trainer.close()
    snap = snapshots.load(settings.train.snapshot_dir)
    assert len(snap.ids["category"]) == len({e.side["category"] for e in events})
    assert (snap.members["category"] >= 0).all()  # every item linked to its genre, read from the other server
