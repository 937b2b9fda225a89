"""`m2grl graph stats`: per view, how big the graph is and when it last changed."""

from __future__ import annotations

import argparse

from m2grl.console import format_utc, print_json
from m2grl.graphstore.connection import GraphStore
from m2grl.graphstore.stats import ViewStats, view_stats
from m2grl.settings import Settings


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


def register(commands: argparse._SubParsersAction) -> None:
    graph = commands.add_parser("graph", help="inspect the per-view graphs in Neo4j")
    actions = graph.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats = actions.add_parser(
        "stats", help="per view: nodes, transition edges, total edge weight, item memberships, last update",
        description="Edges are the view's transition relationships (e.g. ITEM_NEXT); weight is the sum of "
        "their counts; members counts item->value links of side views.")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=_stats)
