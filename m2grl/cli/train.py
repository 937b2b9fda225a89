"""`m2grl train`, `m2grl eval` and `m2grl bench train`."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from m2grl.console import at_least_one, exit_if_running_after, print_json, stop_on_signals
from m2grl.errors import ConfigError
from m2grl.settings import Settings

if TYPE_CHECKING:
    from m2grl.lab.evaluation import DiversitySweep
    from m2grl.train.trainer import RoundStats

# Over three seeds the incremental quality ratio of one configuration ranged 0.95-0.99 with the
# seeds chosen; per seed it spreads by 6 %, so over ten by about 2 % (BENCHMARKS.md).
BENCH_SEEDS = 10


def _train(args: argparse.Namespace, settings: Settings) -> int:
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun in each rank it starts
    if ranks > 1:
        if args.nproc not in (1, ranks):
            raise ConfigError(f"--nproc {args.nproc} inside a torchrun group of {ranks} ranks")
        return _train_as_rank(args, settings)
    if args.nproc > 1:
        return _launch_ranks(args, settings.train.stop_timeout_s)
    from m2grl.metrics import serve_metrics
    from m2grl.train.service import exclusive_trainer, run_scheduled
    from m2grl.train.trainer import Trainer

    with exclusive_trainer(settings):
        if args.once:
            trainer = Trainer(settings)
            try:
                stats = trainer.round(full=args.full, progress=not args.json)
            finally:
                trainer.close()
            _report(stats, args.json, settings)
            return 0
        serve_metrics(settings.train.metrics_host, settings.train.metrics_port)
        trainer = Trainer(settings, cold_start=True)
        try:
            stop = stop_on_signals(within_s=settings.train.stop_timeout_s)
            run_scheduled(trainer.round, settings.train.interval_s, stop, first_full=args.full,
                          full_every=settings.train.full_every_rounds, between_rounds=trainer.admit_new_items,
                          between_every_s=settings.train.cold_start_interval_s)
        finally:
            trainer.close()
        return 0


def _report(stats: RoundStats, as_json: bool, settings: Settings) -> None:
    """What `m2grl train --once` prints of its round."""
    from m2grl.train.service import describe, record

    record(stats)
    if as_json:
        summary = {key: value for key, value in stats.__dict__.items() if key != "curve"}
        print_json({**summary, "pairs_per_s": round(stats.pairs_per_s)})
    else:
        print(describe(stats))
        print(f"published to {settings.train.snapshot_dir}")


def _launch_ranks(args: argparse.Namespace, stop_timeout_s: float) -> int:
    """Run torchrun, starting ``--nproc`` ranks of this same command on this machine, each with an
    equal share of the cores unless OMP_NUM_THREADS says otherwise; torchrun's exit code. torchrun
    restarts the whole group from the last version when a rank dies, up to ``--restarts`` times.

    SIGTERM and SIGINT go to the ranks, not to torchrun: their leader finishes the round and stops
    them all, and torchrun then ends as they did (signalled itself, it ends them within 30 s and
    exits with an error whatever they did). Still running ``stop_timeout_s`` after the signal, they
    are killed and this exits with OVERDUE_EXIT."""
    import psutil

    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, cores // args.nproc)))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               f"--max-restarts={0 if args.once else args.restarts}", "-m", "m2grl", *_without_nproc(sys.argv[1:])]
    launcher = subprocess.Popen(command, env=env, start_new_session=True)

    def end_all() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)

    def to_ranks(signum: int, _frame: object) -> None:
        with contextlib.suppress(psutil.Error):
            for rank in psutil.Process(launcher.pid).children():
                rank.send_signal(signum)
        if not stopping.is_set():
            stopping.set()
            exit_if_running_after(stop_timeout_s, f"the ranks still run {stop_timeout_s:g} s after "
                                  f"{signal.Signals(signum).name}; killed", before=end_all)

    stopping = threading.Event()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, to_ranks)
    return launcher.wait()


def _without_nproc(argv: list[str]) -> list[str]:
    """``argv`` without --nproc and its value: the ranks learn their number from torchrun, whose own
    parser would take --nproc for its --nproc-per-node."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _train_as_rank(args: argparse.Namespace, settings: Settings) -> NoReturn:
    """One rank of a sharded trainer (train/exchange.py): the leader takes the snapshot folder's
    lock, serves the metrics, keeps the schedule and prints; every rank trains its rows."""
    from m2grl.metrics import serve_metrics
    from m2grl.train.exchange import join_ranks, leave_ranks
    from m2grl.train.service import exclusive_trainer, run_ranks_scheduled
    from m2grl.train.trainer import Trainer

    exchange = join_ranks()
    stop = stop_on_signals()  # on the others, ignored: they stop when the leader says so
    with exclusive_trainer(settings) if exchange.leader else contextlib.nullcontext():
        trainer = Trainer(settings, exchange=exchange)
        try:
            if args.once:
                stats = trainer.round(full=args.full, progress=exchange.leader and not args.json)
                if exchange.leader:
                    _report(stats, args.json, settings)
            else:
                if exchange.leader:
                    serve_metrics(settings.train.metrics_host, settings.train.metrics_port)
                run_ranks_scheduled(trainer, settings.train.interval_s, stop, first_full=args.full,
                                    full_every=settings.train.full_every_rounds)
        finally:
            trainer.close()
    leave_ranks()


