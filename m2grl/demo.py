"""`m2grl demo`: the whole system on one machine, start to finish, in a few minutes.

Starts (or reuses) Kafka and Neo4j, runs `m2grl ingest`, `m2grl train` and `m2grl serve` as their
own processes, streams a real log through them, and shows what a user came for: neighbours and a
diverse recommendation served over gRPC with readable names, how fresh the served vectors are, and
the offline evaluation of M2GRL against its baselines. Every run uses its own topic, consumer
group and snapshot folder under the state folder; the graph is wiped first (only a local Neo4j
unless --wipe-graph says so).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from m2grl.errors import ConfigError, GraphStoreUnavailable, M2grlError, RpcError, StreamUnavailable
from m2grl.settings import Settings, settings_env

if TYPE_CHECKING:
    from m2grl.ingest.datasets import DatasetRef
    from m2grl.ingest.events import Event
    from m2grl.rpc.client import EmbeddingClient

T = TypeVar("T")

SIDE_VIEWS = {"taobao": ("category",), "rees46": ("category", "brand"), "movielens": ("genre",)}


@dataclass(frozen=True)
class DemoOptions:
    dataset: str | None = None
    limit: int | None = None
    rate: float = 2000.0
    interval_s: float = 10.0
    evaluate: bool = True
    keep_serving: bool = False
    wipe_graph: bool = False


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(number: int, text: str) -> None:
    _say(f"\n[{number}/7] {text}")


def default_dataset(settings: Settings) -> str:
    from m2grl.ingest import datasets

    if (settings.data.shared_dir / datasets.NAMED["taobao-head"][0]).exists():
        return "taobao-head"
    return "movielens-100k"


def _demo_settings(settings: Settings, run: str, side: tuple[str, ...], interval_s: float, run_dir: Path) -> Settings:
    """The settings every demo process shares: this run's topic, group and snapshot folder, the
    data set's side views, and the schedule."""
    topic = f"m2grl.demo.{run}"
    return settings.model_copy(update={
        "views": settings.views.model_copy(update={"side": side}),
        "ingest": settings.ingest.model_copy(update={"topic": topic, "dead_letter_topic": f"{topic}.dlq",
                                                     "group_id": f"m2grl-demo-{run}"}),
        "train": settings.train.model_copy(update={"interval_s": interval_s, "snapshot_dir": run_dir / "snapshots"}),
        "rpc": settings.rpc.model_copy(update={"diversity_view": side[0]}),
    })


