"""The whole pipeline on one machine: ingest, training and serving as their own processes, on a
run's own topic, consumer group and snapshot folder. What the demo, the end-to-end benchmarks and
the fault suite drive; each process is started, killed and restarted as a user's would be."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from m2grl.errors import ConfigError, GraphStoreUnavailable, M2grlError, StreamUnavailable
from m2grl.settings import Settings, settings_env
from m2grl_client import RpcError

if TYPE_CHECKING:
    from m2grl.ingest.events import Event
    from m2grl.lab.datasets import DatasetRef
    from m2grl_client import EmbeddingClient

T = TypeVar("T")

STAGES = ("ingest", "train", "serve")
SIDE_VIEWS = {"taobao": ("category",), "rees46": ("category", "brand"), "movielens": ("genre",)}


@dataclass(frozen=True)
class LoadedData:
    name: str
    ref: DatasetRef
    events: list[Event]
    side: tuple[str, ...]


def load_data(settings: Settings, dataset: str | None, limit: int | None = None) -> LoadedData:
    """A named or given data set (default: the Taobao head when present, else MovieLens-100K) and
    the side views it has."""
    from m2grl.lab import datasets

    name = dataset or datasets.shared_or_movielens("taobao-head", settings.data.shared_dir)
    ref = datasets.resolve_dataset(name, shared_dir=settings.data.shared_dir, cache_dir=settings.data.cache_dir)
    events = datasets.load_events(ref.path, ref.fmt)[:limit]
    present = {view for e in events[:10_000] for view in e.side}
    side = tuple(v for v in SIDE_VIEWS.get(ref.fmt, tuple(sorted(present))) if v in present)
    if not side:
        raise ConfigError(f"{name} has no side attribute to build a side view from")
    return LoadedData(name, ref, events, side)


@dataclass(frozen=True)
class Run:
    """One run's settings (its own topic, group and snapshot folder) and folder for logs."""

    settings: Settings
    folder: Path


def new_run(settings: Settings, kind: str, side: tuple[str, ...], interval_s: float, *,
            wipe_graph: bool = False, report: Callable[[str], None] = lambda line: None) -> Run:
    """A fresh run under ``services.state_dir/<kind>/<time>``: topics created, graph emptied (a
    local Neo4j always; a configured one only with ``wipe_graph``, else it must be empty)."""
    from m2grl.ingest.admin import TopicSpec, ensure_topics

    name = time.strftime("%Y%m%d-%H%M%S")
    folder = settings.services.state_dir / kind / name
    folder.mkdir(parents=True, exist_ok=True)
    topic = f"m2grl.{kind}.{name}"
    run_settings = settings.model_copy(update={
        "views": settings.views.model_copy(update={"side": side}),
        "ingest": settings.ingest.model_copy(update={"topic": topic, "dead_letter_topic": f"{topic}.dlq",
                                                     "group_id": f"m2grl-{kind}-{name}"}),
        "train": settings.train.model_copy(update={"interval_s": interval_s, "snapshot_dir": folder / "snapshots"}),
        "rpc": settings.rpc.model_copy(update={"diversity_view": side[0]}),
    })
    _empty_graph(run_settings, wipe_graph, report)
    ensure_topics(run_settings.kafka, [TopicSpec(topic, run_settings.ingest.partitions),
                                       TopicSpec(f"{topic}.dlq", 1)])
    return Run(run_settings, folder)


def _empty_graph(settings: Settings, wipe_requested: bool, report: Callable[[str], None]) -> None:
    from m2grl.graphstore import GraphStore
    from m2grl.graphstore.maintenance import holds_data, wipe_graph

    stores = {(s.bolt_uri, s.database): s for s in (settings.neo4j_for(v) for v in settings.views.viewset.all)}
    for target in stores.values():
        with GraphStore(target) as store:
            if settings.neo4j.managed or wipe_requested:
                wipe_graph(store)
                report(f"wiped the graph in {target.bolt_uri} ({target.database}) for this run")
            elif holds_data(store):
                raise ConfigError(f"the configured Neo4j ({target.bolt_uri}) already holds a graph; this run would "
                                  "mix its data in. Pass --wipe-graph to delete it first, or point at an empty one")


class Processes:
    """`m2grl ingest`, `m2grl train` and `m2grl serve` of one run, each logging to its own file."""

    def __init__(self, run: Run) -> None:
        self.env = {**os.environ, **settings_env(run.settings)}
        self.folder = run.folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        """Start stage ``name`` (``m2grl <name> <args>``); a restart appends to the same log."""
        with (self.folder / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "m2grl", name, *args], env=self.env,
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        """kill -9: no chance to finish anything."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise M2grlError(f"`m2grl {name}` exited with code {proc.returncode}; see {self.folder / name}.log")

    def stop(self) -> None:
        """SIGTERM each stage (each finishes its batch, round or calls), SIGKILL after 60 s; idempotent."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(what: str, ready: Callable[[], T | None], processes: Processes, timeout_s: float,
             every_s: float = 0.5) -> T:
    """Poll ``ready`` until it returns something truthy; fail if a stage dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check()
        try:
            value = ready()
        except (StreamUnavailable, GraphStoreUnavailable, RpcError):
            value = None  # e.g. the group's coordinator is still being elected: ask again
        if value:
            return value
        time.sleep(every_s)
    raise M2grlError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs in {processes.folder}")


@contextlib.contextmanager
def client(settings: Settings, timeout: float = 10.0) -> Iterator[EmbeddingClient]:
    from m2grl.rpc.client import client_from_settings

    rpc = client_from_settings(settings, timeout=timeout)
    try:
        yield rpc
    finally:
        rpc.close()


def served_version(rpc: EmbeddingClient) -> int:
    try:
        return rpc.info().version
    except RpcError:
        return 0


def graph_line(settings: Settings) -> str:
    from m2grl.graphstore import GraphStore
    from m2grl.graphstore.stats import view_stats

    parts = []
    with contextlib.suppress(M2grlError):
        for view in settings.views.viewset.all:
            with GraphStore(settings.neo4j_for(view)) as store:
                stats = view_stats(store, view)
            parts.append(f"{view.name} {stats.nodes:,} nodes / {stats.edges:,} edges")
    return "graph: " + ", ".join(parts) if parts else "graph: not reachable"


def drained(settings: Settings) -> bool:
    from m2grl.ingest.admin import consumer_lag

    return consumer_lag(settings.kafka, settings.ingest.group_id, settings.ingest.topic) == 0


def catch_up(settings: Settings, processes: Processes, rpc: EmbeddingClient, timeout_s: float = 900) -> int:
    """Wait until ingest has drained the topic and a snapshot trained on all of it is served (its
    training read the graph after the drain; a version that only appended new items from their side
    views does not count); that snapshot's version."""
    wait_for("ingest to drain the topic", lambda: drained(settings), processes, timeout_s, every_s=1.0)
    drained_ms = int(time.time() * 1000)
    item_view = settings.views.viewset.all[0].name
    return wait_for("a snapshot trained on everything ingested",
                    lambda: _trained_after(rpc, item_view, drained_ms), processes, timeout_s, every_s=1.0)


def _trained_after(rpc: EmbeddingClient, item_view: str, moment_ms: int) -> int | None:
    info = rpc.info()
    return info.version if info.watermark_ms.get(item_view, 0) > moment_ms else None
