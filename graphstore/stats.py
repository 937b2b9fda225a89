"""Per-view size and freshness of the graphs, for `m2grl graph stats` and the benchmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from m2grl.graphstore.connection import GraphStore
from m2grl.views import View


@dataclass(frozen=True)
class ViewStats:
    view: str
    nodes: int
    edges: int
    total_weight: int
    memberships: int
    last_update_ms: int | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def view_stats(store: GraphStore, view: View) -> ViewStats:
    nodes = store.read(f"MATCH (n:{view.label}) RETURN count(n) AS c")[0]["c"]
    edges = store.read(
        f"MATCH ()-[r:{view.transition_type}]->() "
        "RETURN count(r) AS c, coalesce(sum(r.weight), 0) AS w, max(r.updated_at) AS t")[0]
    last = edges["t"]
    memberships = 0
    if not view.is_item:
        linked = store.read(f"MATCH ()-[r:{view.membership_type}]->() RETURN count(r) AS c, max(r.updated_at) AS t")[0]
        memberships = linked["c"]
        last = max(filter(None, (last, linked["t"])), default=None)
    node_update = store.read(f"MATCH (n:{view.label}) RETURN max(n.updated_at) AS t")[0]["t"]
    last = max(filter(None, (last, node_update)), default=None)
    return ViewStats(view=view.name, nodes=nodes, edges=edges["c"], total_weight=edges["w"],
                     memberships=memberships, last_update_ms=last)


def transition_weights(store: GraphStore, view: View) -> dict[tuple[str, str], int]:
    """Every transition edge of ``view`` with its weight (for verification against a reference)."""
    rows = store.read(f"MATCH (a:{view.label})-[r:{view.transition_type}]->(b:{view.label}) "
                      "RETURN a.id AS src, b.id AS dst, r.weight AS w")
    return {(r["src"], r["dst"]): r["w"] for r in rows}


def memberships(store: GraphStore, view: View) -> set[tuple[str, str]]:
    rows = store.read(f"MATCH (i:Item)-[:{view.membership_type}]->(v:{view.label}) RETURN i.id AS src, v.id AS dst")
    return {(r["src"], r["dst"]) for r in rows}


def node_events(store: GraphStore, view: View) -> dict[str, int]:
    rows = store.read(f"MATCH (n:{view.label}) WHERE n.events > 0 RETURN n.id AS id, n.events AS n")
    return {r["id"]: r["n"] for r in rows}


def transition_updated_at(store: GraphStore, view: View, src: str, dst: str) -> int | None:
    """When the transition ``src`` → ``dst`` of ``view`` was last written (database time, ms), or None."""
    rows = store.read(f"MATCH (:{view.label} {{id: $src}})-[r:{view.transition_type}]->(:{view.label} {{id: $dst}}) "
                      "RETURN r.updated_at AS t", src=src, dst=dst)
    return rows[0]["t"] if rows else None
