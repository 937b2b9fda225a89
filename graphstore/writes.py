"""The ingest write path: one transaction per batch holds the edges, the sessions and the offsets.

Because the offsets a batch advances commit atomically with the weights it adds, a batch is applied
exactly once: after a crash the consumer resumes from the stored offsets, and a writer that finds the
stored offsets moved by someone else (a rebalance zombie) aborts instead of double counting.

Rows are sorted by key before each UNWIND so concurrent writers take locks in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import neo4j

from m2grl.errors import StaleOffsetsError
from m2grl.graphstore.connection import GraphStore
from m2grl.graphstore.model import NO_OFFSET, GraphDelta, PartitionMark, SessionState
from m2grl.graphstore.schema import OFFSET_LABEL, SESSION_LABEL, ensure_schema
from m2grl.views import View

_LATER = "CASE WHEN {old} IS NULL OR {new} > {old} THEN {new} ELSE {old} END"


def _node_upsert(view: View) -> str:
    return f"""
    UNWIND $rows AS r
    MERGE (n:{view.label} {{id: r.id}})
      ON CREATE SET n.events = 0
    SET n.events = n.events + r.n,
        n.last_seen = {_LATER.format(old='n.last_seen', new='r.t')}"""


# Both ends of a transition exist: every value in a session was upserted as a node by the batch
# that saw it, in the same transaction that recorded it in the session state.
def _transition_upsert(view: View) -> str:
    return f"""
    UNWIND $rows AS r
    MATCH (a:{view.label} {{id: r.src}})
    MATCH (b:{view.label} {{id: r.dst}})
    MERGE (a)-[e:{view.transition_type}]->(b)
      ON CREATE SET e.weight = 0
    SET e.weight = e.weight + r.n,
        e.last_seen = {_LATER.format(old='e.last_seen', new='r.t')},
        e.updated_at = timestamp()"""


def _membership_link(view: View, *, item_nodes_here: bool) -> str:
    # A store without the item view keeps bare Item nodes only as anchors for these links.
    find_item = "MATCH" if item_nodes_here else "MERGE"
    return f"""
    UNWIND $rows AS r
    {find_item} (i:Item {{id: r.src}})
    WITH r, i
    MATCH (v:{view.label} {{id: r.dst}})
    MERGE (i)-[m:{view.membership_type}]->(v)
      ON CREATE SET m.since = r.t, m.updated_at = timestamp()"""


_CLAIM_MARKS = f"""
    UNWIND $marks AS m
    MERGE (o:{OFFSET_LABEL} {{key: m.key}})
      ON CREATE SET o.topic = m.topic, o.partition = m.partition, o.offset = {NO_OFFSET},
                    o.dead_letter_offset = {NO_OFFSET}
    SET o.claimed_at = timestamp()
    RETURN m.partition AS partition, o.offset AS offset, o.dead_letter_offset AS dead_letter_offset"""

_ADVANCE_MARKS = f"""
    UNWIND $marks AS m
    MATCH (o:{OFFSET_LABEL} {{key: m.key}})
    SET o.offset = m.offset, o.dead_letter_offset = m.dead_letter_offset, o.updated_at = timestamp()"""

_SAVE_SESSIONS = f"""
    UNWIND $rows AS r
    MERGE (s:{SESSION_LABEL} {{id: r.id}})
    SET s = r.props"""

_LOAD_MARKS = f"""
    MATCH (o:{OFFSET_LABEL}) WHERE o.topic = $topic
    RETURN o.partition AS partition, o.offset AS offset, o.dead_letter_offset AS dead_letter_offset"""

_LOAD_SESSIONS = f"""
    UNWIND $ids AS id
    MATCH (s:{SESSION_LABEL} {{id: id}})
    RETURN properties(s) AS props"""


def _tally_rows(table: Mapping[Any, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(table):
        tally = table[key]
        row = {"n": tally.count, "t": tally.last_seen_ms}
        if isinstance(key, tuple):
            row["src"], row["dst"] = key
        else:
            row["id"] = key
        rows.append(row)
    return rows


def _session_rows(sessions: Mapping[str, SessionState]) -> list[dict[str, Any]]:
    rows = []
    for user_id in sorted(sessions):
        state = sessions[user_id]
        props: dict[str, Any] = {"id": user_id, "last_time": state.last_seen_ms}
        props.update({f"last_{view}": value for view, value in state.last.items()})
        rows.append({"id": user_id, "props": props})
    return rows


def mark_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


MEMBERSHIP_CACHE_LIMIT = 5_000_000  # links; beyond this the cache restarts empty

# Called inside the write transaction once its partitions are claimed, with what the store holds for
# them; returns the dead-letter offsets to store with the new marks (partitions it leaves out keep theirs).
ClaimedHook = Callable[[Mapping[int, PartitionMark]], Mapping[int, int]]


@dataclass(frozen=True)
class PendingWrite:
    """A delta as Cypher statements with their rows, and the membership links they create."""

    statements: list[tuple[str, list[dict[str, Any]]]]
    new_links: list[tuple[str, str, str]]


class BehaviorGraphWriter:
    """Writes ingest batches for some views into one Neo4j database."""

    def __init__(self, store: GraphStore, views: tuple[View, ...], topic: str) -> None:
        self.store = store
        self.views = views
        self.topic = topic
        self._item_nodes_here = any(view.is_item for view in views)
        # Membership links are never removed, so a link this writer committed once needs no
        # further writes; the cache only saves work and may be dropped at any time.
        self._known_links: set[tuple[str, str, str]] = set()

    def ensure_schema(self) -> None:
        ensure_schema(self.store, self.views)

    def load_marks(self) -> dict[int, PartitionMark]:
        rows = self.store.read(_LOAD_MARKS, topic=self.topic)
        return {int(r["partition"]): PartitionMark(int(r["offset"]), int(r["dead_letter_offset"])) for r in rows}

    def load_sessions(self, user_ids: Iterable[str]) -> dict[str, SessionState]:
        rows = self.store.read(_LOAD_SESSIONS, ids=sorted(set(user_ids)))
        sessions = {}
        for row in rows:
            props = row["props"]
            last = {key[len("last_"):]: value for key, value in props.items()
                    if key.startswith("last_") and key != "last_time"}
            sessions[props["id"]] = SessionState(last_seen_ms=int(props["last_time"]), last=last)
        return sessions

    def prepare(self, delta: GraphDelta) -> PendingWrite:
        """The statements that write ``delta``, built apart from the transaction so that a caller can
        build the next batch's while this one commits. Safe beside ``write``: a link it skips was
        committed already, one it keeps that a batch in flight commits first is merged again."""
        statements: list[tuple[str, list[dict[str, Any]]]] = []
        new_links: list[tuple[str, str, str]] = []
        for view in self.views:
            statements.append((_node_upsert(view), _tally_rows(delta.nodes[view.name])))
            statements.append((_transition_upsert(view), _tally_rows(delta.transitions[view.name])))
            if not view.is_item:
                links = {key: tally for key, tally in delta.memberships[view.name].items()
                         if (view.name, *key) not in self._known_links}
                new_links.extend((view.name, *key) for key in links)
                statements.append((_membership_link(view, item_nodes_here=self._item_nodes_here),
                                   _tally_rows(links)))
        statements.append((_SAVE_SESSIONS, _session_rows(delta.sessions)))
        return PendingWrite([(cypher, rows) for cypher, rows in statements if rows], new_links)

    def commit(self, delta: GraphDelta, expected: Mapping[int, int], advance: Mapping[int, int]) -> None:
        """``prepare`` and ``write`` in one go, for callers that do not plan ahead."""
        self.write(self.prepare(delta), expected, advance)

    def write(self, pending: PendingWrite, expected: Mapping[int, int], advance: Mapping[int, int], *,
              on_claimed: ClaimedHook | None = None) -> dict[int, PartitionMark]:
        """Apply ``pending`` and move the partitions' offsets to ``advance`` in one transaction, if the
        stored offsets still equal ``expected``; otherwise raise StaleOffsetsError and change nothing.

        ``on_claimed`` runs while the transaction holds the partitions' offset nodes locked: a
        concurrent writer of the same partitions waits until this one commits or aborts. Returns the
        marks committed."""

        def work(tx: neo4j.ManagedTransaction) -> dict[int, PartitionMark]:
            # Claiming the offset nodes first write-locks them: a concurrent writer of the same
            # partitions waits here, then sees our offsets and aborts.
            claims = [{"key": mark_key(self.topic, p), "topic": self.topic, "partition": p} for p in sorted(advance)]
            stored = {int(r["partition"]): PartitionMark(int(r["offset"]), int(r["dead_letter_offset"]))
                      for r in tx.run(_CLAIM_MARKS, marks=claims)}
            moved = {p: stored[p].offset for p in expected if stored[p].offset != expected[p]}
            if moved:
                raise StaleOffsetsError(f"stored offsets moved under us: {moved}, expected "
                                        f"{ {p: expected[p] for p in moved} }")
            dead_letter_offsets = on_claimed(stored) if on_claimed is not None else {}
            new = {p: PartitionMark(offset, dead_letter_offsets.get(p, stored[p].dead_letter_offset))
                   for p, offset in advance.items()}
            for cypher, rows in pending.statements:
                tx.run(cypher, rows=rows).consume()
            tx.run(_ADVANCE_MARKS, marks=[{"key": mark_key(self.topic, p), "offset": mark.offset,
                                           "dead_letter_offset": mark.dead_letter_offset}
                                          for p, mark in sorted(new.items())]).consume()
            return new

        committed = self.store.write_transaction(work)
        if len(self._known_links) + len(pending.new_links) > MEMBERSHIP_CACHE_LIMIT:
            self._known_links.clear()
        self._known_links.update(pending.new_links)
        return committed

    def trial(self, pending: PendingWrite) -> None:
        """Run ``pending``'s statements and roll them back: raises what Neo4j would raise on ``write``
        (GraphStoreRefused for values it will not store), changes nothing."""

        def work(tx: neo4j.Transaction) -> None:
            for cypher, rows in pending.statements:
                tx.run(cypher, rows=rows).consume()

        self.store.rolled_back(work)
