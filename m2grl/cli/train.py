"""`m2grl train`, `m2grl eval` and `m2grl bench train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from m2grl.console import at_least_one, print_json, stop_on_signals
from m2grl.errors import ConfigError
from m2grl.settings import Settings

# Over three seeds the incremental quality ratio of one configuration ranged 0.95-0.99 with the
# seeds chosen; per seed it spreads by 6 %, so over ten by about 2 % (BENCHMARKS.md).
BENCH_SEEDS = 10


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.metrics import serve_metrics
    from m2grl.train.service import describe, exclusive_trainer, record, run_scheduled
    from m2grl.train.trainer import Trainer

    with exclusive_trainer(settings):
        if args.once:
            trainer = Trainer(settings)
            try:
                stats = trainer.round(full=args.full, progress=not args.json)
            finally:
                trainer.close()
            record(stats)
            if args.json:
                summary = {key: value for key, value in stats.__dict__.items() if key != "curve"}
                print_json({**summary, "pairs_per_s": round(stats.pairs_per_s)})
            else:
                print(describe(stats))
                print(f"published to {settings.train.snapshot_dir}")
            return 0
        serve_metrics(settings.train.metrics_host, settings.train.metrics_port)
        trainer = Trainer(settings, cold_start=True)
        try:
            run_scheduled(trainer.round, settings.train.interval_s, stop_on_signals(), first_full=args.full,
                          full_every=settings.train.full_every_rounds, between_rounds=trainer.admit_new_items,
                          between_every_s=settings.train.cold_start_interval_s)
        finally:
            trainer.close()
        return 0


def _side_views(requested: str | None, settings: Settings, events: list) -> tuple[str, ...]:
    """The side views to evaluate: --views, or the configured ones the data has."""
    present = {view for event in events[:10_000] for view in event.side}
    if requested is not None:
        wanted = tuple(v for v in requested.split(",") if v)
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ConfigError(f"the data set has no {', '.join(missing)} attribute (it has: "
                              f"{', '.join(sorted(present)) or 'none'})")
        return wanted
    side = tuple(v for v in settings.views.side if v in present)
    if not side:
        raise ConfigError(f"none of the configured side views ({', '.join(settings.views.side)}) is in the data "
                          f"(it has: {', '.join(sorted(present)) or 'none'}); pass --views")
    return side


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.cli.ingest import dataset_from_args
    from m2grl.lab.evaluation import KS, evaluate

    _ref, events = dataset_from_args(args, settings)
    side = _side_views(args.views, settings, events)
    methods = tuple(m for m in args.methods.split(",") if m)
    report = evaluate(settings, events, side, dataset=args.dataset, methods=methods, progress=not args.json)
    plot = None
    if args.plot:
        from m2grl.lab.plots import plot_evaluation

        plot = plot_evaluation(report, Path(args.plot))
    if args.json:
        print_json({**report.to_json(), "plot": str(plot) if plot else None})
        return 0
    print(f"{args.dataset}: {report.train_events:,} training events, {report.cases} test users, "
          f"views {', '.join(report.views)}")
    header = "".join(f"{f'HR@{k}':>8}" for k in KS)
    print(f"{'method':<12}{header}{'MRR@20':>8}{'coverage':>10}{'train s':>9}")
    for name, result in report.methods.items():
        hits = "".join(f"{result.scores[f'hr@{k}']:>8.3f}" for k in KS)
        print(f"{name:<12}{hits}{result.scores['mrr@20']:>8.3f}{result.scores['coverage']:>10.2f}"
              f"{result.seconds:>9.1f}")
    if "m2grl" in report.methods:
        sigma = ", ".join(f"{task} {value:.3f}" for task, value in report.methods["m2grl"].sigma2.items())
        print(f"M2GRL σ²: {sigma}")
    if plot:
        print(f"plot: {plot}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train the M2GRL embeddings on a schedule and publish snapshots",
        description="Every train.interval_s (default 30 s) reads what changed in the per-view graphs since the "
        "last round, grows the tables for new ids (old ids keep their rows), gives new items a first vector "
        "from their side views, trains all M2GRL tasks on walks from the touched nodes plus a replay share, "
        "and publishes a versioned snapshot to train.snapshot_dir. Rounds never overlap; missed ticks "
        "coalesce; SIGTERM lets the running round finish. A restart resumes from the last snapshot. Between "
        "rounds and during them, about every train.cold_start_interval_s (default 1 s), brand-new items are "
        "published with a first vector from their side views, so they are servable within seconds.")
    train.add_argument("--once", action="store_true", help="run one round with a progress bar, then exit")
    train.add_argument("--full", action="store_true",
                       help="rebuild from scratch: fresh tables (ids keep their rows), walks from every node")
    train.add_argument("--json", action="store_true", help="with --once: print the round's stats as JSON")
    train.set_defaults(handler=_train)

    evaluation = commands.add_parser(
        "eval", help="next-item evaluation: M2GRL vs DeepWalk vs EGES-style vs popularity, same run",
        description="Time-ordered leave-last-out: per user, the last distinct item is the target and the one "
        "before it the query; every method trains one full round on the events before the targets (same "
        "settings, same seed, so the same item walks) and ranks all items by cosine to the query. Prints "
        "HitRate@10/20/50, MRR@20 and cold-query coverage per method. No Kafka or Neo4j needed.")
    from m2grl.cli.ingest import add_dataset_arguments
    from m2grl.lab import EVAL_METHODS as METHODS

    add_dataset_arguments(evaluation, "use only the first N events (in time order)")
    evaluation.add_argument("--views", help="comma-separated side views (default: the configured ones the data has)")
    evaluation.add_argument("--methods", default=",".join(METHODS),
                            help=f"comma-separated (default: {','.join(METHODS)})")
    evaluation.add_argument("--plot", metavar="PNG", help="write loss and σ² per task and HR@K per method to this file")
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(handler=_eval)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.bench.train import run_train_bench

    report = run_train_bench(settings, dataset=args.dataset, seeds=args.seeds)
    if args.json:
        print_json(report)
        return 0
    ours, gensim = report["throughput"]["ours"], report["throughput"]["gensim"]
    print(f"train benchmark on {report['dataset']} ({report['train_events']:,} events, "
          f"{report['test_users']} test users)")
    print(f"  ours (item view, {ours['epochs']} epoch): {ours['pairs_per_s']:>10,} pairs/s  HR@20 {ours['hr@20']:.3f}")
    for run in gensim:
        print(f"  gensim, {run['epochs']} epoch(s):       {run['pairs_per_s']:>10,} pairs/s  HR@20 {run['hr@20']:.3f}")
    print(f"  throughput ratio {report['throughput']['ratio']:.2f} (target >= 1.0 at equal or better HR@20)")
    inc = report["incremental"]
    print(f"  incremental round after the last 5 %, mean of {len(inc['seeds'])} seed(s): "
          f"{inc['incremental']['seconds']:.1f} s, HR@20 {inc['incremental']['hr@20']:.3f}; full rebuild "
          f"{inc['full_rebuild']['seconds']:.1f} s, HR@20 {inc['full_rebuild']['hr@20']:.3f}: time "
          f"{inc['time_ratio']:.2f} (target <= 0.10), quality {inc['quality_ratio']:.2f} (target >= 0.98; per seed "
          f"{', '.join(f'{q:.2f}' for q in inc['quality_ratio_per_seed'])})")
    print(f"  peak RSS {report['peak_rss_mb']['whole_run']} MB")
    return 0


def register_bench(benches: argparse._SubParsersAction) -> None:
    bench = benches.add_parser(
        "train", help="our trainer vs gensim Word2Vec (pairs/s, HR@20) and incremental vs full rounds",
        description="On one walk corpus (the item view of a full round), times our trainer and gensim 4.4 "
        "skip-gram (same dimension, window, negatives, 2 workers; 1 and 5 epochs; ours and gensim's 1 epoch take "
        "turns twice and their rates are of both runs) and compares HR@20; then times "
        "an incremental round after the last 5 % of the log against a full rebuild and compares their HR@20, "
        "once per seed (their summed times and mean HR@20 give the ratios: one seed's HR@20 moves by several "
        "percent on a thousand test users). "
        "Default data: the Taobao head when the shared data folder is present, otherwise MovieLens-100K. No "
        "Kafka or Neo4j needed.")
    bench.add_argument("--dataset", help="data set name or path (see `m2grl eval --help`)")
    bench.add_argument("--seeds", type=at_least_one, default=BENCH_SEEDS,
                       help="seeds of the incremental-against-rebuild comparison, from train.seed up "
                       f"(default {BENCH_SEEDS})")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_bench)
