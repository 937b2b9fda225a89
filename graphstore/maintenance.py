"""Destructive maintenance, used by benchmarks on their own throwaway databases."""

from __future__ import annotations

from m2grl.graphstore.connection import GraphStore


def wipe_graph(store: GraphStore) -> None:
    """Delete every node and relationship of the database, in bounded transactions."""
    store.write_autocommit("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS")
