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


def _tally(table: dict[object, Tally], key: object, time_ms: int) -> None:
    entry = table.get(key)
    if entry is None:
        entry = table[key] = Tally()
    entry.add(time_ms)


def value_of(event: Event, view: View) -> str | None:
    return event.item_id if view.is_item else event.side.get(view.name)


def extract(events: Iterable[Event], prior: Mapping[str, SessionState], views: tuple[View, ...],
            gap_ms: int) -> GraphDelta:
    """Fold ``events`` (in arrival order) into a delta, starting from each user's ``prior`` session."""
    delta = GraphDelta(views=views)
    sessions = delta.sessions
    for event in events:
        delta.events += 1
        state = sessions.get(event.user_id) or prior.get(event.user_id)
        values = {view.name: value_of(event, view) for view in views}
        continues = state is not None and event.time_ms - state.last_time_ms <= gap_ms
        last = dict(state.last) if continues else {}
        for view in views:
            value = values[view.name]
            if value is None:
                continue
            previous = last.get(view.name)
            if previous is not None and previous != value:
                _tally(delta.transitions[view.name], (previous, value), event.time_ms)
            last[view.name] = value
            _tally(delta.nodes[view.name], value, event.time_ms)
            if not view.is_item:
                _tally(delta.memberships[view.name], (event.item_id, value), event.time_ms)
        last_time = max(state.last_time_ms, event.time_ms) if continues else event.time_ms
        sessions[event.user_id] = SessionState(last_time_ms=last_time, last=last)
    return delta
