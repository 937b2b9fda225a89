"""`m2grl ingest`, `m2grl replay`, `m2grl data fetch` and `m2grl bench ingest`."""

from __future__ import annotations

import argparse
import resource
import sys
from collections.abc import Callable

from m2grl.console import above_zero, at_least_one, print_json, stop_on_signals
from m2grl.lab import datasets
from m2grl.settings import Settings, record_stream_views


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.ingest.consumer import IngestConsumer
    from m2grl.metrics import serve_metrics

    if args.group_id:
        settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(
            update={"group_id": args.group_id})})
    serve_metrics(settings.ingest.metrics_host, 0 if args.no_metrics else settings.ingest.metrics_port)
    sys.setswitchinterval(settings.ingest.switch_interval_ms / 1000)
    stop = stop_on_signals(within_s=settings.ingest.stop_timeout_s)
    totals = IngestConsumer(settings, stop=stop).run(until_idle=args.until_idle)
    summary = {**totals.__dict__, "events_per_s": round(totals.records / totals.seconds, 1) if totals.seconds else 0,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if args.json:
        print_json(summary)
    else:
        print(f"ingested {totals.records} messages in {totals.batches} batches ({totals.seconds:.1f} s): "
              f"{totals.applied} applied, {totals.replayed} already held, {totals.dead_lettered} dead-lettered"
              + (f", {totals.skipped_offsets} offsets gone before they were read" if totals.skipped_offsets else ""))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.ingest.consumer import create_topics
    from m2grl.ingest.replay import replay

    ref, events = dataset_from_args(args, settings)
    create_topics(settings)
    result = replay(settings, events, topic=args.topic, rate=args.rate,
                    encoding="json" if args.json_encoding else "protobuf")
    topic = args.topic or settings.ingest.topic
    print(f"replayed {result.sent} events from {ref.path} ({ref.fmt}) to {topic} in {result.seconds:.1f} s "
          f"({result.sent / max(result.seconds, 1e-9):,.0f} events/s)")
    side = tuple(sorted({view for event in events[:10_000] for view in event.side}))
    record_stream_views(settings.services.state_dir, topic, side)
    print(f"side views of {topic}: {', '.join(side) or 'none'}; ingest and train from this state folder use them "
          "unless views.side is set")
    return 0


def add_dataset_arguments(parser: argparse.ArgumentParser, limit_help: str) -> None:
    parser.add_argument("dataset", metavar="DATASET",
                        help="a path, or movielens-100k (fetched from PyPI), taobao-head, taobao-timeslice, rees46 "
                        "(from the shared data folder)")
    parser.add_argument("--format", choices=datasets.FORMATS, help="file format (default: guessed from the name)")
    parser.add_argument("--columns", help="for --format csv: user=COL,item=COL,time=COL[,behavior=COL][,VIEW=COL...]")
    parser.add_argument("--time-unit", choices=("s", "ms"), default="s", help="unit of the csv time column")
    parser.add_argument("--limit", type=at_least_one, help=limit_help)


def dataset_from_args(args: argparse.Namespace, settings: Settings) -> tuple[datasets.DatasetRef, list]:
    layout = datasets.CsvLayout.parse(args.columns, args.time_unit) if args.columns else None
    return datasets.load_dataset(args.dataset, shared_dir=settings.data.shared_dir, cache_dir=settings.data.cache_dir,
                                 fmt=args.format, layout=layout, limit=args.limit)


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    path = datasets.fetch_movielens(settings.data.cache_dir)
    print(path)
    return 0


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.bench.ingest import run_ingest_bench

    report = run_ingest_bench(settings, dataset=args.dataset, reuse_services=args.use_configured_services)
    if args.json:
        print_json(report)
    else:
        e2e, ceiling = report["end_to_end"], report["ceiling"]
        print(f"{report['dataset']}: {report['events']} events")
        print(f"  end to end (Kafka -> Neo4j): {e2e['events_per_s']:>10,.0f} events/s  "
              f"(consumer peak RSS {e2e['peak_rss_mb']} MB)")
        print(f"  ceiling (Neo4j writes only): {ceiling['events_per_s']:>10,.0f} events/s")
        print(f"  ratio {report['ratio']:.2f} (target >= 0.8), end to end target >= 20,000 events/s")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    ingest = commands.add_parser(
        "ingest", help="consume the behaviour topic into the per-view Neo4j graphs (exactly once)",
        description="Reads BehaviorEvent messages (protobuf or JSON) from ingest.topic as part of consumer group "
        "ingest.group_id, sessionizes them per user, and upserts weighted transitions per view, item "
        "memberships, session state and offsets into Neo4j in one transaction per batch. Bad messages go to "
        "ingest.dead_letter_topic with a reason header. Stops cleanly on SIGTERM / Ctrl-C.")
    ingest.add_argument("--until-idle", action="store_true",
                        help="exit once the graph holds every message of the topic (for scripts and tests)")
    ingest.add_argument("--group-id", help="consumer group (default: ingest.group_id)")
    ingest.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    ingest.add_argument("--json", action="store_true", help="print the final totals as JSON")
    ingest.set_defaults(handler=_ingest)

    replay = commands.add_parser(
        "replay", help="stream a real behaviour log into Kafka in event-time order",
        description="DATASET is a path or one of: movielens-100k (fetched from PyPI), taobao-head, "
        "taobao-timeslice, rees46 (from the shared data folder). Messages are keyed by user id.")
    add_dataset_arguments(replay, "send only the first N events (in time order)")
    replay.add_argument("--topic", help="target topic (default: ingest.topic)")
    replay.add_argument("--rate", type=above_zero, help="events per second (default: as fast as possible)")
    replay.add_argument("--json-encoding", action="store_true", help="send the JSON encoding instead of protobuf")
    replay.set_defaults(handler=_replay)

    data = commands.add_parser("data", help="obtain data sets")
    data_actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    fetch = data_actions.add_parser("fetch", help="download a data set into data.cache_dir and print its path")
    fetch.add_argument("name", choices=["movielens-100k"])
    fetch.set_defaults(handler=_fetch)


def _bench_scaling(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.bench.ingest import run_ingest_scaling_bench

    report = run_ingest_scaling_bench(settings, dataset=args.dataset, consumers=args.consumers,
                                      partitions=args.partitions, reuse_services=args.use_configured_services)
    if args.json:
        print_json(report)
        return 0
    many = report[f"{args.consumers}_consumers"]
    print(f"{report['dataset']}: {report['events']:,} events on {report['partitions']} partitions")
    print(f"  1 consumer:  {report['one_consumer']['events_per_s']:>8,} events/s")
    print(f"  {args.consumers} consumers: {many['events_per_s']:>8,} events/s  (× {report['speedup']})")
    print(f"  same graph: {'yes' if report['same_graph'] else 'NO'}")
    return 0


def _bench_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.bench.ingest import run_backfill_bench

    report = run_backfill_bench(settings, dataset=args.dataset, reuse_services=args.use_configured_services)
    if args.json:
        print_json(report)
        return 0
    print(f"{report['dataset']}: {report['events']:,} events into an empty store")
    print(f"  streamed (m2grl ingest):   {report['streaming']['events_per_s']:>8,} events/s")
    print(f"  backfilled (neo4j-admin):  {report['backfill']['events_per_s']:>8,} events/s  (× {report['ratio']}; "
          f"read {report['backfill']['read_s']} s, import and restart {report['backfill']['import_s']} s)")
    print(f"  same graph: {'yes' if report['same_graph'] else 'NO'}")
    return 0


def _log_bench(benches: argparse._SubParsersAction, name: str, help: str, description: str,
               handler: Callable[[argparse.Namespace, Settings], int]) -> argparse.ArgumentParser:
    """A benchmark over a replayed log: --dataset, --use-configured-services, --json."""
    bench = benches.add_parser(name, help=help, description=description)
    bench.add_argument("--dataset", help="data set name or path (see `m2grl replay --help`)")
    bench.add_argument("--use-configured-services", action="store_true",
                       help="run against the configured Kafka/Neo4j (WIPES the Neo4j database)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=handler)
    return bench


def register_bench(benches: argparse._SubParsersAction) -> None:
    _log_bench(
        benches, "ingest", "end-to-end ingest events/s vs direct Neo4j writes of the same batches",
        "Starts a throwaway Kafka and Neo4j (unless --use-configured-services), replays the log, times `m2grl "
        "ingest --until-idle` in a separate process, then times the same aggregated batches written straight to "
        "a wiped Neo4j. Default data: the Taobao time slice when the shared data folder is present, otherwise "
        "MovieLens-100K.", _bench)
    scaling = _log_bench(
        benches, "ingest-scaling", "one consumer vs several in one group on a multi-partition topic: events/s, "
        "same graph",
        "Replays the log into a topic with --partitions partitions, then ingests it twice into a wiped graph: with "
        "one `m2grl ingest` process, and with --consumers processes in one consumer group. Reports each one's "
        "events/s (wall time until the last process ends), the speed-up, and whether both graphs are identical "
        "(every edge weight, node count and membership).", _bench_scaling)
    scaling.add_argument("--consumers", type=at_least_one, default=3, help="processes in the group (default 3)")
    scaling.add_argument("--partitions", type=at_least_one, default=6, help="partitions of the topic (default 6)")
    _log_bench(
        benches, "backfill", "a new store from the whole log: `m2grl graph backfill` vs streaming, events/s, same "
        "graph",
        "Replays the log into a topic, streams it into an empty Neo4j with `m2grl ingest --until-idle`, then "
        "builds the same store with `m2grl graph backfill --replace` (the whole log read and folded, written for "
        "neo4j-admin, Neo4j stopped, imported and started, indexes made). Reports the events/s of both, their "
        "ratio, and whether the graphs are identical (every edge weight, node count and membership).",
        _bench_backfill)
