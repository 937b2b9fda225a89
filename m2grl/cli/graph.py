"""`m2grl graph stats`: per view, how big the graph is and when it last changed; `m2grl graph
backfill`: the local Neo4j filled from the whole behaviour topic by neo4j-admin's bulk import."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from m2grl.console import format_utc, print_json
from m2grl.errors import ConfigError
from m2grl.graphstore.connection import GraphStore
from m2grl.graphstore.stats import ViewStats, view_stats
from m2grl.settings import Settings
from m2grl.views import View


def collect_stats(settings: Settings) -> list[ViewStats]:
    result = []
    for view in settings.views.viewset.all:
        with GraphStore(settings.neo4j_for(view)) as store:
            result.append(view_stats(store, view))
    return result


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    stats = collect_stats(settings)
    if args.json:
        print_json([s.as_dict() for s in stats])
        return 0
    print(f"{'view':<12}{'nodes':>10}{'edges':>10}{'weight':>12}{'members':>10}  last update")
    for s in stats:
        print(f"{s.view:<12}{s.nodes:>10}{s.edges:>10}{s.total_weight:>12}{s.memberships:>10}  "
              f"{format_utc(s.last_update_ms, missing='never')}")
    return 0


def _default_store_views(settings: Settings) -> tuple[View, ...]:
    from m2grl.ingest.applier import group_views_by_store

    home = (settings.neo4j.bolt_uri, settings.neo4j.database)
    views = next((views for target, views in group_views_by_store(settings)
                  if (target.bolt_uri, target.database) == home), ())
    if not views:
        raise ConfigError("every view lives in a Neo4j of its own (views.stores): run backfill with settings whose "
                          "neo4j section names the store to fill")
    return views


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.graphstore.bulk import write_import_files
    from m2grl.graphstore.maintenance import holds_data
    from m2grl.graphstore.schema import ensure_schema
    from m2grl.ingest.backfill import read_log
    from m2grl.services import launcher

    say = (lambda _: None) if args.json else print
    views = _default_store_views(settings)
    local = settings.neo4j.managed
    if not local and args.files is None:
        raise ConfigError(f"neo4j.uri names a server m2grl does not run ({settings.neo4j.bolt_uri}); neo4j-admin "
                          "imports beside the database: give --files DIR, copy DIR there and run the printed command")
    started = time.perf_counter()
    if local:
        launcher.start(launcher.service_named(settings, "neo4j"), report=say)
        with GraphStore(settings.neo4j) as store:
            if holds_data(store) and not args.replace:
                raise ConfigError(f"database {settings.neo4j.database!r} holds a graph already; backfill builds a "
                                  "store from nothing (stop ingest, then pass --replace to overwrite it)")
    say(f"backfill of {', '.join(view.name for view in views)} from topic {settings.ingest.topic!r}")
    log = read_log(settings, views, progress=not args.json)
    graph = log.graph
    counts = {view.name: {"nodes": len(graph.nodes[view.name]), "transitions": len(graph.transitions[view.name]),
                          "memberships": len(graph.memberships.get(view.name, {}))} for view in views}
    report: dict[str, object] = {
        "topic": settings.ingest.topic, "events": graph.events, "rejected": log.rejected,
        "dead_lettered": log.dead_lettered, "read_s": round(log.seconds, 2), "offsets": log.offsets, "views": counts}
    say(f"read {graph.events:,} events in {log.seconds:.1f} s; {log.rejected:,} rejected "
        f"({log.dead_lettered:,} sent to {settings.ingest.dead_letter_topic!r}, the rest were there already)")
    for name, count in counts.items():
        say(f"  {name}: {count['nodes']:,} nodes, {count['transitions']:,} transitions, "
            f"{count['memberships']:,} memberships")
    with tempfile.TemporaryDirectory(prefix="m2grl-backfill-") as scratch:
        folder = args.files or Path(scratch)
        files = write_import_files(folder, graph, topic=settings.ingest.topic, offsets=log.offsets,
                                   now_ms=int(time.time() * 1000))
        del graph, log
        if not local:
            report["command"] = (f"neo4j-admin database import full {settings.neo4j.database} "
                                 f"--overwrite-destination=true {' '.join(files.arguments(relative_to=folder))}")
            say(f"import files in {folder}; copy the folder to the Neo4j server and, with the server stopped, run "
                f"there in the copy:\n  {report['command']}\nthen start it; `m2grl ingest` creates the indexes and "
                "streams on")
        else:
            imported = time.perf_counter()
            launcher.import_neo4j_database(settings, files.arguments(), report=say)
            with GraphStore(settings.neo4j) as store:
                ensure_schema(store, views)
            report["import_s"] = round(time.perf_counter() - imported, 2)
            say(f"done: streaming resumes after offsets {report['offsets']} of {settings.ingest.topic!r}")
    report["seconds"] = round(time.perf_counter() - started, 2)
    if args.json:
        print_json(report)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    graph = commands.add_parser("graph", help="inspect the per-view graphs in Neo4j")
    actions = graph.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser(
        "stats", help="per view: nodes, transition edges, total edge weight, item memberships, last update",
        description="Edges are the view's transition relationships (e.g. ITEM_NEXT); weight is the sum of "
        "their counts; members counts item->value links of side views.")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=_stats)
    backfill = actions.add_parser(
        "backfill", help="fill the local Neo4j from the whole behaviour topic in bulk (neo4j-admin import)",
        description="Reads the behaviour topic from its first offset to its end now, applies the consumer's rules "
        "(rejections go to the dead-letter topic once), and writes the graphs of the views that live in the "
        "neo4j store, their open sessions and the offsets they reach with `neo4j-admin database import full`: the "
        "server is stopped for the import and started again. `m2grl ingest` then streams on from those offsets, "
        "every later event applied exactly once. Stop ingest first. The read holds the graph in memory.")
    backfill.add_argument("--replace", action="store_true",
                          help="overwrite a database that holds a graph already (refused otherwise)")
    backfill.add_argument("--files", type=Path, metavar="DIR",
                          help="keep the import files in DIR; with a Neo4j m2grl does not run (neo4j.uri), only "
                          "write them and print the neo4j-admin command to run beside it")
    backfill.add_argument("--json", action="store_true", help="print a JSON report instead of progress")
    backfill.set_defaults(handler=_backfill)
