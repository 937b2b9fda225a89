"""The Prometheus endpoint every long-running m2grl command serves its metrics on."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(host: str, port: int) -> None:
    """Expose the process's metrics over HTTP (port 0: keep them in-process only)."""
    if port:
        start_http_server(port, addr=host)
