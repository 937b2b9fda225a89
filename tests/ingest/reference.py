"""An independent, from-scratch computation of the graph a stream of events must produce.

Written differently from m2grl.ingest.sessions on purpose (per user: split into sessions, then
collapse each view's sequence), so the tests compare two implementations of the rules.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import pairwise

from m2grl.graphstore import GraphStore
from m2grl.graphstore.stats import memberships, node_events, transition_weights
from m2grl.ingest.events import Event
from m2grl.settings import Settings


@dataclass
class Graph:
    transitions: dict[str, dict[tuple[str, str], int]]
    node_events: dict[str, dict[str, int]]
    memberships: dict[str, set[tuple[str, str]]]


def expected_graph(events: list[Event], side_views: tuple[str, ...], gap_ms: int) -> Graph:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    views = ("item", *side_views)
    transitions = {v: Counter() for v in views}
    nodes = {v: Counter() for v in views}
    links = {v: set() for v in side_views}
    for history in by_user.values():
        sessions, current, clock = [], [], None
        for event in history:
            if clock is not None and event.event_time_ms - clock > gap_ms:
                sessions.append(current)
                current, clock = [], None
            current.append(event)
            clock = event.event_time_ms if clock is None else max(clock, event.event_time_ms)
        sessions.append(current)
        for session in sessions:
            for view in views:
                seq = [e.item_id if view == "item" else e.side.get(view) for e in session]
                seq = [value for value in seq if value]
                nodes[view].update(seq)
                collapsed = [value for i, value in enumerate(seq) if i == 0 or value != seq[i - 1]]
                transitions[view].update(pairwise(collapsed))
        for event in history:
            for view in side_views:
                if event.side.get(view):
                    links[view].add((event.item_id, event.side[view]))
    return Graph({v: dict(c) for v, c in transitions.items()}, {v: dict(c) for v, c in nodes.items()}, links)


def stored_graph(settings: Settings) -> Graph:
    transitions, nodes, links = {}, {}, {}
    for view in settings.views.viewset.all:
        with GraphStore(settings.neo4j_for(view)) as store:
            transitions[view.name] = transition_weights(store, view)
            nodes[view.name] = node_events(store, view)
            if not view.is_item:
                links[view.name] = memberships(store, view)
    return Graph(transitions, nodes, links)


def assert_same_graph(actual: Graph, expected: Graph) -> None:
    for view, weights in expected.transitions.items():
        got = actual.transitions[view]
        missing = {k: w for k, w in weights.items() if got.get(k) != w}
        extra = {k: w for k, w in got.items() if k not in weights}
        assert not missing and not extra, (
            f"view {view}: {len(missing)} edges wrong or missing (e.g. "
            f"{list(missing.items())[:3]} vs stored {[got.get(k) for k in list(missing)[:3]]}), "
            f"{len(extra)} unexpected (e.g. {list(extra.items())[:3]})")
        assert actual.node_events[view] == expected.node_events[view], f"view {view}: node event counts differ"
    for view, pairs in expected.memberships.items():
        assert actual.memberships[view] == pairs, f"view {view}: memberships differ"
