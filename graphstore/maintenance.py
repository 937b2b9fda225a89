"""Whole-database maintenance: the benchmarks and the demo wipe their own databases before a run."""

from __future__ import annotations

from m2grl.graphstore.connection import GraphStore


def wipe_graph(store: GraphStore) -> None:
    """Delete every node and relationship of the database, in bounded transactions."""
    store.write_autocommit("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS")


def holds_data(store: GraphStore) -> bool:
    """True when the database has any node at all."""
    return bool(store.read("MATCH (n) RETURN count(n) > 0 AS any")[0]["any"])
