"""`m2grl bench ingest`: end-to-end ingest throughput against its ceiling, measured in one run.

End to end: the log is replayed into a fresh topic first, then `m2grl ingest --until-idle` runs in
its own process (so its peak RSS is its own) and reports events/s from its first poll to its last
commit. Ceiling: the same events, decoded and aggregated into the same-size batches beforehand,
written by the same writer straight into the wiped database, with no Kafka in the loop; measured
before and after the end-to-end run, and averaged. All of it runs on a Neo4j warmed up by one
direct write of the whole log: its JIT compiler keeps compiling through the first passes (on the
Taobao slice, after a warm-up over a fifth of the log, 20 CPU-seconds of compiling fell inside the
next run and 7 inside the one after), which would otherwise charge whichever run came first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from m2grl.errors import M2grlError
from m2grl.graphstore import GraphStore
from m2grl.graphstore.maintenance import wipe_graph
from m2grl.graphstore.model import SessionState
from m2grl.graphstore.writes import BehaviorGraphWriter
from m2grl.ingest.consumer import create_topics
from m2grl.ingest.events import Event, EventRules, decode
from m2grl.ingest.replay import replay
from m2grl.ingest.sessions import extract
from m2grl.lab import datasets
from m2grl.services.launcher import throwaway_stack
from m2grl.settings import Settings, settings_env

TARGET_RATIO = 0.8
TARGET_EVENTS_PER_S = 20_000


def _run_consumer(settings: Settings) -> dict[str, Any]:
    env = {**os.environ, **settings_env(settings)}
    result = subprocess.run([sys.executable, "-m", "m2grl", "ingest", "--until-idle", "--json", "--no-metrics"],
                            env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise M2grlError(f"the ingest process failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def _direct_writes(settings: Settings, encoded: list[bytes]) -> float:
    """Seconds to write the pre-aggregated batches straight into the (wiped) database."""
    ingest = settings.ingest
    rules = EventRules.of(ingest)
    now = int(time.time() * 1000)
    events = [e for e in (decode(raw, rules, now_ms=now) for raw in encoded) if isinstance(e, Event)]
    views = settings.views.viewset.all
    gap_ms = int(ingest.session_gap_s * 1000)
    sessions: dict[str, SessionState] = {}
    batches = []
    size = ingest.batch_max_records
    for start in range(0, len(events), size):
        delta = extract(events[start:start + size], sessions, views, gap_ms)
        sessions.update(delta.sessions)
        batches.append((start, delta))
    with GraphStore(settings.neo4j) as store:
        wipe_graph(store)
        writer = BehaviorGraphWriter(store, views, topic="bench-ceiling")
        writer.ensure_schema()
        started = time.perf_counter()
        previous = -1
        for start, delta in batches:
            last = start + delta.events - 1
            writer.commit(delta, {0: previous}, {0: last})
            previous = last
        return time.perf_counter() - started


def _bench_log(settings: Settings, dataset: str | None) -> tuple[str, list[Event], list[str]]:
    """The log to ingest (default: the Taobao time slice if present, else MovieLens-100K) and its side views."""
    name = dataset or datasets.shared_or_movielens("taobao-timeslice", settings.data.shared_dir)
    ref = datasets.resolve_dataset(name, shared_dir=settings.data.shared_dir, cache_dir=settings.data.cache_dir)
    events = datasets.load_events(ref.path, ref.fmt)
    return name, events, sorted({view for e in events[:5000] for view in e.side})


@contextmanager
def _bench_services(settings: Settings, reuse: bool) -> Iterator[Settings]:
    """The configured services (``reuse``), or a throwaway Kafka and Neo4j with 1 GiB heaps."""
    if reuse:
        yield settings
        return
    with throwaway_stack(settings, heap="1g", pagecache="512m", report=lambda _: None) as throwaway:
        yield throwaway


def _on_topic(settings: Settings, side: list[str], topic: str, **ingest: object) -> Settings:
    """``settings`` with these side views, on ``topic`` with a dead-letter topic and group of its own."""
    return settings.model_copy(update={
        "views": settings.views.model_copy(update={"side": tuple(side)}),
        "ingest": settings.ingest.model_copy(update={
            "topic": topic, "dead_letter_topic": f"{topic}.dlq", "group_id": f"{topic}-group", **ingest}),
    })


def run_ingest_bench(settings: Settings, *, dataset: str | None, reuse_services: bool) -> dict[str, Any]:
    name, events, side = _bench_log(settings, dataset)
    with _bench_services(settings, reuse_services) as settings:
        settings = _on_topic(settings, side, f"bench-ingest-{int(time.time())}")
        encoded = [e.encode() for e in events]
        _direct_writes(settings, encoded)  # the warm-up
        create_topics(settings)
        produced = replay(settings, events, progress=False)
        ceiling_before_s = _direct_writes(settings, encoded)
        with GraphStore(settings.neo4j) as store:
            wipe_graph(store)
        e2e = _run_consumer(settings)
        ceiling_after_s = _direct_writes(settings, encoded)
    ceiling_s = (ceiling_before_s + ceiling_after_s) / 2
    e2e_rate = e2e["records"] / e2e["seconds"]
    ceiling_rate = len(events) / ceiling_s
    ratio = e2e_rate / ceiling_rate
    return {
        "benchmark": "ingest",
        "dataset": name,
        "events": len(events),
        "views": ["item", *side],
        "batch_max_records": settings.ingest.batch_max_records,
        "partitions": settings.ingest.partitions,
        "replay": {"seconds": round(produced.seconds, 2), "events_per_s": round(produced.sent / produced.seconds)},
        "end_to_end": {"seconds": round(e2e["seconds"], 2), "events_per_s": round(e2e_rate),
                       "batches": e2e["batches"], "applied": e2e["applied"], "dead_lettered": e2e["dead_lettered"],
                       "peak_rss_mb": e2e["peak_rss_mb"]},
        "ceiling": {"seconds": round(ceiling_s, 2), "events_per_s": round(ceiling_rate),
                    "seconds_before_and_after": [round(ceiling_before_s, 2), round(ceiling_after_s, 2)]},
        "ratio": round(ratio, 3),
        "targets": {"ratio": TARGET_RATIO, "events_per_s": TARGET_EVENTS_PER_S,
                    "met": ratio >= TARGET_RATIO and e2e_rate >= TARGET_EVENTS_PER_S},
    }


# -- a new store from the whole log: neo4j-admin's bulk import against streaming --------------------

def _backfill(settings: Settings) -> dict[str, Any]:
    env = {**os.environ, **settings_env(settings)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "m2grl", "graph", "backfill", "--replace", "--json"],
                            env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise M2grlError(f"the backfill process failed: {result.stderr.strip()[-2000:]}")
    return {**json.loads(result.stdout), "wall_s": time.perf_counter() - started}


def run_backfill_bench(settings: Settings, *, dataset: str | None, reuse_services: bool) -> dict[str, Any]:
    """The same log into an empty store twice: streamed by `m2grl ingest --until-idle`, and by
    `m2grl graph backfill` (read, import files, Neo4j stopped, imported, started, indexes made).
    Events/s of both, their ratio, and whether the graphs are identical."""
    name, events, side = _bench_log(settings, dataset)
    with _bench_services(settings, reuse_services) as settings:
        settings = _on_topic(settings, side, f"bench-backfill-{int(time.time())}")
        _direct_writes(settings, [e.encode() for e in events])  # warms Neo4j up, as in run_ingest_bench
        create_topics(settings)
        replay(settings, events, progress=False)
        with GraphStore(settings.neo4j) as store:
            wipe_graph(store)
        streamed = _run_consumer(settings)
        streamed_graph = _graph_of(settings)
        backfilled = _backfill(settings)
        same = _graph_of(settings) == streamed_graph
    streaming_rate, backfill_rate = streamed["records"] / streamed["seconds"], len(events) / backfilled["wall_s"]
    return {
        "benchmark": "backfill", "dataset": name, "events": len(events), "views": ["item", *side],
        "streaming": {"seconds": round(streamed["seconds"], 2), "events_per_s": round(streaming_rate),
                      "peak_rss_mb": streamed["peak_rss_mb"]},
        "backfill": {"seconds": round(backfilled["wall_s"], 2), "events_per_s": round(backfill_rate),
                     "read_s": backfilled["read_s"], "import_s": backfilled["import_s"]},
        "ratio": round(backfill_rate / streaming_rate, 2),
        "same_graph": same,
    }


# -- scaling out: several consumers in one group ------------------------------------------------

def _consumers(settings: Settings, count: int) -> tuple[float, list[dict[str, Any]]]:
    """``count`` `m2grl ingest --until-idle` processes in one group; wall seconds until the last ends."""
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-m", "m2grl", "ingest", "--until-idle", "--json", "--no-metrics"]
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    outputs = [proc.communicate(timeout=3600) for proc in procs]
    seconds = time.perf_counter() - started
    for proc, (_, err) in zip(procs, outputs):
        if proc.returncode != 0:
            raise M2grlError(f"an ingest process failed: {err.strip()[-2000:]}")
    return seconds, [json.loads(out) for out, _ in outputs]


def _graph_of(settings: Settings) -> dict[str, Any]:
    from m2grl.graphstore.stats import memberships, node_events, transition_weights

    graph = {}
    for view in settings.views.viewset.all:
        with GraphStore(settings.neo4j_for(view)) as store:
            graph[view.name] = (transition_weights(store, view), node_events(store, view),
                                memberships(store, view) if not view.is_item else set())
    return graph


def run_ingest_scaling_bench(settings: Settings, *, dataset: str | None, consumers: int, partitions: int,
                             reuse_services: bool) -> dict[str, Any]:
    """One consumer, then ``consumers`` in one group, on the same ``partitions``-partition topic
    into a wiped graph each time: events/s of each and whether the graphs are identical."""
    name, events, side = _bench_log(settings, dataset)
    topic = f"bench-scaling-{int(time.time())}"
    runs: dict[int, dict[str, Any]] = {}
    graphs = {}
    with _bench_services(settings, reuse_services) as settings:
        settings = _on_topic(settings, side, topic, partitions=partitions)
        create_topics(settings)
        replay(settings, events, progress=False)
        _direct_writes(settings, [e.encode() for e in events])  # warms Neo4j up, as in run_ingest_bench
        for count in (1, consumers):
            run = settings.model_copy(update={"ingest": settings.ingest.model_copy(
                update={"group_id": f"{topic}-{count}-consumers"})})
            with GraphStore(run.neo4j) as store:
                wipe_graph(store)
            seconds, reports = _consumers(run, count)
            runs[count] = {"processes": count, "seconds": round(seconds, 2),
                           "events_per_s": round(len(events) / seconds),
                           # A rebalance hands a partition over mid-stream: its new owner reads
                           # again what the old one had not committed (records), but applies only
                           # what the graph does not hold yet (applied; the rest: replayed).
                           "records_per_process": [r["records"] for r in reports],
                           "applied_per_process": [r["applied"] for r in reports],
                           "replayed_per_process": [r["replayed"] for r in reports]}
            graphs[count] = _graph_of(run)
    one, many = runs[1], runs[consumers]
    return {
        "benchmark": "ingest-scaling", "dataset": name, "events": len(events), "partitions": partitions,
        "one_consumer": one, f"{consumers}_consumers": many,
        "speedup": round(many["events_per_s"] / one["events_per_s"], 2),
        "same_graph": graphs[1] == graphs[consumers],
    }