def _side_views(requested: str | None, settings: Settings, events: list) -> tuple[str, ...]:
    """The side views to evaluate: --views; else the configured ones the data has; else every one it has."""
    present = {view for event in events[:10_000] for view in event.side}
    if requested is not None:
        wanted = tuple(v for v in requested.split(",") if v)
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ConfigError(f"the data set has no {', '.join(missing)} attribute (it has: "
                              f"{', '.join(sorted(present)) or 'none'})")
        return wanted
    return tuple(v for v in settings.views.viewset.side_names if v in present) or tuple(sorted(present))


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.cli.ingest import dataset_from_args
    from m2grl.lab.evaluation import evaluate

    _ref, events = dataset_from_args(args, settings)
    side = _side_views(args.views, settings, events)
    methods = tuple(m for m in args.methods.split(",") if m)
    report = evaluate(settings, events, side, dataset=args.dataset, methods=methods, seeds=args.seeds,
                      query=args.query, progress=not args.json)
    plot = None
    if args.plot:
        from m2grl.lab.plots import plot_evaluation

        plot = plot_evaluation(report, Path(args.plot))
    if args.json:
        print_json({**report.to_json(), "plot": str(plot) if plot else None})
        return 0
    seeds = len(report.seeds)
    print(f"{args.dataset}: {report.train_events:,} training events, {report.cases} test users, "
          f"views {', '.join(report.views)}, {report.query} queries"
          + (f"; mean ± sd over {seeds} seeds" if seeds > 1 else ""))
    columns = [name for name in next(iter(report.methods.values())).scores if name != "coverage"]
    width = 16 if seeds > 1 else 9
    header = "".join(f"{name.upper():>{width}}" for name in columns)
    print(f"{'method':<12}{header}{'coverage':>10}{'train s':>9}")
    for name, result in report.methods.items():
        cells = [f"{result.scores[c]:.3f}" + (f" ± {result.sd[c]:.3f}" if seeds > 1 else "") for c in columns]
        print(f"{name:<12}" + "".join(f"{cell:>{width}}" for cell in cells)
              + f"{result.scores['coverage']:>10.2f}{result.seconds:>9.1f}")
    if "m2grl" in report.methods:
        sigma = ", ".join(f"{task} {value:.3f}" for task, value in report.methods["m2grl"].sigma2.items())
        print(f"M2GRL σ²: {sigma}")
    if report.sweep is not None:
        _print_sweep(report.sweep, seeds)
    if plot:
        print(f"plot: {plot}")
    return 0


