"""What the trainer reads: a view's weighted transitions and item memberships, all or since a
watermark. Weights are read as absolute values, so reading an edge twice is harmless and the
watermark can overlap generously."""

from __future__ import annotations

from dataclasses import dataclass, field

from m2grl.graphstore.connection import GraphStore
from m2grl.views import View


@dataclass(frozen=True)
class ViewRead:
    """Columns of one read. ``watermark_ms`` is the database clock when the read began: pass it
    (minus an overlap) as ``since_ms`` next time."""

    view: str
    watermark_ms: int
    src: list[str] = field(default_factory=list)
    dst: list[str] = field(default_factory=list)
    weight: list[int] = field(default_factory=list)
    member_items: list[str] = field(default_factory=list)
    member_values: list[str] = field(default_factory=list)


def database_time_ms(store: GraphStore) -> int:
    return int(store.read("RETURN timestamp() AS now")[0]["now"])


def read_view(store: GraphStore, view: View, since_ms: int | None = None) -> ViewRead:
    """Transitions (and, for side views, memberships) updated at or after ``since_ms`` (None: all)."""
    watermark = database_time_ms(store)
    since = since_ms if since_ms is not None else -1
    edges = store.read(
        f"MATCH (a:{view.label})-[r:{view.transition_type}]->(b:{view.label}) WHERE r.updated_at >= $since "
        "RETURN a.id AS src, b.id AS dst, r.weight AS w", since=since)
    read = ViewRead(view=view.name, watermark_ms=watermark, src=[r["src"] for r in edges],
                    dst=[r["dst"] for r in edges], weight=[int(r["w"]) for r in edges])
    if not view.is_item:
        _add_memberships(store, view, since, read)
    return read


def read_memberships(store: GraphStore, view: View, since_ms: int) -> ViewRead:
    """Only the item memberships of side view ``view`` linked at or after ``since_ms``: the cheap
    read that finds brand-new items between training rounds."""
    read = ViewRead(view=view.name, watermark_ms=database_time_ms(store))
    _add_memberships(store, view, since_ms, read)
    return read


def _add_memberships(store: GraphStore, view: View, since: int, read: ViewRead) -> None:
    rows = store.read(
        f"MATCH (i:Item)-[r:{view.membership_type}]->(v:{view.label}) WHERE r.updated_at >= $since "
        "RETURN i.id AS item, v.id AS value", since=since)
    read.member_items.extend(r["item"] for r in rows)
    read.member_values.extend(r["value"] for r in rows)
