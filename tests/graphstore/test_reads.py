"""The trainer's reads see exactly what the ingest writer committed, all of it or since a watermark."""

from __future__ import annotations

import time

import pytest

from m2grl.graphstore import GraphStore
from m2grl.graphstore.maintenance import wipe_graph
from m2grl.graphstore.reads import read_view
from m2grl.graphstore.writes import BehaviorGraphWriter
from m2grl.ingest.events import Event
from m2grl.ingest.sessions import extract
from m2grl.settings import Settings
from m2grl.views import ViewSet

pytestmark = pytest.mark.services
VIEWS = ViewSet(("category",))


def events(user: str, items: list[tuple[str, str]], start_ms: int) -> list[Event]:
    return [Event(user, item, "pv", start_ms + i * 1000, {"category": cat}) for i, (item, cat) in enumerate(items)]


def test_full_and_delta_reads(stack: Settings) -> None:
    with GraphStore(stack.neo4j) as store:
        wipe_graph(store)
        writer = BehaviorGraphWriter(store, VIEWS.all, topic="reads-test")
        writer.ensure_schema()
        first = extract(events("u1", [("a", "x"), ("b", "x"), ("c", "y")], 1_511_544_000_000), {}, VIEWS.all,
                        1_800_000)
        writer.commit(first, {0: -1}, {0: 2})

        everything = read_view(store, VIEWS.item)
        assert sorted(zip(everything.src, everything.dst, everything.weight)) == [("a", "b", 1), ("b", "c", 1)]
        categories = read_view(store, VIEWS.side[0])
        assert list(zip(categories.src, categories.dst)) == [("x", "y")]
        assert sorted(zip(categories.member_items, categories.member_values)) == [("a", "x"), ("b", "x"), ("c", "y")]

        time.sleep(0.05)
        second = extract(events("u1", [("a", "x"), ("d", "z")], 1_511_544_010_000), first.sessions, VIEWS.all,
                         1_800_000)
        writer.commit(second, {0: 2}, {0: 4})
        delta = read_view(store, VIEWS.item, since_ms=everything.watermark_ms)
        # c->a continues u1's session; a->d is new. Weights are absolute, not increments.
        assert sorted(zip(delta.src, delta.dst, delta.weight)) == [("a", "d", 1), ("c", "a", 1)]
        side_delta = read_view(store, VIEWS.side[0], since_ms=everything.watermark_ms)
        assert list(zip(side_delta.member_items, side_delta.member_values)) == [("d", "z")]
        assert delta.watermark_ms >= everything.watermark_ms
