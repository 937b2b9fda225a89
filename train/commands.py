"""`m2grl train`."""

from __future__ import annotations

import argparse

from m2grl.settings import Settings


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.cli import print_json, stop_on_signals
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
                print_json({**stats.__dict__, "pairs_per_s": round(stats.pairs_per_s)})
            else:
                print(describe(stats))
                print(f"published to {settings.train.snapshot_dir}")
            return 0
        serve_metrics(settings.train.metrics_host, settings.train.metrics_port)
        trainer = Trainer(settings)
        try:
            run_scheduled(trainer.round, settings.train.interval_s, stop_on_signals(), first_full=args.full)
        finally:
            trainer.close()
        return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train the M2GRL embeddings on a schedule and publish snapshots",
        description="Every train.interval_s (default 30 s) reads what changed in the per-view graphs since the "
        "last round, grows the tables for new ids (old ids keep their rows), gives new items a first vector "
        "from their side views, trains all M2GRL tasks on walks from the touched nodes plus a replay share, "
        "and publishes a versioned snapshot to train.snapshot_dir. Rounds never overlap; missed ticks "
        "coalesce; SIGTERM lets the running round finish. A restart resumes from the last snapshot.")
    train.add_argument("--once", action="store_true", help="run one round with a progress bar, then exit")
    train.add_argument("--full", action="store_true",
                       help="rebuild from scratch: fresh tables (ids keep their rows), walks from every node")
    train.add_argument("--json", action="store_true", help="with --once: print the round's stats as JSON")
    train.set_defaults(handler=_train)
