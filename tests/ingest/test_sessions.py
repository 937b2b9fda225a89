from m2grl.graphstore.model import SessionState
from m2grl.ingest.events import Event
from m2grl.ingest.sessions import extract
from m2grl.views import ViewSet

VIEWS = ViewSet(("category",)).all
GAP = 30 * 60 * 1000
T0 = 1_511_544_000_000
MIN = 60_000


def ev(user: str, item: str, minute: float, category: str | None = None) -> Event:
    return Event(user, item, "pv", T0 + int(minute * MIN), {"category": category} if category else {})


def weights(delta, view: str) -> dict[tuple[str, str], int]:
    return {key: tally.count for key, tally in delta.transitions[view].items()}


def test_transitions_repeats_and_gaps() -> None:
    events = [
        ev("u", "a", 0, "c1"), ev("u", "a", 1, "c1"),  # repeat: no self-loop
        ev("u", "b", 2, "c1"),                          # a->b; category stays c1: nothing
        ev("u", "c", 3, "c2"),                          # b->c, c1->c2
        ev("u", "a", 40, "c1"),                         # 37 minutes later: new session, no edge
        ev("u", "b", 41, "c1"),                         # a->b again
    ]
    delta = extract(events, {}, VIEWS, GAP)
    assert weights(delta, "item") == {("a", "b"): 2, ("b", "c"): 1}
    assert weights(delta, "category") == {("c1", "c2"): 1}
    assert {k: t.count for k, t in delta.nodes["item"].items()} == {"a": 3, "b": 2, "c": 1}
    assert set(delta.memberships["category"]) == {("a", "c1"), ("b", "c1"), ("c", "c2")}
    assert delta.sessions["u"] == SessionState(T0 + 41 * MIN, {"item": "b", "category": "c1"})


def test_gap_boundary_is_inclusive() -> None:
    delta = extract([ev("u", "a", 0), ev("u", "b", 30)], {}, VIEWS, GAP)
    assert weights(delta, "item") == {("a", "b"): 1}
    delta = extract([ev("u", "a", 0), ev("u", "b", 30.001)], {}, VIEWS, GAP)
    assert weights(delta, "item") == {}


def test_missing_side_value_leaves_that_sequence_alone() -> None:
    delta = extract([ev("u", "a", 0, "c1"), ev("u", "b", 1), ev("u", "c", 2, "c2")], {}, VIEWS, GAP)
    assert weights(delta, "category") == {("c1", "c2"): 1}
    assert weights(delta, "item") == {("a", "b"): 1, ("b", "c"): 1}


def test_sessions_continue_across_batches_and_users_stay_apart() -> None:
    prior = {"u": SessionState(T0, {"item": "a", "category": "c1"})}
    delta = extract([ev("v", "x", 1), ev("u", "b", 2, "c2"), ev("v", "y", 3)], prior, VIEWS, GAP)
    assert weights(delta, "item") == {("a", "b"): 1, ("x", "y"): 1}
    assert weights(delta, "category") == {("c1", "c2"): 1}


def test_late_event_continues_the_session_without_moving_its_clock_back() -> None:
    delta = extract([ev("u", "a", 10), ev("u", "b", 5), ev("u", "c", 39)], {}, VIEWS, GAP)
    # b is late (minute 5 after minute 10) but joins the session; the clock stays at minute 10,
    # so c at minute 39 is within 30 minutes of it.
    assert weights(delta, "item") == {("a", "b"): 1, ("b", "c"): 1}
