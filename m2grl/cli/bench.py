"""`m2grl bench freshness` and `m2grl bench load` (the whole pipeline measured from outside), and
`m2grl bench scale` (training, publishing and serving as the number of items grows)."""

from __future__ import annotations

import argparse
from typing import Any

from m2grl.console import above_zero, at_least_one, print_json
from m2grl.lab.bench import pipeline as bench
from m2grl.lab.bench import scale as scale_bench
from m2grl.settings import Settings


def _freshness(args: Any, settings: Settings) -> int:
    report = bench.run_freshness_bench(settings, dataset=args.dataset, limit=args.limit, rate=args.rate,
                                       probes=args.probes, every_s=args.every, interval_s=args.interval)
    if args.json:
        print_json(report)
        return 0
    print(f"freshness on {report['dataset']} (stream {report['stream_rate']['achieved']:,} events/s, training "
          f"every {report['train_interval_s']:g} s, {report['versions_during_probes']} versions went live)")
    for key, label, target in (("new_item_servable", "brand-new item servable", bench.TARGET_NEW_ITEM_P95_S),
                               ("retrained_served", "retrained vector served", bench.TARGET_RETRAINED_P95_S)):
        row = report[key]
        print(f"  {label:<26} p50 {row['p50_s']} s  p95 {row['p95_s']} s  max {row['max_s']} s  "
              f"({row['probes']} probes, {row['never_fresh']} never; target p95 <= {target:g} s)")
    return 0


def _load(args: Any, settings: Settings) -> int:
    report = bench.run_load_bench(settings, dataset=args.dataset, limit=args.limit, rate=args.rate,
                                  seconds=args.seconds, idle_seconds=args.idle_seconds, concurrency=args.concurrency,
                                  interval_s=args.interval)
    if args.json:
        print_json(report)
        return 0
    idle, busy = report["idle"], report["under_ingest_and_training"]
    print(f"load on {report['dataset']}, {report['callers']} callers ({report['calls']})")
    print(f"  idle:                    {idle['qps']:>6,} calls/s  p50 {idle['p50_ms']} ms  p99 {idle['p99_ms']} ms  "
          f"failures {idle['failures'] or 0}")
    print(f"  during ingest + training: {busy['qps']:>5,} calls/s  p50 {busy['p50_ms']} ms  p99 {busy['p99_ms']} ms  "
          f"failures {busy['failures'] or 0}  ({busy['versions_went_live']} versions went live)")
    print(f"  p99 {report['p99_over_idle']} × idle (target <= {bench.TARGET_LOAD_P99_OVER_IDLE:g} ×, zero errors)")
    return 0


