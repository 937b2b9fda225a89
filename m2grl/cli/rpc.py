"""`m2grl serve`, `m2grl query …` and `m2grl bench rpc`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from m2grl.console import above_zero, at_least_one, format_utc, print_json, stop_on_signals
from m2grl.errors import ConfigError
from m2grl.settings import Settings

if TYPE_CHECKING:
    from m2grl_client import EmbeddingClient

STOP_MARGIN_S = 10.0  # past rpc.grace_s, for the poller and the metrics endpoint to end


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.metrics import serve_metrics
    from m2grl.rpc.server import EmbeddingServer

    cfg = settings.rpc
    if args.port is not None:
        cfg = cfg.model_copy(update={"port": args.port})
    serve_metrics(cfg.metrics_host, cfg.metrics_port)
    server = EmbeddingServer(settings.train.snapshot_dir, cfg).start()
    print(f"serving on {cfg.host}:{server.port}; Ctrl-C or SIGTERM drains and stops", flush=True)
    # Calls in flight get rpc.grace_s; what is left by STOP_MARGIN_S after that does not hold the exit.
    server.wait(stop_on_signals(within_s=cfg.grace_s + STOP_MARGIN_S))
    return 0


def _client(args: argparse.Namespace, settings: Settings) -> EmbeddingClient:
    from m2grl.rpc.client import client_from_settings

    return client_from_settings(settings, replicas=args.target, timeout=args.timeout)


def _query_embed(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        answer = client.embeddings(args.view, args.ids)
    if args.json:
        print_json({"snapshot_version": answer.version, "embeddings": [
            {"id": ext, "found": bool(found), "vector": vector.tolist() if found else None}
            for ext, found, vector in zip(answer.ids, answer.found, answer.vectors)]})
        return 0
    print(f"snapshot {answer.version}, view {args.view}")
    for ext, found, vector in zip(answer.ids, answer.found, answer.vectors):
        shown = " ".join(f"{x:+.3f}" for x in vector[:8]) + (" …" if len(vector) > 8 else "")
        print(f"  {ext:<24} {shown if found else 'unknown id'}")
    return 0


def _parse_vector(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--vector takes comma-separated numbers, got {text!r}") from None


def _query_similar(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.ids) == (args.vector is not None):
        raise ConfigError("give ID (one or more) or --vector, not both")
    if len(args.ids) > 1:
        return _query_similar_to_each(args, settings)
    with _client(args, settings) as client:
        answer = client.similar(args.view, k=args.k, id=args.ids[0] if args.ids else None,
                                vector=_parse_vector(args.vector) if args.vector else None, exclude=args.exclude)
    if args.json:
        print_json({"snapshot_version": answer.version,
                    "results": [{"id": ext, "score": float(s)} for ext, s in zip(answer.ids, answer.scores)]})
        return 0
    print(f"snapshot {answer.version}, view {args.view}, nearest to {args.ids[0] if args.ids else 'the vector'}")
    for rank, (ext, score) in enumerate(zip(answer.ids, answer.scores), 1):
        print(f"  {rank:>4}. {ext:<24} {score:.4f}")
    return 0


def _query_similar_to_each(args: argparse.Namespace, settings: Settings) -> int:
    """Several ids: one SimilarItemsBatch call, one version."""
    with _client(args, settings) as client:
        answers = client.similar_to_each(args.view, args.ids, k=args.k, exclude=args.exclude)
    version = next((answer.version for answer in answers if answer is not None), None)
    if args.json:
        print_json({"snapshot_version": version, "queries": [
            {"id": query, "found": answer is not None,
             "results": [] if answer is None else [{"id": ext, "score": float(score)}
                                                   for ext, score in zip(answer.ids, answer.scores)]}
            for query, answer in zip(args.ids, answers)]})
        return 0
    for query, answer in zip(args.ids, answers):
        if answer is None:
            print(f"view {args.view}: {query} is not in the served snapshot")
            continue
        print(f"snapshot {answer.version}, view {args.view}, nearest to {query}")
        for rank, (ext, score) in enumerate(zip(answer.ids, answer.scores), 1):
            print(f"  {rank:>4}. {ext:<24} {score:.4f}")
    return 0


def _query_recommend(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        answer = client.recommend(args.recent, k=args.k, diversity=args.diversity)
    if args.json:
        print_json({"snapshot_version": answer.version, "unknown_recent_ids": answer.unknown_recent_ids,
                    "results": [r.__dict__ for r in answer.results]})
        return 0
    print(f"snapshot {answer.version}, for recent items {' '.join(args.recent)}")
    if answer.unknown_recent_ids:
        print(f"  unknown recent ids (ignored): {' '.join(answer.unknown_recent_ids)}")
    print(f"  {'rank':>4}  {'item':<24}{'score':>8}  {'route':<16} via")
    for rank, r in enumerate(answer.results, 1):
        print(f"  {rank:>4}  {r.item_id:<24}{r.score:>8.4f}  {r.route:<16} {r.via}")
    return 0


def _query_info(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        info = client.info()
    if args.json:
        print_json({"snapshot_version": info.version, "created_ms": info.created_ms,
                    "views": [v.__dict__ for v in info.views], "watermark_ms": info.watermark_ms,
                    "sigma2": info.sigma2})
        return 0
    print(f"snapshot {info.version}, published {format_utc(info.created_ms)}")
    for view in info.views:
        print(f"  view {view.name:<12} {view.count:>10,} ids × {view.dimension} dims, graph seen up to "
              f"{format_utc(info.watermark_ms.get(view.name, 0))}")
    for task, value in sorted(info.sigma2.items()):
        print(f"  σ² {task:<20} {value:.4f}")
    return 0


def _query_watch(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as client:
        for count, event in enumerate(client.watch(timeout=args.seconds), 1):
            if args.json:
                print_json(event.__dict__)
            else:
                added = ", ".join(f"{view} +{n:,}" for view, n in event.ids_added.items())
                print(f"snapshot {event.version} live, published {format_utc(event.created_ms)}; new ids: {added}",
                      flush=True)
            if args.count and count >= args.count:
                break
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve the newest snapshot over gRPC (vectors, neighbours, recommendations)",
        description="Serves m2grl.v1.EmbeddingService (protos/embedding.proto) with gRPC health checking and "
        "reflection. Loads the newest snapshot under train.snapshot_dir, then swaps in every newer one once it "
        "is read, checked and indexed; a corrupt version is logged, counted and never served. Optional TLS "
        "(rpc.tls_cert, rpc.tls_key) and bearer-token auth (rpc.token); metrics on rpc.metrics_port.")
    serve.add_argument("--port", type=int, help="gRPC port (default: rpc.port; 0 picks a free one)")
    serve.set_defaults(handler=_serve)

    query = commands.add_parser(
        "query", help="ask a running server: embed, similar, recommend, info, watch",
        description="A client of `m2grl serve`; address, token and TLS come from the rpc settings.")
    query.add_argument("--target", type=lambda text: [part.strip() for part in text.split(",") if part.strip()],
                       help="host:port of the server, or several separated by commas (replicas, balanced "
                       "round-robin); default: rpc.replicas, else rpc.host:rpc.port")
    query.add_argument("--timeout", type=above_zero, default=10.0, help="seconds per call (default 10)")
    query.add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions = query.add_subparsers(dest="action", required=True, metavar="ACTION")

    embed = actions.add_parser("embed", help="vectors of ids in one view")
    embed.add_argument("view")
    embed.add_argument("ids", nargs="+", metavar="ID")
    embed.set_defaults(handler=_query_embed)

    similar = actions.add_parser("similar", help="nearest ids to an id, to each of several ids (one call), or to "
                                 "a vector, in one view")
    similar.add_argument("view", help="a view name; \"\" means the item view")
    similar.add_argument("ids", nargs="*", metavar="ID")
    similar.add_argument("--vector", help="comma-separated components instead of an ID")
    similar.add_argument("-k", type=int, default=10, help="how many (default 10)")
    similar.add_argument("--exclude", nargs="*", default=[], metavar="ID", help="ids never to return")
    similar.set_defaults(handler=_query_similar)

    recommend = actions.add_parser("recommend", help="items for a user from their recent items (most recent last)")
    recommend.add_argument("recent", nargs="+", metavar="ITEM_ID")
    recommend.add_argument("-k", type=int, default=10, help="how many (default 10)")
    recommend.add_argument("--diversity", type=float, default=0.0,
                           help="share of results from nearby categories the user has not visited (0 to 1)")
    recommend.set_defaults(handler=_query_recommend)

    info = actions.add_parser("info", help="what is served: views, sizes, version, watermarks, σ² per task")
    info.set_defaults(handler=_query_info)

    watch = actions.add_parser("watch", help="print each snapshot version as it goes live")
    watch.add_argument("--count", type=at_least_one, help="stop after this many versions")
    watch.add_argument("--seconds", type=above_zero, help="stop after this many seconds")
    watch.set_defaults(handler=_query_watch)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from m2grl.lab.bench.rpc import run_rpc_bench

    report = run_rpc_bench(settings, rows=args.rows, dim=args.dim, seconds=args.seconds,
                           concurrency=args.concurrency, rounds=args.rounds, swap_seconds=args.swap_seconds,
                           progress=not args.json)
    if args.json:
        print_json(report)
        return 0
    snap = report["snapshot"]
    print(f"rpc benchmark: {snap['rows']:,} × {snap['dim']} snapshot (first load and index {snap['first_load_s']} s)")
    print(f"  {'method':<18}{'p50 ms':>9}{'p99 ms':>9}{'qps (1)':>9}{'qps (' + str(args.concurrency) + ')':>9}")
    for kind in ("empty-embeddings", "embeddings", "empty-similar", "similar"):
        one, many = report["one_at_a_time"][kind], report[f"{args.concurrency}_callers"][kind]
        print(f"  {kind:<18}{one['p50_ms']:>9.2f}{one['p99_ms']:>9.2f}{one['qps']:>9,}{many['qps']:>9,}")
    ratios, alone = report["qps_ratio_to_empty"], report["qps_ratio_to_empty_one_at_a_time"]
    print(f"  GetEmbeddings / empty handler: {ratios['embeddings']:.2f} (target >= 0.7); SimilarItems / empty handler "
          f"one at a time: {alone['similar']:.2f} (target >= 0.5); SimilarItems recall@100 "
          f"{report['similar_recall_at_100']:.3f} (target >= 0.95)")
    for label, swaps in (("during swaps", report["during_swaps"]),
                         ("while a publisher writes them beside", report["during_swaps_beside_publisher"])):
        print(f"  {label}: {swaps['went_live']} of {swaps['published']} published versions went live, "
              f"{swaps['calls']:,} calls, failures {swaps['failures'] or 'none'}, p99 {swaps['p99_ms']:.1f} ms, max "
              f"{swaps['max_ms']:.1f} ms = {swaps['max_over_idle_p99']:.1f} × idle p99 (target <= 3, during swaps)")
    print(f"  server peak RSS {report['server_peak_rss_mb']:,} MB; targets met: "
          f"{', '.join(name for name, ok in report['met'].items() if ok) or 'none'}; missed: "
          f"{', '.join(name for name, ok in report['met'].items() if not ok) or 'none'}")
    return 0


def register_bench(benches: argparse._SubParsersAction) -> None:
    bench = benches.add_parser(
        "rpc", help="gRPC latency and QPS on a 1M × 64 snapshot vs an empty handler, and during swaps",
        description="Generates a snapshot (vectors around many centres), serves it from a separate process with "
        "an empty Baseline handler beside the real ones, and measures from this process: p50/p99 latency one "
        "call at a time and QPS with --concurrency callers, for GetEmbeddings (100 ids) and SimilarItems "
        "(k = 100), each against the empty handler; SimilarItems recall@100 against exact search; then calls "
        "while a new version goes live every second: written ahead and moved in (the server's own swapping: the "
        "target), then written as it goes by a publisher on the same cores. Reports the server's peak RSS. The "
        "versions written ahead take about 260 MB each at 1M × 64 in the temporary folder.")
    bench.add_argument("--rows", type=at_least_one, default=1_000_000, help="items in the snapshot (default 1,000,000)")
    bench.add_argument("--dim", type=at_least_one, default=64, help="dimensions (default 64)")
    bench.add_argument("--seconds", type=above_zero, default=5.0, help="seconds per measured phase (default 5)")
    bench.add_argument("--concurrency", type=at_least_one, default=4,
                       help="callers for the throughput phases (default 4)")
    bench.add_argument("--rounds", type=at_least_one, default=3,
                       help="throughput phases per handler, taking turns with its empty baseline (default 3)")
    bench.add_argument("--swap-seconds", type=above_zero, default=20.0,
                       help="seconds of calls during swaps (default 20)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_bench)
