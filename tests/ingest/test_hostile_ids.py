"""All Cypher is parameterized: ids full of quotes, braces and Cypher are stored verbatim, nothing runs."""

from __future__ import annotations

import pytest

from m2grl.graphstore import GraphStore
from m2grl.graphstore.stats import node_events
from m2grl.ingest.events import Event
from m2grl.ingest.replay import replay
from m2grl.settings import Settings
from tests.ingest.conftest import run_ingest
from tests.ingest.reference import assert_same_graph, expected_graph, stored_graph

pytestmark = pytest.mark.services

HOSTILE = [
    'it"em', "it'em", "x'}) DETACH DELETE n //", "`Item`", "{id: 1}", "MATCH (n) DETACH DELETE n",
    "$id", "a\\b", "new\nline", "ünïcødé 😀", "1; DROP CONSTRAINT item_id", "}]->(:Item)<-[{",
]


def test_ids_with_quotes_braces_and_cypher_are_stored_verbatim(ingest_settings: Settings) -> None:
    start = 1_511_544_070_000
    events = [Event(user, item, "pv", start + n * 1000, {"category": HOSTILE[-1 - n % len(HOSTILE)]})
              for user in ("u'1", "u}2") for n, item in enumerate(HOSTILE)]
    replay(ingest_settings, events, progress=False)
    totals = run_ingest(ingest_settings)
    assert totals["applied"] == len(events) and totals["dead_lettered"] == 0
    assert_same_graph(stored_graph(ingest_settings), expected_graph(events, ("category",), 30 * 60 * 1000))
    with GraphStore(ingest_settings.neo4j) as store:
        stored = set(node_events(store, ingest_settings.views.viewset.all[0]))
    assert stored == set(HOSTILE)  # every id verbatim; none ran as Cypher (the graph would be gone)