def item_counts(text: str) -> tuple[int, ...]:
    """argparse type of --items: comma-separated counts, each at least 1,000 (below that a round's
    2,000 new transitions would be no small change), sorted and without repeats."""
    counts = []
    for part in text.split(","):
        try:
            count = int(part.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a whole number") from None
        if count < 1000:
            raise argparse.ArgumentTypeError(f"item counts must be at least 1000, got {count}")
        counts.append(count)
    return tuple(sorted(set(counts)))


def _scale(args: Any, settings: Settings) -> int:
    report = scale_bench.run_scale_bench(settings, items=args.items, rounds=args.rounds, config=args.config)
    if args.json:
        print_json(report)
        return 0
    print(f"scale: {len(report['sizes'])} sizes, {report['workload']['incremental_rounds']} incremental rounds each "
          f"(2,000 transitions + 100 new items per round), {report['machine']['cpus']} CPUs")
    for size in report["sizes"]:
        inc, trainer, server, restart = size["incremental"]["median"], size["trainer"], size["server"], size["restart"]
        phases = ", ".join(f"{phase.removesuffix('_s')} {inc[phase]:.2f}" for phase in
                           ("read_merge_s", "grow_s", "walks_s", "pairs_s", "steps_s", "publish_s"))
        print(f"  {size['items']:>10,} items: incremental round {inc['seconds']:.2f} s ({phases})")
        print(f"{'':>20}{inc['bytes_written'] / 2**20:.1f} MB per version ({size['incremental']['bytes_per_item']:.0f} "
              f"B/item); trainer {trainer['peak_rss_mb']:,.0f} MB ({trainer['peak_rss_bytes_per_item']:,} B/item)")
        print(f"{'':>20}server {server['peak_rss_mb']:,.0f} MB ({server['peak_rss_bytes_per_item']:,} B/item), serving "
              f"within {server['serving_within_s']:.2f} s, moves in {server['move_median_s']:.3f} s; restart: "
              f"restore {restart['restore_s']:.1f} s + reload graph {restart['reload_graph_s']:.1f} s")
    for name, target in report["targets"].items():
        value = "-" if target["value"] is None else f"{target['value']:g}"
        print(f"  {name}: {value} (target <= {target['at_most']:g}: {'met' if target['met'] else 'NOT met'})")
    return 0


def register_bench(benches: Any) -> None:
    common = {"help": "data set name or path (default: taobao-head if present, else movielens-100k)"}
    freshness = benches.add_parser(
        "freshness", help="seconds from produce until new items are servable and retrained vectors are served",
        description="Runs ingest, training and serving as separate processes, warms them up on the first half of a "
        "real log, then streams the rest at --rate while injecting probes: a brand-new item (measured until "
        "GetEmbeddings returns its first, side-view vector) and a pair of known items (measured until a snapshot "
        "trained on a graph read after their transition was written goes live). Prints p50/p95/max of each.")
    freshness.add_argument("--dataset", **common)
    freshness.add_argument("--limit", type=at_least_one, metavar="N",
                           help="use only the first N events (in time order)")
    freshness.add_argument("--rate", type=above_zero, default=300.0, help="background events per second (default 300)")
    freshness.add_argument("--probes", type=at_least_one, default=20, help="probes of each kind (default 20)")
    freshness.add_argument("--every", type=above_zero, default=5.0, help="seconds between probes (default 5)")
    freshness.add_argument("--interval", type=above_zero,
                           help="seconds between training rounds (default: train.interval_s)")
    freshness.add_argument("--json", action="store_true")
    freshness.set_defaults(handler=_freshness)

    load = benches.add_parser(
        "load", help="gRPC latency and errors under sustained calls while ingest and training run",
        description="Runs the whole pipeline, warms it up on the first half of a real log, then drives the server "
        "with --concurrency callers (GetEmbeddings, SimilarItems and Recommend in turn): first with nothing "
        "streaming (the idle baseline), then for --seconds while the rest of the log streams at --rate and "
        "training rounds run. Reports calls/s, p50/p99 and failures of both; target: zero errors, p99 within "
        "3 × idle.")
    load.add_argument("--dataset", **common)
    load.add_argument("--limit", type=at_least_one, metavar="N", help="use only the first N events (in time order)")
    load.add_argument("--rate", type=above_zero, default=300.0, help="events per second streamed (default 300)")
    load.add_argument("--seconds", type=above_zero, default=60.0, help="seconds of load while streaming (default 60)")
    load.add_argument("--idle-seconds", type=above_zero, default=15.0, help="seconds of the idle baseline (default 15)")
    load.add_argument("--concurrency", type=at_least_one, default=4, help="callers (default 4)")
    load.add_argument("--interval", type=above_zero, help="seconds between training rounds (default: train.interval_s)")
    load.add_argument("--json", action="store_true")
    load.set_defaults(handler=_load)

    scale = benches.add_parser(
        "scale", help="incremental round, publishing and serving as the number of items grows",
        description="For each --items N: generates N items with 5·N Zipf-skewed transitions and a category side "
        "view, trains one small full round, then --rounds incremental rounds, each adding 2,000 transitions and "
        "100 brand-new items (the same change whatever N). Reports per N the median incremental round split into "
        "read/merge, grow, walks, pairs, steps and publish; bytes written per version (files new on disk, hard "
        "links free); the trainer's peak RSS; a separate server process's time to serve the first version and to "
        "move to each new one, and its peak RSS; and a restarted trainer's time to restore from the snapshot "
        "and to reload the whole graph. Trainer, server and restarted trainer each run in their own process, "
        "taking turns; every N's trainer and server stay alive and the sizes take turns round by round, so the "
        "machine's drift reaches every N alike (about 10 GB in all at the default sizes). The smallest N is the "
        "baseline: ratios are largest N over smallest, and the targets are "
        "checked at the largest: incremental round within 1.5 × the smallest N's, trainer peak RSS <= 1.2 KB per item, "
        "server <= 0.5 KB per item beyond its ANN index, a move to a new version <= 50 ms, a fresh server serving "
        "within 15 s. No Kafka or Neo4j needed; the snapshots go to a temporary folder, one per N.")
    scale.add_argument("--items", type=item_counts, default=scale_bench.DEFAULT_ITEMS, metavar="N,N,…",
                       help="comma-separated item counts (default "
                       f"{','.join(map(str, scale_bench.DEFAULT_ITEMS))})")
    scale.add_argument("--rounds", type=at_least_one, default=scale_bench.DEFAULT_ROUNDS,
                       help="incremental rounds per N; their median is reported "
                       f"(default {scale_bench.DEFAULT_ROUNDS})")
    scale.add_argument("--json", action="store_true")
    scale.set_defaults(handler=_scale)
