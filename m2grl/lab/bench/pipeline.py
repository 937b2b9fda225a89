"""`m2grl bench freshness` and `m2grl bench load`: the whole pipeline running, measured from outside.

Both start (or reuse) Kafka and Neo4j, run ingest, training and serving as their own processes on a
fresh topic and snapshot folder, stream the first part of a real log as a warm-up and wait until a
snapshot holds all of it; then the rest of the log streams at a steady rate while they measure:
- freshness: probes (m2grl/lab/freshness.py) of brand-new items and of known items, from produce time
  until the server answers with what they changed;
- load: clients calling GetEmbeddings, SimilarItems and Recommend back to back, first with the
  pipeline idle (the baseline, same run), then while ingest and training work.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from m2grl.ingest.events import Event
from m2grl.ingest.replay import ReplayResult, replay
from m2grl.lab import pipeline
from m2grl.settings import Settings

TARGET_NEW_ITEM_P95_S = 5.0
TARGET_RETRAINED_P95_S = 60.0
TARGET_LOAD_P99_OVER_IDLE = 3.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def running_pipeline(settings: Settings, data: pipeline.LoadedData, kind: str, interval_s: float,
                     warm: int) -> Iterator[tuple[pipeline.Run, pipeline.Processes]]:
    """Services up (those it starts are stopped again at the end), a fresh run with all three stages
    started, ``warm`` events ingested and served."""
    from m2grl.services import launcher

    with launcher.services_while(settings, report=_say):
        run = pipeline.new_run(settings, kind, data.side, interval_s, report=_say)
        processes = pipeline.Processes(run)
        try:
            for stage in pipeline.STAGES:
                processes.start(stage)
            _say(f"warming up: {warm:,} events of {data.name} ingested, trained and served; logs in {run.folder}")
            replay(run.settings, data.events[:warm], progress=True)
            with pipeline.client(run.settings) as rpc:
                pipeline.catch_up(run.settings, processes, rpc)
            yield run, processes
        finally:
            processes.stop()


class SteadyStream:
    """Replays events at a fixed rate from a background thread until they run out or the block ends."""

    def __init__(self, settings: Settings, events: Sequence[Event], rate: float) -> None:
        self.settings, self.events, self.rate = settings, events, rate
        self.result: ReplayResult | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-stream", daemon=True)

    def __enter__(self) -> SteadyStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        self.result = replay(self.settings, self.events, rate=self.rate, progress=False, stop=self._stop)

    @property
    def sent(self) -> int:
        return self.result.sent if self.result else 0

    @property
    def achieved_rate(self) -> float:
        return self.result.sent / self.result.seconds if self.result and self.result.seconds else 0.0


# -- freshness --------------------------------------------------------------------------------------

def run_freshness_bench(settings: Settings, *, dataset: str | None = None, limit: int | None = None,
                        warm_share: float = 0.5,
                        rate: float = 300.0, probes: int = 20, every_s: float = 5.0,
                        interval_s: float | None = None) -> dict[str, Any]:
    from m2grl.ingest.replay import EventProducer
    from m2grl.lab.freshness import FreshnessProbes

    data = pipeline.load_data(settings, dataset, limit)
    interval_s = interval_s or settings.train.interval_s
    warm = int(len(data.events) * warm_share)
    rng = random.Random(7)
    known = data.events[:warm]
    with running_pipeline(settings, data, "bench-freshness", interval_s, warm) as (run, processes), \
            pipeline.client(run.settings) as rpc, EventProducer(run.settings) as producer, \
            FreshnessProbes(run.settings, rpc, producer) as checks, \
            SteadyStream(run.settings, data.events[warm:], rate) as stream:
        _say(f"streaming the rest at {rate:g} events/s; {probes} probes of each kind, one pair every {every_s:g} s")
        first_version = rpc.info().version
        for index in range(probes):
            anchor = rng.choice(known)
            other = _another_item(rng, known, anchor.item_id)
            checks.new_item(anchor, f"fresh-{run.folder.name}-{index}")
            checks.retrained(anchor, other, f"{run.folder.name}-{index}")
            _poll(checks, processes, every_s)
        deadline = time.monotonic() + 4 * interval_s + 300
        while checks.check() and time.monotonic() < deadline:
            _poll(checks, processes, 0.5)
        versions = rpc.info().version - first_version
    summary = checks.summary()
    new_item, retrained = summary["new_item"], summary["retrained"]
    return {
        "dataset": data.name, "warm_events": warm,
        "stream_rate": {"asked": rate, "achieved": round(stream.achieved_rate)},
        "train_interval_s": interval_s, "versions_during_probes": versions,
        "new_item_servable": new_item, "retrained_served": retrained,
        "targets": {"new_item_p95_s": TARGET_NEW_ITEM_P95_S, "retrained_p95_s": TARGET_RETRAINED_P95_S},
        "met": {"new_item": _within(new_item, TARGET_NEW_ITEM_P95_S),
                "retrained": _within(retrained, TARGET_RETRAINED_P95_S)},
    }


def _another_item(rng: random.Random, events: Sequence[Event], item: str) -> Event:
    """An event of an item other than ``item``: a transition to itself would be dropped by ingest."""
    while (event := rng.choice(events)).item_id == item:
        pass
    return event


def _poll(checks: Any, processes: pipeline.Processes, seconds: float) -> None:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        processes.check()
        checks.check()
        time.sleep(0.1)


def _within(summary: dict[str, Any], target_s: float) -> bool:
    return not summary["never_fresh"] and summary["p95_s"] is not None and summary["p95_s"] <= target_s


# -- load -------------------------------------------------------------------------------------------

def run_load_bench(settings: Settings, *, dataset: str | None = None, limit: int | None = None,
                   warm_share: float = 0.5,
                   rate: float = 300.0, seconds: float = 60.0, idle_seconds: float = 15.0, concurrency: int = 4,
                   interval_s: float | None = None) -> dict[str, Any]:
    from m2grl.lab.bench.rpc import drive

    data = pipeline.load_data(settings, dataset, limit)
    interval_s = interval_s or settings.train.interval_s
    warm = int(len(data.events) * warm_share)
    with running_pipeline(settings, data, "bench-load", interval_s, warm) as (run, processes), \
            pipeline.client(run.settings) as rpc:
        call = _mixed_calls(rpc, data.events[:warm], run.settings.views.viewset.all[0].name)
        drive(call, 2.0, concurrency)  # warm-up
        _say(f"idle: {concurrency} callers for {idle_seconds:g} s, nothing streaming")
        idle = drive(call, idle_seconds, concurrency).summary()
        version_before = rpc.info().version
        _say(f"loaded: {concurrency} callers for {seconds:g} s while {rate:g} events/s stream, ingest and train")
        with SteadyStream(run.settings, data.events[warm:], rate) as stream:
            busy = drive(call, seconds, concurrency)
        processes.check()
        versions = rpc.info().version - version_before
    loaded = busy.summary()
    ratio = loaded["p99_ms"] / max(idle["p99_ms"], 1e-9)
    return {
        "dataset": data.name, "callers": concurrency, "calls": "GetEmbeddings(100 ids), SimilarItems(k=100), "
        "Recommend(5 recent, k=20, diversity 0.3) in turn", "train_interval_s": interval_s,
        "idle": idle, "under_ingest_and_training": {**loaded, "versions_went_live": versions,
                                                    "versions_went_back": busy.versions_went_back,
                                                    "events_streamed": stream.sent,
                                                    "stream_rate": round(stream.achieved_rate)},
        "p99_over_idle": round(ratio, 2),
        "targets": {"errors": 0, "p99_over_idle": TARGET_LOAD_P99_OVER_IDLE},
        "met": {"no_errors": not loaded["failures"] and busy.versions_went_back == 0,
                "p99_within": ratio <= TARGET_LOAD_P99_OVER_IDLE},
    }


def _mixed_calls(rpc: Any, events: Sequence[Event], item_view: str, seed: int = 11) -> Any:
    """Call n: GetEmbeddings, SimilarItems or Recommend in turn, on items of the warm-up events."""
    rng = random.Random(seed)
    items = list(dict.fromkeys(e.item_id for e in events))
    batches = [rng.sample(items, min(100, len(items))) for _ in range(64)]
    recent = [rng.sample(items, min(5, len(items))) for _ in range(64)]

    def call(n: int) -> int:
        kind, pick = n % 3, (n // 3) % 64
        if kind == 0:
            return rpc.embeddings(item_view, batches[pick]).version
        if kind == 1:
            return rpc.similar(item_view, id=batches[pick][0], k=100).version
        return rpc.recommend(recent[pick], k=20, diversity=0.3).version

    return call
