"""`m2grl snapshots list`: the versions kept in train.snapshot_dir; `m2grl snapshots rollback`: make
an earlier one current again."""

from __future__ import annotations

import argparse

from m2grl import snapshots
from m2grl.console import format_utc, print_json
from m2grl.errors import ConfigError
from m2grl.settings import Settings


def _list(args: argparse.Namespace, settings: Settings) -> int:
    root = settings.train.snapshot_dir
    current = snapshots.current_version(root)
    found: list[tuple[int, snapshots.Manifest | str]] = []
    for version in snapshots.published_versions(root):
        try:
            found.append((version, snapshots.read_manifest(root, version)))
        except (OSError, ValueError) as exc:
            found.append((version, f"unreadable: {exc}"))
    if args.json:
        print_json({"snapshot_dir": str(root), "current": current, "versions": [
            {"version": version, "current": version == current, "error": manifest} if isinstance(manifest, str) else
            {"version": version, "current": version == current, "created_ms": manifest.created_ms,
             "rows": manifest.rows, "segments": len(manifest.chain), "lineage": manifest.lineage}
            for version, manifest in found]})
        return 0
    if not found:
        print(f"no snapshot versions in {root}")
        return 0
    print(f"{'':2}{'version':>8}  {'created (UTC)':<20}{'segments':>9}  rows")
    for version, manifest in found:
        mark = "* " if version == current else "  "
        if isinstance(manifest, str):
            print(f"{mark}{version:>8}  {manifest}")
            continue
        sizes = ", ".join(f"{view} {count:,}" for view, count in manifest.rows.items())
        print(f"{mark}{version:>8}  {format_utc(manifest.created_ms):<20}{len(manifest.chain):>9}  {sizes}")
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    root = settings.train.snapshot_dir
    before = snapshots.current_version(root)
    try:
        manifest = snapshots.make_current(root, args.version)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(f"CURRENT in {root}: version {before} -> {manifest.version}; servers follow within rpc.poll_s. "
          "A trainer still running publishes its next round on top: stop it first, and it resumes from this "
          "version when started again.")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("snapshots", help="list the published embedding versions, roll back to one")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the versions kept in train.snapshot_dir (* marks CURRENT)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_list)
    rollback = actions.add_parser(
        "rollback", help="make an earlier version (one `list` shows) current again",
        description="Points CURRENT at VERSION. Servers watching the folder serve it at their next poll and log a "
        "warning. Stop the trainer first: a running one publishes its next round on top of it, as a new base; "
        "started again, it resumes from VERSION's checkpoint and re-reads what changed in the graphs since.")
    rollback.add_argument("version", type=int, metavar="VERSION", help="a version number from `m2grl snapshots list`")
    rollback.set_defaults(handler=_rollback)
