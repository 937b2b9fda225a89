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
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m2grl.errors import M2grlError
from m2grl.lab import pipeline
from m2grl.settings import Settings

if TYPE_CHECKING:
    from m2grl.ingest.events import Event
    from m2grl.lab.datasets import DatasetRef
    from m2grl_client import EmbeddingClient

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


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    from m2grl.services import launcher

    started = time.monotonic()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the children are stopped as on Ctrl-C
    _step(1, "Kafka and Neo4j")
    launcher.up(settings, report=lambda line: _say(f"  {line}"))

    data = pipeline.load_data(settings, options.dataset, options.limit)
    name, events, side = data.name, data.events, data.side
    names = _readable_names(data.ref)
    _step(2, f"data: {name}, {len(events):,} events, {len({e.item_id for e in events}):,} items, "
             f"views item + {' + '.join(side)}")

    run = pipeline.new_run(settings, "demo", side, options.interval_s, wipe_graph=options.wipe_graph,
                           report=lambda line: _say(f"  {line}"))
    demo, run_dir = run.settings, run.folder
    children = pipeline.Processes(run)
    try:
        _step(3, f"starting ingest, training every {options.interval_s:g} s and the gRPC server; logs in {run_dir}")
        for stage in pipeline.STAGES:
            children.start(stage)
        with pipeline.client(demo) as client:
            _stream(demo, events, options.rate, children, client)
            _step(5, "catching up: everything ingested, then a training round over all of it")
            version = pipeline.catch_up(demo, children, client)
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


def _readable_names(ref: DatasetRef) -> dict[str, str]:
    if ref.fmt != "movielens":
        return {}
    from m2grl.lab.datasets import movielens_genres

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


def _freshness(settings: Settings, client: EmbeddingClient, events: list[Event],
               children: pipeline.Processes) -> None:
    """One probe of each kind (m2grl/freshness.py): a brand-new item, and two known items in a row."""
    from m2grl.ingest.replay import EventProducer
    from m2grl.lab.freshness import FreshnessProbes

    second = events[-1]
    first = next(e for e in reversed(events) if e.item_id != second.item_id)  # a transition, not a repeat
    new_item = f"demo-new-{int(time.time())}"
    with EventProducer(settings) as producer, FreshnessProbes(settings, client, producer) as probes:
        new = probes.new_item(first, new_item)
        retrained = probes.retrained(first, second, new_item)
        pipeline.wait_for("both probes to be served fresh", lambda: probes.check() == 0, children,
                          timeout_s=settings.train.interval_s * 4 + 300, every_s=0.2)
    side = ", ".join(f"{view} {value}" for view, value in first.side.items())
    _say(f"  freshness: a brand-new item ({new_item}; {side}) was servable over gRPC {new.fresh_after_s:.1f} s "
         "after its events were produced, with a first vector from its side views; a retrained snapshot that "
         f"includes two new events of known items went live after {retrained.fresh_after_s:.1f} s (training "
         f"every {settings.train.interval_s:g} s). `m2grl bench freshness` measures many of each under load.")


def _stream(settings: Settings, events: list[Event], rate: float, children: pipeline.Processes,
            client: EmbeddingClient) -> None:
    from m2grl.ingest.replay import replay

    _step(4, f"streaming {len(events):,} events at {rate:,.0f}/s; training and serving while they arrive")
    done = threading.Event()

    def report() -> None:
        while not done.wait(10):
            with contextlib.suppress(M2grlError):
                children.check()
            version = pipeline.served_version(client) or "(none yet)"
            _say(f"  … {pipeline.graph_line(settings)}; serving snapshot version {version}")

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        sent = replay(settings, events, rate=rate, progress=True)
    finally:
        done.set()
    _say(f"  produced {sent.sent:,} events in {sent.seconds:.0f} s")


def _evaluate(settings: Settings, events: list[Event], side: tuple[str, ...], name: str, run_dir: Path) -> None:
    from m2grl.lab.evaluation import KS, evaluate
    from m2grl.lab.plots import plot_evaluation

    report = evaluate(settings, events, side, dataset=name, progress=True)
    _say(f"  {report.cases} test users; HitRate@K and MRR@20 of the held-out next item")
    _say(f"  {'method':<12}" + "".join(f"{f'HR@{k}':>8}" for k in KS) + f"{'MRR@20':>8}")
    for method, result in report.methods.items():
        _say(f"  {method:<12}" + "".join(f"{result.scores[f'hr@{k}']:>8.3f}" for k in KS)
             + f"{result.scores['mrr@20']:>8.3f}")
    plot = plot_evaluation(report, run_dir / "evaluation.png")
    _say(f"  plot (loss and σ² per task, HR@K per method): {plot}")