class _Children:
    """The ingest, train and serve processes of the demo, each logging to its own file."""

    def __init__(self, settings: Settings, run_dir: Path) -> None:
        self.env = {**os.environ, **settings_env(settings)}
        self.run_dir = run_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> Path:
        log = self.run_dir / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "m2grl", *args], env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        return log

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise M2grlError(f"`m2grl {name}` exited with code {proc.returncode}; see {self.run_dir / name}.log")

    def stop(self) -> None:
        """SIGTERM each child (each finishes its batch, round or calls), SIGKILL after 60 s; idempotent."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _say(f"  {name} did not stop within 60 s and was killed")


def _wait(what: str, ready: Callable[[], T | None], children: _Children, timeout_s: float, every_s: float = 0.5) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children.check()
        try:
            value = ready()
        except (StreamUnavailable, GraphStoreUnavailable, RpcError):
            value = None  # e.g. the group's coordinator is still being elected: ask again
        if value:
            return value
        time.sleep(every_s)
    raise M2grlError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs in {children.run_dir}")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    from m2grl.ingest import datasets
    from m2grl.services import launcher

    started = time.monotonic()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the children are stopped as on Ctrl-C
    _step(1, "Kafka and Neo4j")
    launcher.up(settings, report=lambda line: _say(f"  {line}"))

    name = options.dataset or default_dataset(settings)
    ref = datasets.resolve_dataset(name, shared_dir=settings.data.shared_dir, cache_dir=settings.data.cache_dir)
    events = datasets.load_events(ref.path, ref.fmt)[: options.limit]
    present = {view for e in events[:10_000] for view in e.side}
    side = tuple(v for v in SIDE_VIEWS.get(ref.fmt, tuple(sorted(present))) if v in present)
    if not side:
        raise ConfigError(f"{name} has no side attribute to build a side view from")
    names = _readable_names(ref)
    _step(2, f"data: {name}, {len(events):,} events, {len({e.item_id for e in events}):,} items, "
             f"views item + {' + '.join(side)}")

    run = time.strftime("%Y%m%d-%H%M%S")
    run_dir = settings.services.state_dir / "demo" / run
    run_dir.mkdir(parents=True, exist_ok=True)
    demo = _demo_settings(settings, run, side, options.interval_s, run_dir)
    _fresh_graph(demo, options.wipe_graph)
    children = _Children(demo, run_dir)
    try:
        _step(3, f"starting ingest, training every {options.interval_s:g} s and the gRPC server; logs in {run_dir}")
        children.start("ingest", "ingest")
        children.start("train", "train")
        children.start("serve", "serve")
        with _client(demo) as client:
            _stream(demo, events, options.rate, children, client)
            _step(5, "catching up: everything ingested, then a training round over all of it")
            version = _catch_up(demo, children, client)
            _say(f"  snapshot version {version} is live")
            _step(6, "what a user sees over gRPC")
            _show_examples(client, events, names, side[0])
            _freshness(demo, client, events, children)
            if not options.keep_serving:
                children.stop()  # the evaluation trains four models: it needs the CPUs to itself
            if options.evaluate:
                _step(7, "offline evaluation on the same data: M2GRL vs its baselines (same walks, same budget)")
                _evaluate(demo, events, side, name, run_dir)
            else:
                _step(7, "offline evaluation skipped (--no-eval)")
        _say(f"\ndone in {time.monotonic() - started:.0f} s. Logs and snapshots: {run_dir}")
        if options.keep_serving:
            _say(f"serving on {demo.rpc.host}:{demo.rpc.port} with ingest and training running; Ctrl-C stops them "
                 "(`m2grl services down` then stops Kafka and Neo4j)")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    children.check()
                    time.sleep(1)
    finally:
        children.stop()
    _say("ingest, training and serving stopped; Kafka and Neo4j keep running (`m2grl services down` stops them)")
    return 0


def _fresh_graph(settings: Settings, wipe_requested: bool) -> None:
    from m2grl.graphstore import GraphStore
    from m2grl.graphstore.maintenance import holds_data, wipe_graph

    stores = {(s.bolt_uri, s.database): s for s in (settings.neo4j_for(v) for v in settings.views.viewset.all)}
    for target in stores.values():
        with GraphStore(target) as store:
            if settings.neo4j.managed or wipe_requested:
                wipe_graph(store)
                _say(f"  wiped the graph in {target.bolt_uri} ({target.database}) for this run")
            elif holds_data(store):
                raise ConfigError(f"the configured Neo4j ({target.bolt_uri}) already holds a graph; the demo would "
                                  "mix its data in. Pass --wipe-graph to delete it first, or point at an empty one")


@contextlib.contextmanager
def _client(settings: Settings) -> Iterator[EmbeddingClient]:
    from m2grl.rpc.client import EmbeddingClient

    client = EmbeddingClient.from_settings(settings, timeout=10.0)
    try:
        yield client
    finally:
        client.close()


def _served_version(client: EmbeddingClient) -> int:
    try:
        return client.info().version
    except RpcError:
        return 0


def _stream(settings: Settings, events: list[Event], rate: float, children: _Children, client: EmbeddingClient) -> None:
    from m2grl.ingest.admin import TopicSpec, ensure_topics
    from m2grl.ingest.replay import replay

    ensure_topics(settings.kafka, [TopicSpec(settings.ingest.topic, settings.ingest.partitions),
                                   TopicSpec(settings.ingest.dead_letter_topic, 1)])
    _step(4, f"streaming {len(events):,} events at {rate:,.0f}/s; training and serving while they arrive")
    done = threading.Event()

    def report() -> None:
        while not done.wait(10):
            with contextlib.suppress(M2grlError):
                children.check()
            _say(f"  … {_graph_line(settings)}; serving snapshot version {_served_version(client) or '(none yet)'}")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        sent = replay(settings, events, rate=rate, progress=True)
    finally:
        done.set()
    _say(f"  produced {sent.sent:,} events in {sent.seconds:.0f} s")


def _graph_line(settings: Settings) -> str:
    from m2grl.graphstore import GraphStore
    from m2grl.graphstore.stats import view_stats

    parts = []
    with contextlib.suppress(M2grlError):
        for view in settings.views.viewset.all:
            with GraphStore(settings.neo4j_for(view)) as store:
                stats = view_stats(store, view)
            parts.append(f"{view.name} {stats.nodes:,} nodes / {stats.edges:,} edges")
    return "graph: " + ", ".join(parts) if parts else "graph: not reachable"


def _catch_up(settings: Settings, children: _Children, client: EmbeddingClient) -> int:
    from m2grl.ingest.admin import consumer_lag

    _wait("ingest to drain the topic",
          lambda: consumer_lag(settings.kafka, settings.ingest.group_id, settings.ingest.topic) == 0,
          children, timeout_s=900, every_s=1.0)
    _say(f"  ingested everything: {_graph_line(settings)}")
    item, items = settings.views.viewset.all[0].name, _item_nodes(settings)
    return _wait("a snapshot that knows every item of the graph",
                 lambda: _version_with(client, item, items), children, timeout_s=900, every_s=1.0)


def _item_nodes(settings: Settings) -> int:
    from m2grl.graphstore import GraphStore
    from m2grl.graphstore.stats import view_stats

    item = settings.views.viewset.all[0]
    with GraphStore(settings.neo4j_for(item)) as store:
        return view_stats(store, item).nodes


def _version_with(client: EmbeddingClient, item_view: str, items: int) -> int | None:
    info = client.info()
    served = next((view.count for view in info.views if view.name == item_view), 0)
    return info.version if served >= items else None


def _readable_names(ref: DatasetRef) -> dict[str, str]:
    if ref.fmt != "movielens":
        return {}
    from m2grl.ingest.datasets import movielens_genres

    return {item: title for item, (title, _) in movielens_genres(ref.path).items()}


def _label(item: str, names: dict[str, str]) -> str:
    return f"{names[item]} ({item})" if item in names else item


def _show_examples(client: EmbeddingClient, events: list[Event], names: dict[str, str], diversity_view: str) -> None:
    popular = [item for item, _ in Counter(e.item_id for e in events).most_common(3)]
    for item in popular:
        similar = client.similar("item", id=item, k=5)
        _say(f"  nearest to {_label(item, names)}:")
        for ext, score in zip(similar.ids, similar.scores):
            _say(f"      {score:.3f}  {_label(ext, names)}")
    by_user: dict[str, list[str]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e.item_id)
    user, history = max(by_user.items(), key=lambda kv: len(set(kv[1][-20:])))
    recent = list(dict.fromkeys(history[-5:]))
    answer = client.recommend(recent, k=10, diversity=0.3)
    _say(f"  recommendations for user {user}, whose recent items are {', '.join(_label(i, names) for i in recent)} "
         f"(30 % from nearby {diversity_view} values the user has not visited):")
    if answer.unknown_recent_ids:
        _say(f"      (not in the snapshot, ignored: {', '.join(answer.unknown_recent_ids)})")
    for r in answer.results:
        via = f"near {names.get(r.via, r.via)}" if r.route == "item-neighbour" else f"{diversity_view} {r.via}"
        _say(f"      {r.score:.3f}  {r.route:<16} {via[:32]:<33} {_label(r.item_id, names)}")


def _freshness(settings: Settings, client: EmbeddingClient, events: list[Event], children: _Children) -> None:
    """A brand-new item, seen once after an item of the log: how long until it is servable."""
    from m2grl.ingest.events import Event
    from m2grl.ingest.replay import replay

    anchor = events[-1]
    new_item = f"demo-new-{int(time.time())}"
    now_ms = int(time.time() * 1000)
    fresh = [Event(anchor.user_id, anchor.item_id, "pv", now_ms, dict(anchor.side)),
             Event(anchor.user_id, new_item, "pv", now_ms + 1, dict(anchor.side))]
    produced = time.monotonic()
    replay(settings, fresh, progress=False)
    _wait(f"{new_item} to be served", lambda: bool(client.embeddings("item", [new_item]).found[0]),
          children, timeout_s=settings.train.interval_s * 4 + 120, every_s=0.2)
    servable = time.monotonic() - produced
    info = client.info()
    staleness = time.time() - max(info.watermark_ms.values()) / 1000 if info.watermark_ms else float("nan")
    side = ", ".join(f"{view} {value}" for view, value in anchor.side.items())
    _say(f"  freshness: a brand-new item ({new_item}; {side}) was servable {servable:.1f} s after its first event "
         f"was produced (ingest → graph → training round every {settings.train.interval_s:g} s → snapshot → "
         f"server); the served snapshot has seen the graph up to {staleness:.0f} s ago")


def _evaluate(settings: Settings, events: list[Event], side: tuple[str, ...], name: str, run_dir: Path) -> None:
    from m2grl.train.evaluation import KS, evaluate
    from m2grl.train.plots import plot_evaluation

    report = evaluate(settings, events, side, dataset=name, progress=True)
    _say(f"  {report.cases} test users; HitRate@K and MRR@20 of the held-out next item")
    _say(f"  {'method':<12}" + "".join(f"{f'HR@{k}':>8}" for k in KS) + f"{'MRR@20':>8}")
    for method, result in report.methods.items():
        _say(f"  {method:<12}" + "".join(f"{result.scores[f'hr@{k}']:>8.3f}" for k in KS)
             + f"{result.scores['mrr@20']:>8.3f}")
    plot = plot_evaluation(report, run_dir / "evaluation.png")
    _say(f"  plot (loss and σ² per task, HR@K per method): {plot}")
