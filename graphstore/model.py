"""The data the write path hands to the graph store: aggregated deltas, session state, offsets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from m2grl.views import View

NO_OFFSET = -1
Key = TypeVar("Key")


@dataclass(frozen=True, slots=True)
class SessionState:
    """Where a user's current session stands: its latest event time and, per view, the latest value."""

    last_seen_ms: int
    last: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """How far a store has applied one source partition.

    ``offset`` is the last source offset whose effects the store holds (NO_OFFSET: none yet);
    ``dead_letter_offset`` is the dead-letter topic's end, in the partition this source partition
    dead-letters into, once the rejections up to ``offset`` were sent (NO_OFFSET: unknown).
    """

    offset: int = NO_OFFSET
    dead_letter_offset: int = NO_OFFSET


@dataclass(slots=True)
class Tally:
    """How often something happened in a batch, and when it last did (event time, ms)."""

    count: int = 0
    last_seen_ms: int = 0

    def add(self, event_time_ms: int) -> None:
        self.count += 1
        self.last_seen_ms = max(self.last_seen_ms, event_time_ms)


@dataclass
class GraphDelta:
    """Everything one batch adds to the graphs of some views, aggregated before writing."""

    views: tuple[View, ...]
    nodes: dict[str, dict[str, Tally]] = field(default_factory=dict)
    transitions: dict[str, dict[tuple[str, str], Tally]] = field(default_factory=dict)
    memberships: dict[str, dict[tuple[str, str], Tally]] = field(default_factory=dict)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    events: int = 0

    def __post_init__(self) -> None:
        for view in self.views:
            self.nodes.setdefault(view.name, {})
            self.transitions.setdefault(view.name, {})
            if not view.is_item:
                self.memberships.setdefault(view.name, {})

    def then(self, later: GraphDelta) -> None:
        """Take in ``later`` (a delta of the same views extracted after this one, from its
        sessions): counts add up, last-seen times and sessions are the later ones. Its tallies
        become this delta's own."""
        for view in self.views:
            _absorb(self.nodes[view.name], later.nodes[view.name])
            _absorb(self.transitions[view.name], later.transitions[view.name])
            if not view.is_item:
                _absorb(self.memberships[view.name], later.memberships[view.name])
        self.sessions.update(later.sessions)
        self.events += later.events


def _absorb(into: dict[Key, Tally], table: dict[Key, Tally]) -> None:
    for key, tally in table.items():
        held = into.setdefault(key, tally)
        if held is not tally:
            held.count += tally.count
            held.last_seen_ms = max(held.last_seen_ms, tally.last_seen_ms)
