"""The `m2grl` command line: parse, load settings once, call the component, print errors as one line.

Each command group has a module beside this one that registers its subcommands
(``register(commands)``); this module only assembles them and owns the error boundary: any
M2grlError (or the client kit's ClientError) becomes ``m2grl: error: ...`` and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from m2grl import __version__
from m2grl.console import above_zero, at_least_one, print_json, setup_logging
from m2grl.errors import M2grlError
from m2grl.settings import Settings, load_settings, masked_dict, render_toml
from m2grl_client.errors import ClientError

Handler = Callable[[argparse.Namespace, Settings], int]


def _config_show(args: argparse.Namespace, settings: Settings) -> int:
    data = masked_dict(settings)
    if args.json:
        print_json(data)
    else:
        print(render_toml(data), end="")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.demo import DemoOptions, run_demo

    return run_demo(settings, DemoOptions(
        dataset=args.dataset, limit=args.limit, rate=args.rate, interval_s=args.interval, evaluate=not args.no_eval,
        keep_serving=args.keep_serving, wipe_graph=args.wipe_graph))


def build_parser() -> argparse.ArgumentParser:
    from m2grl.cli import bench as pipeline_benches
    from m2grl.cli import config_reference
    from m2grl.cli import graph as graph_commands
    from m2grl.cli import ingest as ingest_commands
    from m2grl.cli import rpc as rpc_commands
    from m2grl.cli import services as services_commands
    from m2grl.cli import snapshots as snapshot_commands
    from m2grl.cli import train as train_commands

    parser = argparse.ArgumentParser(
        prog="m2grl",
        description="Fresh multi-view graph embeddings (M2GRL) from a live behaviour stream: Kafka consumers "
        "write per-view graphs to Neo4j, a DGL trainer updates the embeddings, a gRPC server publishes them.",
        epilog="Settings come from M2GRL_<SECTION>_<FIELD> environment variables and an optional TOML file; "
        "`m2grl config show` prints the effective values.",
    )
    parser.add_argument("--version", action="version", version=f"m2grl {__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML settings file (default: $M2GRL_CONFIG, else ./m2grl.toml if present)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    services_commands.register(commands)
    ingest_commands.register(commands)
    graph_commands.register(commands)
    train_commands.register(commands)
    rpc_commands.register(commands)
    snapshot_commands.register(commands)

    demo = commands.add_parser(
        "demo", help="the whole system on real data in a few minutes: stream, train, serve, query, evaluate",
        description="Starts Kafka and Neo4j (unless configured ones are set), runs ingest, training (every "
        "--interval seconds) and the gRPC server as separate processes, streams a real log (the Taobao head "
        "from the shared data folder when present, otherwise MovieLens-100K), then shows neighbours and a "
        "diverse recommendation served over gRPC, how fresh they are, and the offline evaluation of M2GRL "
        "against DeepWalk, EGES-style and popularity with a plot. Each run has its own topic and snapshot "
        "folder under services.state_dir/demo/; a local Neo4j's graph is wiped first.")
    demo.add_argument("--dataset", help="data set name or path (default: taobao-head if present, else movielens-100k)")
    demo.add_argument("--limit", type=at_least_one, metavar="N", help="use only the first N events (in time order)")
    demo.add_argument("--rate", type=above_zero, default=2000.0, help="events per second to stream (default 2000)")
    demo.add_argument("--interval", type=above_zero, default=10.0, help="seconds between training rounds (default 10)")
    demo.add_argument("--no-eval", action="store_true", help="skip the offline evaluation (saves a few minutes)")
    demo.add_argument("--keep-serving", action="store_true",
                      help="afterwards keep ingest, training and the server running until Ctrl-C")
    demo.add_argument("--wipe-graph", action="store_true",
                      help="with a configured (non-local) Neo4j: delete its graph first (required if it is not empty)")
    demo.set_defaults(handler=_demo)

    config = commands.add_parser("config", help="inspect the effective settings")
    config_actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = config_actions.add_parser("show", help="print the effective settings, secrets masked, as TOML")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(handler=_config_show)
    config_reference.register(config_actions)

    bench = commands.add_parser("bench", help="benchmarks that print JSON (each measures its baseline in the same run)")
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    ingest_commands.register_bench(benches)
    train_commands.register_bench(benches)
    rpc_commands.register_bench(benches)
    pipeline_benches.register_bench(benches)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(args.verbose)
        handler: Handler = args.handler
        return handler(args, settings)
    except (M2grlError, ClientError) as exc:
        print(f"m2grl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
