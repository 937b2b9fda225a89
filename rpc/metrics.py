"""Prometheus metrics of the server (scraped at http://<rpc.metrics_host>:<rpc.metrics_port>/metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LIVE_VERSION = Gauge("m2grl_rpc_snapshot_version", "Snapshot version being served")
SNAPSHOTS_REFUSED = Counter("m2grl_rpc_snapshots_refused_total",
                            "Published snapshot versions that failed to load or check and were not served")
REQUESTS = Counter("m2grl_rpc_requests_total", "Calls answered, by method and gRPC status code", ["method", "code"])
LATENCY = Histogram("m2grl_rpc_latency_seconds", "Time to answer a call (streams: until they end), by method",
                    ["method"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
INDEX_EXACT_ROWS = Gauge("m2grl_rpc_index_exact_rows",
                         "Rows of the served version searched exhaustively: changed since its graph was built, "
                         "or all of a view without one (small, or its graph still building), by view", ["view"])
INDEX_MERGES = Counter("m2grl_rpc_index_merges_total",
                       "Changed rows added to a copy of a view's graph, or the graph built afresh, in the background, "
                       "by view", ["view"])
