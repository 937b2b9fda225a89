"""Prometheus metrics of the server (scraped at http://<rpc metrics host>:<port>/metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LIVE_VERSION = Gauge("m2grl_rpc_snapshot_version", "Snapshot version being served")
SNAPSHOTS_REFUSED = Counter("m2grl_rpc_snapshots_refused_total",
                            "Published snapshot versions that failed to load or check and were not served")
