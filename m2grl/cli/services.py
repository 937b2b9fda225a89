"""`m2grl services ...`: start, stop and inspect the local Kafka and Neo4j."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from m2grl.services import launcher
from m2grl.settings import Settings

SERVICE_NAMES = ("kafka", "neo4j")


def _up(args: argparse.Namespace, settings: Settings) -> int:
    launcher.up(settings)
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    launcher.down(settings)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
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
    with path.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 256 * 1024))
        return fh.read().decode(errors="replace").splitlines()[-lines:]


def _follow(paths: dict[str, Path]) -> None:
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


def _logs(args: argparse.Namespace, settings: Settings) -> int:
    names = [args.service] if args.service else list(SERVICE_NAMES)
    paths = {name: launcher.log_path(settings, name) for name in names}
    for name, path in paths.items():
        if not path.exists():
            print(f"==> {name}: no log yet at {path}")
            continue
        print(f"==> {name}: {path}")
        for line in _tail(path, args.lines):
            print(line)
    if args.follow:
        _follow(paths)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    services = commands.add_parser(
        "services", help="start, stop and inspect the local Kafka and Neo4j",
        description="Run Kafka (KRaft) and Neo4j Community from Maven Central jars as background processes "
        "under the state folder (services.state_dir). Servers named by M2GRL_KAFKA_BOOTSTRAP or "
        "M2GRL_NEO4J_URI are used as they are and never started or stopped.",
    )
    actions = services.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("up", help="start both services (idempotent) and wait until they answer requests"
                       ).set_defaults(handler=_up)
    actions.add_parser("down", help="stop the services this state folder started (SIGTERM, then SIGKILL)"
                       ).set_defaults(handler=_down)
    status = actions.add_parser("status", help="pid, ports and health of each service; exit 3 if any is unhealthy")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)
    logs = actions.add_parser("logs", help="print the end of a service's log")
    logs.add_argument("service", nargs="?", choices=SERVICE_NAMES, help="one service (default: both)")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to print (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.set_defaults(handler=_logs)