def _print_sweep(sweep: DiversitySweep, seeds: int) -> None:
    from m2grl.lab.evaluation import HISTORY_ITEMS, RECOMMENDED

    if sweep.skipped:
        print(sweep.skipped)
        return
    print(f"Recommend diversity sweep (M2GRL, top {RECOMMENDED} from the last {HISTORY_ITEMS} distinct items): "
          f"HR@{RECOMMENDED} and distinct {sweep.view} values among the {RECOMMENDED}")
    for row in sweep.summary():
        cells = [f"{row[name]:.3f}" + (f" ± {row[name + '_sd']:.3f}" if seeds > 1 else "")
                 for name in (f"hr@{RECOMMENDED}", f"distinct@{RECOMMENDED}")]
        print(f"  diversity {row['diversity']:.1f}" + "".join(f"{cell:>18}" for cell in cells))


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train the M2GRL embeddings on a schedule and publish snapshots",
        description="Every train.interval_s (default 30 s) reads what changed in the per-view graphs since the "
        "last round, grows the tables for new ids (old ids keep their rows), gives new items a first vector "
        "from their side views, trains all M2GRL tasks on walks from the touched nodes plus a replay share, "
        "and publishes a versioned snapshot to train.snapshot_dir. Rounds never overlap; missed ticks "
        "coalesce; SIGTERM lets the running round finish. A restart resumes from the last snapshot. Between "
        "rounds and during them, about every train.cold_start_interval_s (default 1 s), brand-new items are "
        "published with a first vector from their side views, so they are servable within seconds. With "
        "--nproc N the tables and their optimiser state are sharded by row over N processes (torch.distributed, "
        "gloo): one of them reads Neo4j for all and publishes each version as one, in global rows, so serving "
        "and a later trainer of any number of processes read it alike; brand-new items then wait for the "
        "next round (no cold-start lane).")
    train.add_argument("--once", action="store_true", help="run one round with a progress bar, then exit")
    train.add_argument("--full", action="store_true",
                       help="rebuild from scratch: fresh tables (ids keep their rows), walks from every node")
    train.add_argument("--json", action="store_true", help="with --once: print the round's stats as JSON")
    train.add_argument("--nproc", type=at_least_one, default=1, metavar="N",
                       help="shard the tables over N processes on this machine, started by torchrun (default 1: "
                       "one process, with the cold-start lane). The processes split the cores unless "
                       "OMP_NUM_THREADS is set. Across machines, start `m2grl train` with torchrun yourself "
                       "(docs/training.md, Several processes)")
    train.add_argument("--restarts", type=int, default=3, metavar="K",
                       help="with --nproc, times torchrun restarts the group from the last version after a "
                       "process dies (default 3; none with --once)")
    train.set_defaults(handler=_train)

    evaluation = commands.add_parser(
        "eval", help="next-item evaluation: M2GRL vs DeepWalk vs EGES-style vs popularity, same run",
        description="Time-ordered leave-last-out: per user, the last distinct item is the target and the one "
        "before it the query; every method trains one full round on the events before the targets (same "
        "settings, same seed, so the same item walks) and ranks all items by cosine to the query. Prints "
        "HitRate@10/20/50, MRR@20 and cold-query coverage per method. Then M2GRL's round is served as `m2grl "
        "serve` serves it and Recommend is asked for each user's top 20 at diversity 0, 0.3 and 0.5: HR@20 and "
        "the distinct values of rpc.diversity_view (categories; the first side view where the data has none) among "
        "the 20. No Kafka or Neo4j needed.")
    from m2grl.cli.ingest import add_dataset_arguments
    from m2grl.lab import EVAL_METHODS as METHODS

    add_dataset_arguments(evaluation, "use only the first N events (in time order)")
    evaluation.add_argument("--views", help="comma-separated side views (default: the configured ones the data "
                            "has, else every side attribute it has)")
    evaluation.add_argument("--seeds", type=at_least_one, default=1,
                            help="train each learned method once per seed (train.seed, +1, ...) and report the mean "
                            "and standard deviation of every score (default 1)")
    evaluation.add_argument("--query", choices=("last", "history"), default="last",
                            help="rank from the item before the target (last), or from the user's last 10 distinct "
                            "items as Recommend does: each candidate by its recency-weighted mean cosine to them, "
                            "the most recent one left out (history)")
    evaluation.add_argument("--methods", default=",".join(METHODS),
                            help=f"comma-separated (default: {','.join(METHODS)})")
    evaluation.add_argument("--plot", metavar="PNG", help="write loss and σ² per task, HR@K per method and the "
                            "diversity sweep to this file")
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

    distributed = benches.add_parser(
        "distributed", help="the trainer sharded over gloo ranks against one process: pairs/s, bytes, HR@20",
        description="Per seed, one full M2GRL round on a real log (default: the Taobao head when the shared data "
        "folder is present, otherwise MovieLens-100K) by one process with every core, then by --ranks processes "
        "of torch.distributed (gloo, started by torch.multiprocessing), each with its share of the cores and "
        "its rows of every table. Reports pairs/s of one process and per rank, the per-rank efficiency (a "
        "rank's pairs/s per core over one process's; 1: the exchange costs nothing), the bytes each rank sent "
        "per step and per pair, and the mean HR@20 of both (leave-last-out, as `m2grl eval`) with the issue's "
        "target for their ratio. On one machine the ranks share its cores, so a speed-up "
        "is not the point: efficiency and bytes per pair are, from which docs/scaling.md extrapolates. No "
        "Kafka or Neo4j needed.")
    distributed.add_argument("--dataset", help="data set name or path (see `m2grl eval --help`)")
    distributed.add_argument("--ranks", type=at_least_one, default=2, help="processes of the sharded run (default 2)")
    distributed.add_argument("--seeds", type=at_least_one, default=3,
                             help="seeds from train.seed up; their means are reported (default 3)")
    distributed.add_argument("--json", action="store_true")
    distributed.set_defaults(handler=_bench_distributed)


def _bench_distributed(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.bench.distributed import run_distributed_bench

    report = run_distributed_bench(settings, dataset=args.dataset, ranks=args.ranks, seeds=args.seeds)
    if args.json:
        print_json(report)
        return 0
    alone, sharded = report["one_process"], report["sharded"]
    print(f"distributed benchmark on {report['dataset']} ({report['train_events']:,} events, "
          f"{report['test_users']} test users, {len(report['seeds'])} seed(s))")
    print(f"  one process, {report['machine']['threads_one_process']} threads: {alone['pairs_per_s']:>10,} pairs/s  "
          f"round {alone['round_s']:.1f} s  HR@20 {alone['hr@20']:.4f}")
    print(f"  {report['ranks']} ranks, {report['machine']['threads_per_rank']} thread(s) each: "
          f"{sharded['pairs_per_s_per_rank']:>10,} pairs/s per rank  round {sharded['round_s']:.1f} s  "
          f"HR@20 {sharded['hr@20']:.4f}")
    print(f"  per-rank efficiency {report['per_rank_efficiency']:.2f}; sent per rank "
          f"{sharded['sent_bytes_per_step']:,} B a step, {sharded['sent_bytes_per_pair']:.1f} B a pair")
    target = report["targets"]["hr_ratio"]
    verdict = "met" if target["met"] else "NOT met"
    print(f"  HR@20 ratio {report['hr_ratio']} (target >= {target['at_least']}: {verdict})")
    return 0
