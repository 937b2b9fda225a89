"""How fresh the served vectors are, measured from the moment events are produced.

Two kinds of probe, each a tiny session of a user of its own:
- new item: an existing item, then a brand-new one in the same side values; fresh once the server
  returns a vector for the new item (the cold-start lane's side-view vector);
- retrained: two existing items one after the other; fresh once the server runs a snapshot whose
  training read the graph after that transition was written (its watermark is past the edge's
  write time), i.e. whose vectors were trained with the new events.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from m2grl.graphstore import GraphStore
from m2grl.graphstore.stats import transition_updated_at
from m2grl.ingest.events import Event
from m2grl.ingest.replay import EventProducer
from m2grl.settings import Settings
from m2grl_client import EmbeddingClient

KINDS = ("new_item", "retrained")


@dataclass
class Probe:
    kind: str
    user: str
    src: str
    dst: str  # the new item, or the second existing item
    produced_at: float  # time.monotonic() once Kafka acknowledged the events
    # retrained: the transition's write time in the graph before the probe (None: no such edge yet)
    # and once the probe's events are written, in the database's clock both
    written_before_ms: int | None = None
    written_ms: int | None = None
    fresh_after_s: float | None = None

    @property
    def pending(self) -> bool:
        return self.fresh_after_s is None


@dataclass
class FreshnessProbes:
    """Injects probes and checks them against the server; ``check`` once per poll. A context
    manager: it holds one connection to the item view's graph for the retrained probes."""

    settings: Settings
    rpc: EmbeddingClient
    producer: EventProducer
    probes: list[Probe] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._item = self.settings.views.viewset.all[0]
        self._store = GraphStore(self.settings.neo4j_for(self._item))

    def __enter__(self) -> FreshnessProbes:
        return self

    def __exit__(self, *exc: object) -> None:
        self._store.close()

    def new_item(self, anchor: Event, new_id: str) -> Probe:
        return self._inject("new_item", anchor, Event(f"probe-{new_id}", new_id, "pv", 0, dict(anchor.side)))

    def retrained(self, first: Event, second: Event, tag: str) -> Probe:
        # An edge the log already has carries an older write time, which the served watermark may be
        # past already: the probe is fresh only once the edge is written again.
        before = transition_updated_at(self._store, self._item, first.item_id, second.item_id)
        return self._inject("retrained", first, second, user=f"probe-{tag}", written_before_ms=before)

    def _inject(self, kind: str, first: Event, second: Event, user: str | None = None,
                written_before_ms: int | None = None) -> Probe:
        user = user or second.user_id
        now_ms = int(time.time() * 1000)
        self.producer.send(Event(user, first.item_id, "pv", now_ms, dict(first.side)))
        self.producer.send(Event(user, second.item_id, "pv", now_ms + 1, dict(second.side)))
        self.producer.flush()
        probe = Probe(kind, user, first.item_id, second.item_id, time.monotonic(), written_before_ms)
        self.probes.append(probe)
        return probe

    def check(self) -> int:
        """Mark the probes that became fresh; the number still pending."""
        now = time.monotonic()
        pending = [p for p in self.probes if p.pending]
        new_items = [p for p in pending if p.kind == "new_item"]
        if new_items:
            found = self.rpc.embeddings(self.item_view, [p.dst for p in new_items]).found
            for probe, served in zip(new_items, found):
                if served:
                    probe.fresh_after_s = now - probe.produced_at
        retrained = [p for p in pending if p.kind == "retrained"]
        if retrained:
            self._check_retrained(retrained, now)
        return sum(p.pending for p in self.probes)

    def _check_retrained(self, probes: list[Probe], now: float) -> None:
        for probe in probes:
            if probe.written_ms is None:
                written = transition_updated_at(self._store, self._item, probe.src, probe.dst)
                if written is not None and (probe.written_before_ms is None or written > probe.written_before_ms):
                    probe.written_ms = written
        watermark = self.rpc.info().watermark_ms.get(self._item.name, 0)
        for probe in probes:
            if probe.written_ms is not None and watermark > probe.written_ms:
                probe.fresh_after_s = now - probe.produced_at

    @property
    def item_view(self) -> str:
        return self._item.name

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """p50 / p95 / max seconds per kind, over the probes that became fresh, and how many did not."""
        out = {}
        for kind in KINDS:
            probes = [p for p in self.probes if p.kind == kind]
            times = sorted(p.fresh_after_s for p in probes if p.fresh_after_s is not None)  # not pending
            out[kind] = {"probes": len(probes), "never_fresh": len(probes) - len(times),
                         "p50_s": _quantile(times, 0.5), "p95_s": _quantile(times, 0.95),
                         "max_s": round(times[-1], 2) if times else None}
        return out


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)], 2)  # nearest rank
