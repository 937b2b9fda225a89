"""The `m2grl` command line: parse, load settings once, call the component, print errors as one line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from m2grl import __version__
from m2grl.errors import ConfigError, M2grlError
from m2grl.settings import Settings, load_settings, masked_dict, render_toml

Handler = Callable[[argparse.Namespace, Settings], int]


def _services_up(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.services import launcher

    launcher.up(settings)
    return 0


def _services_down(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.services import launcher

    launcher.down(settings)
    return 0


def _services_status(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.services import launcher

    statuses = launcher.status(settings)
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        for s in statuses:
            state = "healthy" if s.healthy else ("unhealthy" if s.running else "stopped")
            origin = f"pid {s.pid}" if s.managed and s.pid else ("external" if not s.managed else "-")
            where = ", ".join(f"{k} {v}" for k, v in s.endpoints.items())
            print(f"{s.name:<6} {state:<9} {origin:<12} {where}")
            if s.error:
                print(f"       {s.error}")
    return 0 if all(s.healthy for s in statuses) else 3


def _tail(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        return fh.read().decode(errors="replace").splitlines()[-lines:]


def _services_logs(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.services import launcher

    names = [args.service] if args.service else ["kafka", "neo4j"]
    paths = {name: launcher.log_path(settings, name) for name in names}
    for name, path in paths.items():
        if not path.exists():
            print(f"==> {name}: no log yet at {path}", file=sys.stderr)
            continue
        print(f"==> {name}: {path}")
        for line in _tail(path, args.lines):
            print(line)
    if args.follow:
        offsets = {name: path.stat().st_size if path.exists() else 0 for name, path in paths.items()}
        while True:
            for name, path in paths.items():
                if path.exists() and path.stat().st_size > offsets[name]:
                    with path.open("rb") as fh:
                        fh.seek(offsets[name])
                        chunk = fh.read()
                    offsets[name] += len(chunk)
                    for line in chunk.decode(errors="replace").splitlines():
                        print(f"[{name}] {line}" if len(paths) > 1 else line, flush=True)
            time.sleep(0.5)
    return 0


def _config_show(args: argparse.Namespace, settings: Settings) -> int:
    data = masked_dict(settings)
    print(json.dumps(data, indent=2) if args.json else render_toml(data), end="\n" if args.json else "")
    return 0


def _not_in_this_release(command: str, issue: int) -> Handler:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        raise ConfigError(f"`m2grl {command}` is not part of this release yet (tracked in issue #{issue})")

    return handler


def build_parser() -> argparse.ArgumentParser:
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    services = commands.add_parser(
        "services", help="start, stop and inspect the local Kafka and Neo4j",
        description="Run Kafka (KRaft) and Neo4j Community from Maven Central jars as background processes "
        "under the state folder (services.state_dir). Servers named by M2GRL_KAFKA_BOOTSTRAP or "
        "M2GRL_NEO4J_URI are used as they are and never started or stopped.",
    )
    actions = services.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start both services (idempotent) and wait until they answer requests")
    up.set_defaults(handler=_services_up)
    down = actions.add_parser("down", help="stop the services this state folder started (SIGTERM, then SIGKILL)")
    down.set_defaults(handler=_services_down)
    status = actions.add_parser("status", help="pid, ports and health of each service; exit 3 if any is unhealthy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_services_status)
    logs = actions.add_parser("logs", help="print the end of a service's log")
    logs.add_argument("service", nargs="?", choices=["kafka", "neo4j"], help="one service (default: both)")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to print (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.set_defaults(handler=_services_logs)

    config = commands.add_parser("config", help="inspect the effective settings")
    config_actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = config_actions.add_parser("show", help="print the effective settings, secrets masked, as TOML")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(handler=_config_show)
    for command, issue, summary in (
        ("ingest", 3, "consume the behaviour topic into the per-view Neo4j graphs"),
        ("train", 4, "train the M2GRL embeddings on a schedule and publish snapshots"),
        ("serve", 5, "serve the newest snapshot over gRPC"),
    ):
        stage = commands.add_parser(command, help=f"{summary} (not in this release yet)")
        stage.set_defaults(handler=_not_in_this_release(command, issue))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        handler: Handler = args.handler
        return handler(args, settings)
    except M2grlError as exc:
        print(f"m2grl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
