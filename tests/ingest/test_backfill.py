"""A new store filled in bulk from the log by neo4j-admin, then streamed on: the graph equals the
from-scratch computation over every event, each malformed message is dead-lettered once, and a
second backfill over a filled store is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2grl.errors import StartupError
from m2grl.graphstore import ping
from m2grl.ingest.events import Event
from m2grl.services import launcher
from m2grl.services.launcher import free_port
from m2grl.settings import Settings, settings_env
from tests.conftest import REPO_ROOT
from tests.ingest.conftest import read_topic, run_ingest, with_malformed
from tests.ingest.reference import assert_same_graph, expected_graph, stored_graph
from tests.ingest.test_ingest_service import GAP_MS, produce_raw

pytestmark = pytest.mark.services

# Ids that a CSV file must quote: commas, quotes, a line break, a backslash before a quote.
HOSTILE = [Event('u,"1"', 'item "a",\nb', "pv", 880_000_000_000, {"category": "x,y"}),
           Event('u,"1"', "item\\\"c", "pv", 880_000_001_000, {"category": 'q"'}),
           Event('u,"1"', 'item "a",\nb', "pv", 880_000_002_000, {"category": "x,y"})]


@pytest.fixture
def own_neo4j(ingest_settings: Settings) -> Iterator[Settings]:
    """The test's settings with a Neo4j of its own, which m2grl runs (and backfill stops and starts)."""
    state = Path(tempfile.mkdtemp(prefix="m2grl-backfill-neo4j-"))
    settings = ingest_settings.model_copy(update={
        "neo4j": ingest_settings.neo4j.model_copy(update={"bolt_port": free_port(), "http_port": free_port()}),
        "services": ingest_settings.services.model_copy(update={"state_dir": state})})
    try:
        yield settings
    finally:
        launcher.stop(launcher.service_named(settings, "neo4j"), report=lambda _: None)
        shutil.rmtree(state, ignore_errors=True)


def backfill(settings: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "m2grl", "graph", "backfill", *extra],
                          env={**os.environ, **settings_env(settings)}, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def test_a_backfilled_store_streams_on_exactly(own_neo4j: Settings, movielens_sample: list[Event]) -> None:
    settings = own_neo4j
    history, later = HOSTILE + movielens_sample[:6000], movielens_sample[6000:9000]
    old_messages, old_bad = with_malformed(history, every=97, seed=3)
    produce_raw(settings, old_messages)

    filled = backfill(settings)
    assert filled.returncode == 0, filled.stdout[-2000:] + filled.stderr[-3000:]
    assert f"{len(history):,} events" in filled.stdout and f"{len(old_bad):,} rejected" in filled.stdout
    assert_same_graph(stored_graph(settings), expected_graph(history, ("category",), GAP_MS))

    new_messages, new_bad = with_malformed(later, every=89, seed=4)
    produce_raw(settings, new_messages)
    run_ingest(settings)
    assert_same_graph(stored_graph(settings), expected_graph(history + later, ("category",), GAP_MS))
    dead = read_topic(settings, settings.ingest.dead_letter_topic)
    assert sorted(value for _, value in dead) == sorted(old_bad + new_bad), "each malformed message, once"

    again = backfill(settings)
    assert again.returncode == 1 and "holds a graph already" in again.stderr, again.stderr[-2000:]

    # Over the same topic again, with every rejection already in the dead-letter topic: none is sent twice.
    replaced = backfill(settings, "--replace")
    assert replaced.returncode == 0, replaced.stdout[-2000:] + replaced.stderr[-3000:]
    assert "(0 sent to" in replaced.stdout, replaced.stdout[-2000:]
    dead = read_topic(settings, settings.ingest.dead_letter_topic)
    assert sorted(value for _, value in dead) == sorted(old_bad + new_bad), "still each malformed message, once"
    assert_same_graph(stored_graph(settings), expected_graph(history + later, ("category",), GAP_MS))


def test_for_a_server_elsewhere_backfill_writes_the_files_and_the_command(
        ingest_settings: Settings, movielens_sample: list[Event], tmp_path: Path) -> None:
    settings = ingest_settings.model_copy(update={"neo4j": ingest_settings.neo4j.model_copy(
        update={"uri": "bolt://graphs.example:7687"})})
    produce_raw(settings, with_malformed(HOSTILE + movielens_sample[:500], every=97, seed=3)[0])
    written = backfill(settings, "--files", str(tmp_path / "import"))
    assert written.returncode == 0, written.stderr[-2000:]
    assert f"neo4j-admin database import full {settings.neo4j.database} --overwrite-destination=true" in written.stdout
    assert "--nodes=Item=item-nodes.csv" in written.stdout  # names from the folder, to run in its copy
    offsets = (tmp_path / "import" / "offsets.csv").read_text().splitlines()
    assert offsets[0].startswith("key:ID(IngestOffset)") and 2 <= len(offsets) <= 5, offsets  # 4 partitions
    assert '"item ""a"",\nb"' in (tmp_path / "import" / "item-nodes.csv").read_text()

    absent = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"topic": "no-such-topic"})})
    refused = backfill(absent, "--files", str(tmp_path / "none"))
    assert refused.returncode == 1 and "'no-such-topic' does not exist" in refused.stderr, refused.stderr[-2000:]


def test_a_failed_import_leaves_the_server_running(own_neo4j: Settings, tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="import full failed"):
        launcher.import_neo4j_database(own_neo4j, [f"--nodes=Item={tmp_path / 'missing.csv'}"], report=lambda _: None)
    ping(own_neo4j.neo4j, timeout_s=10)
