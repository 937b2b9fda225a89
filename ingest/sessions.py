"""Sessionization and transition extraction: events in, aggregated graph deltas out. Pure, no I/O.

Rules (the EGES/DGL practice the paper builds on):
- Events are taken in arrival order per user (Kafka keeps one user's events in order within a
  partition). A gap of more than ``gap_ms`` since the user's latest event starts a new session; a
  late event (earlier than the latest one seen) continues the current session.
- Within a session, consecutive values of a view form a directed transition; a repeat of the same
  value adds nothing (repeats collapse, self-loops drop). An event without a value for a side view
  leaves that view's sequence untouched.
- Every event counts once for the node it touches in each view, and links its item to each side
  value it carries (a membership; repeated links collapse into one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from m2grl.graphstore.model import GraphDelta, SessionState, Tally
from m2grl.ingest.events import Event
from m2grl.views import View


def _count(table: dict, key: object, event_time_ms: int) -> None:
    entry = table.get(key)
    if entry is None:
        table[key] = Tally(1, event_time_ms)
    else:
        entry.count += 1
        if event_time_ms > entry.last_seen_ms:
            entry.last_seen_ms = event_time_ms


def extract(events: Iterable[Event], prior: Mapping[str, SessionState], views: tuple[View, ...],
            gap_ms: int) -> GraphDelta:
    """Fold ``events`` (in arrival order) into a delta, starting from each user's ``prior`` session."""
    delta = GraphDelta(views=views)
    sessions = delta.sessions
    # One tuple per view, resolved once: this loop runs for every event of the stream.
    lanes = [(view.name, view.is_item, delta.nodes[view.name], delta.transitions[view.name],
              delta.memberships.get(view.name)) for view in views]
    for event in events:
        delta.events += 1
        event_time_ms = event.event_time_ms
        state = sessions.get(event.user_id) or prior.get(event.user_id)
        if state is not None and event_time_ms - state.last_seen_ms <= gap_ms:
            last = dict(state.last)
            last_seen = max(state.last_seen_ms, event_time_ms)
        else:
            last = {}
            last_seen = event_time_ms
        for name, is_item, nodes, transitions, memberships in lanes:
            value = event.item_id if is_item else event.side.get(name)
            if value is None:
                continue
            previous = last.get(name)
            if previous is not None and previous != value:
                _count(transitions, (previous, value), event_time_ms)
            last[name] = value
            _count(nodes, value, event_time_ms)
            if memberships is not None:
                _count(memberships, (event.item_id, value), event_time_ms)
        sessions[event.user_id] = SessionState(last_seen_ms=last_seen, last=last)
    return delta
