"""Behaviour events: decoding raw Kafka values into domain objects, or into a reason for rejection.

Pure functions, no I/O: the consumer loop calls ``decode`` and routes rejections to the dead-letter
topic. A value whose first non-blank byte is ``{`` is read as the JSON encoding of BehaviorEvent;
anything else as its protobuf encoding (a valid BehaviorEvent cannot start with that byte).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from google.protobuf import json_format, unknown_fields
from google.protobuf.message import DecodeError

from m2grl.protos import events_pb2
from m2grl.settings import IngestSettings


class Reason(str, enum.Enum):  # noqa: UP042 - StrEnum would change str()/format() from Reason.X to the value
    """Why a message was dead-lettered; sent as the ``reason`` header."""

    UNDECODABLE = "undecodable"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    UNKNOWN_BEHAVIOR = "unknown_behavior"
    BAD_TIMESTAMP = "bad_timestamp"
    OVERSIZED = "oversized"
    FIELD_TOO_LONG = "field_too_long"
    KEY_MISMATCH = "key_mismatch"
    REFUSED = "refused_by_neo4j"  # decoded fine, but Neo4j would not store it (found by the applier)


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    behavior: str
    event_time_ms: int
    side: dict[str, str] = field(default_factory=dict)

    def to_proto(self) -> events_pb2.BehaviorEvent:
        return events_pb2.BehaviorEvent(user_id=self.user_id, item_id=self.item_id, behavior=self.behavior,
                                        event_time_ms=self.event_time_ms, side=self.side)

    def encode(self) -> bytes:
        return self.to_proto().SerializeToString()

    def encode_json(self) -> bytes:
        return json.dumps({"user_id": self.user_id, "item_id": self.item_id, "behavior": self.behavior,
                           "event_time_ms": self.event_time_ms, "side": self.side}).encode()


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str


@dataclass(frozen=True)
class EventRules:
    """What a valid event looks like; built from IngestSettings."""

    behaviors: frozenset[str]
    max_bytes: int
    min_time_ms: int
    max_future_ms: int
    max_field_chars: int = 256
    key_is_user: bool = True

    @classmethod
    def of(cls, ingest: IngestSettings) -> EventRules:
        return cls(behaviors=frozenset(ingest.behaviors), max_bytes=ingest.max_event_bytes,
                   min_time_ms=ingest.min_event_time_ms, max_future_ms=int(ingest.max_future_s * 1000),
                   max_field_chars=ingest.max_field_chars, key_is_user=ingest.key_check == "user")


def _parse(raw: bytes) -> events_pb2.BehaviorEvent | Rejection:
    message = events_pb2.BehaviorEvent()
    if raw.lstrip()[:1] == b"{":
        try:
            json_format.Parse(raw.decode("utf-8"), message)
        except UnicodeDecodeError as exc:
            return Rejection(Reason.UNDECODABLE, f"JSON is not UTF-8: {exc}")
        except json_format.ParseError as exc:
            text = str(exc)
            is_syntax = text.startswith("Failed to load JSON")
            return Rejection(Reason.UNDECODABLE if is_syntax else Reason.BAD_FIELD, text[:300])
        return message
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        return Rejection(Reason.UNDECODABLE, f"neither JSON nor a protobuf BehaviorEvent: {exc}")
    # Protobuf happily parses stray bytes as unknown fields; real events have none.
    if len(unknown_fields.UnknownFieldSet(message)):
        return Rejection(Reason.UNDECODABLE, "protobuf message carries fields BehaviorEvent does not have")
    return message


def decode_message(key: bytes | None, raw: bytes | None, rules: EventRules, *, now_ms: int) -> Event | Rejection:
    """One Kafka message (key and value) -> an Event, or the Rejection that explains why not: the
    value's rules (``decode``), then, where the rules say so, the key must be the user id."""
    outcome = decode(raw, rules, now_ms=now_ms)
    if isinstance(outcome, Event) and rules.key_is_user and key != outcome.user_id.encode():
        shown = "no key" if key is None else f"key {key[:80].decode(errors='replace')!r}"
        return Rejection(Reason.KEY_MISMATCH, f"{shown} is not the user id {outcome.user_id[:80]!r}: send each event "
                         "keyed by its user id (or set ingest.key_check = off)")
    return outcome


def decode(raw: bytes | None, rules: EventRules, *, now_ms: int) -> Event | Rejection:
    """One Kafka value -> an Event, or the Rejection that explains why not."""
    if raw is None:
        return Rejection(Reason.MISSING_FIELD, "message has no value")
    if len(raw) > rules.max_bytes:
        return Rejection(Reason.OVERSIZED, f"{len(raw)} bytes > limit {rules.max_bytes}")
    parsed = _parse(raw)
    if isinstance(parsed, Rejection):
        return parsed
    missing = [name for name in ("user_id", "item_id", "behavior") if not getattr(parsed, name).strip()]
    if parsed.event_time_ms == 0:
        missing.append("event_time_ms")
    if missing:
        return Rejection(Reason.MISSING_FIELD, f"missing or empty: {', '.join(missing)}")
    long = [name for name, value in (("user_id", parsed.user_id), ("item_id", parsed.item_id),
                                     *((f"side.{view}", value) for view, value in parsed.side.items()))
            if len(value) > rules.max_field_chars]
    if long:
        return Rejection(Reason.FIELD_TOO_LONG,
                         f"longer than {rules.max_field_chars} characters: {', '.join(long)[:200]}")
    if parsed.behavior not in rules.behaviors:
        return Rejection(Reason.UNKNOWN_BEHAVIOR, f"behavior {parsed.behavior!r} not in {sorted(rules.behaviors)}")
    if not rules.min_time_ms <= parsed.event_time_ms <= now_ms + rules.max_future_ms:
        return Rejection(Reason.BAD_TIMESTAMP, f"event_time_ms {parsed.event_time_ms} outside the plausible window")
    side = {view: value for view, value in parsed.side.items() if value.strip()}
    return Event(user_id=parsed.user_id, item_id=parsed.item_id, behavior=parsed.behavior,
                 event_time_ms=parsed.event_time_ms, side=side)
