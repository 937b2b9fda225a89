"""Everything that speaks Cypher to Neo4j. No Cypher exists anywhere else in m2grl."""

from m2grl.graphstore.connection import GraphStore, ping

__all__ = ["GraphStore", "ping"]
