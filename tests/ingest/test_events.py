import dataclasses

import pytest

from m2grl.ingest.events import Event, EventRules, Reason, Rejection, decode, decode_message

RULES = EventRules(behaviors=frozenset({"pv", "cart", "fav", "buy"}), max_bytes=4096,
                   min_time_ms=946684800000, max_future_ms=86_400_000)
NOW = 1_800_000_000_000
GOOD = Event("u1", "i1", "pv", 1511544070000, {"category": "c1", "shop": "s9"})


def test_protobuf_and_json_decode_to_the_same_event() -> None:
    assert decode(GOOD.encode(), RULES, now_ms=NOW) == GOOD
    assert decode(GOOD.encode_json(), RULES, now_ms=NOW) == GOOD
    camel = b'{"userId": "u1", "itemId": "i1", "behavior": "pv", "eventTimeMs": "1511544070000",' \
            b' "side": {"category": "c1", "shop": "s9"}}'
    assert decode(camel, RULES, now_ms=NOW) == GOOD


def test_blank_side_values_are_dropped() -> None:
    raw = b'{"user_id": "u", "item_id": "i", "behavior": "buy", "event_time_ms": 1511544070000,' \
          b' "side": {"category": " ", "shop": "s"}}'
    event = decode(raw, RULES, now_ms=NOW)
    assert isinstance(event, Event) and event.side == {"shop": "s"}


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe\x00\x01garbage", Reason.UNDECODABLE),
    (b'{"user_id": "u1", ', Reason.UNDECODABLE),
    (b"plain text, not an event", Reason.UNDECODABLE),
    (b'{"user_id": "u1"}', Reason.MISSING_FIELD),
    (None, Reason.MISSING_FIELD),
    (b'{"user_id": "", "item_id": "i", "behavior": "pv", "event_time_ms": 1511544070000}', Reason.MISSING_FIELD),
    (b'{"user_id": "u", "item_id": "i", "behavior": "pv", "event_time_ms": "soon"}', Reason.BAD_FIELD),
    (b'{"user_id": "u", "item_id": "i", "behavior": "pv", "event_time_ms": 1511544070000, "side": {"c": 5}}',
     Reason.BAD_FIELD),
    (b'{"user_id": "u", "item_id": "i", "behavior": "pv", "event_time_ms": 1511544070000, "colour": "red"}',
     Reason.BAD_FIELD),
    (b'{"user_id": "u", "item_id": "i", "behavior": "like", "event_time_ms": 1511544070000}', Reason.UNKNOWN_BEHAVIOR),
    (b'{"user_id": "u", "item_id": "i", "behavior": "pv", "event_time_ms": 12}', Reason.BAD_TIMESTAMP),
    (b'{"user_id": "u", "item_id": "i", "behavior": "pv", "event_time_ms": 4102444800000}', Reason.BAD_TIMESTAMP),
    (b'{"user_id": "u", "item_id": "' + b"x" * 5000 + b'"}', Reason.OVERSIZED),
    (b'{"user_id": "u", "item_id": "' + b"x" * 257 + b'", "behavior": "pv", "event_time_ms": 1511544070000}',
     Reason.FIELD_TOO_LONG),
    (b'{"user_id": "' + "ü".encode() * 257 + b'", "item_id": "i", "behavior": "pv", "event_time_ms": 1511544070000}',
     Reason.FIELD_TOO_LONG),
    (b'{"user_id": "u", "item_id": "i", "behavior": "pv", "event_time_ms": 1511544070000, "side": {"category": "'
     + b"c" * 300 + b'"}}', Reason.FIELD_TOO_LONG),
])
def test_each_kind_of_bad_input_has_its_reason(raw: bytes | None, reason: Reason) -> None:
    outcome = decode(raw, RULES, now_ms=NOW)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is reason and outcome.detail


def test_protobuf_with_foreign_fields_is_rejected() -> None:
    foreign = GOOD.encode() + b"\xa0\x06\x01"  # field 100, varint 1: not in BehaviorEvent
    outcome = decode(foreign, RULES, now_ms=NOW)
    assert isinstance(outcome, Rejection) and outcome.reason is Reason.UNDECODABLE


def test_the_key_must_be_the_user_id_unless_the_check_is_off() -> None:
    assert decode_message(b"u1", GOOD.encode(), RULES, now_ms=NOW) == GOOD
    for key in (b"u2", None, b""):
        outcome = decode_message(key, GOOD.encode(), RULES, now_ms=NOW)
        assert isinstance(outcome, Rejection) and outcome.reason is Reason.KEY_MISMATCH, key
        assert "'u1'" in outcome.detail
    assert decode_message(b"u2", GOOD.encode(), dataclasses.replace(RULES, key_is_user=False), now_ms=NOW) == GOOD
    # A value that fails its own rules says why, whatever its key.
    assert decode_message(b"zz", b"garbage", RULES, now_ms=NOW).reason is Reason.UNDECODABLE
