"""Constraints and indexes of the per-view graphs, created idempotently at start-up."""

from __future__ import annotations

from m2grl.errors import GraphStoreError
from m2grl.graphstore.connection import GraphStore
from m2grl.views import View

SESSION_LABEL = "IngestSession"
OFFSET_LABEL = "IngestOffset"


def schema_statements(views: tuple[View, ...]) -> list[str]:
    statements = [
        f"CREATE CONSTRAINT m2grl_ingest_session_id IF NOT EXISTS FOR (s:{SESSION_LABEL}) REQUIRE s.id IS UNIQUE",
        f"CREATE CONSTRAINT m2grl_ingest_offset_key IF NOT EXISTS FOR (o:{OFFSET_LABEL}) REQUIRE o.key IS UNIQUE",
    ]
    labels = {view.label for view in views} | {"Item"}  # side-view stores hold Item nodes for memberships
    for label in sorted(labels):
        statements.append(
            f"CREATE CONSTRAINT m2grl_{label.lower()}_id IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE")
    for view in views:
        # The trainer reads what changed since its last watermark through these.
        statements.append(f"CREATE INDEX m2grl_{view.name}_next_updated IF NOT EXISTS "
                          f"FOR ()-[r:{view.transition_type}]-() ON (r.updated_at)")
        if not view.is_item:
            statements.append(f"CREATE INDEX m2grl_{view.name}_membership_updated IF NOT EXISTS "
                              f"FOR ()-[r:{view.membership_type}]-() ON (r.updated_at)")
    return statements


def ensure_schema(store: GraphStore, views: tuple[View, ...]) -> None:
    """Create what is missing. Concurrent starts may race on the same rule: one retry settles it."""
    for statement in schema_statements(views):
        try:
            store.write(statement)
        except GraphStoreError:
            store.write(statement)
    store.write("CALL db.awaitIndexes(300)")
