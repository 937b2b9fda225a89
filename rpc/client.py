"""The client kit (clients/python, package m2grl_client) pointed at the servers m2grl's settings
describe: the one place the kit meets the settings, which it does not import."""

from __future__ import annotations

from collections.abc import Sequence

from m2grl.settings import Settings
from m2grl_client import EmbeddingClient


def client_from_settings(settings: Settings, replicas: Sequence[str] | None = None,
                         timeout: float = 10.0) -> EmbeddingClient:
    """A client of the servers these settings describe (rpc.replicas, else rpc.host and rpc.port;
    the token and TLS CA), or of ``replicas`` with the settings' token and TLS."""
    cfg = settings.rpc
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return EmbeddingClient(replicas or cfg.replicas or [f"{host}:{cfg.port}"],
                           token=cfg.token.get_secret_value() if cfg.token else None, tls_ca=cfg.tls_ca or cfg.tls_cert,
                           timeout=timeout)
