"""`m2grl serve`: the EmbeddingService with health checking and reflection, optional TLS and token
auth, a poller that swaps in each new snapshot, and a shutdown that drains calls in flight.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from m2grl.errors import ConfigError
from m2grl.rpc.live import LiveSnapshots, in_background
from m2grl.rpc.service import BearerTokenAuth, EmbeddingServicer, Observed
from m2grl.settings import RpcSettings
from m2grl_client import embedding_pb2 as pb
from m2grl_client import embedding_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
KEEPALIVE_TIMEOUT_MS = 20_000  # rpc.keepalive_s's description names it


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _check_exposure(cfg: RpcSettings) -> None:
    """Refuse to listen beyond loopback with neither TLS nor a token, unless rpc.allow_insecure."""
    if _loopback(cfg.host) or (cfg.tls_cert is not None and cfg.token is not None):
        return
    missing = " and ".join(name for name, value in (("TLS (rpc.tls_cert, rpc.tls_key)", cfg.tls_cert),
                                                    ("a token (rpc.token)", cfg.token)) if value is None)
    if not cfg.allow_insecure:
        raise ConfigError(f"rpc.host {cfg.host} is reachable beyond this machine, without {missing}: set them, "
                          "or set rpc.allow_insecure on a private network")
    log.warning("listening on %s without %s (rpc.allow_insecure)", cfg.host, missing)


def _credentials(cfg: RpcSettings) -> grpc.ServerCredentials | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    try:
        return grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())])
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key (rpc.tls_cert, rpc.tls_key): {exc}") from None


class EmbeddingServer:
    """A started server; ``stop`` drains it. ``port`` is the bound port (rpc.port 0 picks one)."""

    def __init__(self, snapshot_dir: Path, cfg: RpcSettings,
                 also_serve: Sequence[Callable[[grpc.Server], None]] = ()) -> None:
        """``also_serve``: functions adding more servicers (the benchmark's baseline)."""
        _check_exposure(cfg)
        self.cfg = cfg
        self.live = LiveSnapshots(snapshot_dir, cfg)
        self._stopping = threading.Event()
        interceptors: list[grpc.ServerInterceptor[Any, Any]] = [Observed()]
        if cfg.token is not None:
            interceptors.append(BearerTokenAuth(cfg.token.get_secret_value()))
        # The transport's own limit only guards memory; requests between it and rpc.max_request_bytes
        # get a readable INVALID_ARGUMENT from the servicer instead of RESOURCE_EXHAUSTED.
        # Past maximum_concurrent_rpcs gRPC answers RESOURCE_EXHAUSTED itself; keepalive pings end the
        # calls of a client that vanished without closing its connection.
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="rpc"),
            interceptors=interceptors, maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[("grpc.keepalive_time_ms", round(cfg.keepalive_s * 1000)),
                     ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
                     ("grpc.http2.max_pings_without_data", 0),  # a stream with nothing to send still pings
                     ("grpc.max_receive_message_length", 4 * cfg.max_request_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0),
                     ("grpc.max_connection_age_ms", round(cfg.max_connection_age_s * 1000)),
                     ("grpc.max_connection_age_grace_ms", round(cfg.grace_s * 1000))])
        pb_grpc.add_EmbeddingServiceServicer_to_server(EmbeddingServicer(self.live, cfg, self._stopping), self._server)
        for add in also_serve:
            add(self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        credentials = _credentials(cfg)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(cfg.address)
            else:
                self.port = self._server.add_secure_port(cfg.address, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {cfg.address} (rpc.host, rpc.port): {exc}") from None
        self.tls = credentials is not None
        self._poller = threading.Thread(target=self._follow_snapshots, name="snapshot-poller", daemon=True)

    def start(self) -> EmbeddingServer:
        self._set_health()
        self._server.start()
        self._poller.start()
        log.info("gRPC server on %s:%d (%s%s), serving snapshots from %s", self.cfg.host, self.port,
                 "TLS" if self.tls else "plaintext", ", token auth" if self.cfg.token else "", self.live.root)
        return self

    def _set_health(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self.live.current is not None
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            self._health.set(name, status)

    def _follow_snapshots(self) -> None:
        in_background(self.cfg)
        waiting_logged = False
        while not self._stopping.is_set():
            try:
                if self.live.refresh():
                    self._set_health()
                elif self.live.current is None and not waiting_logged:
                    log.info("waiting for a first snapshot under %s (UNAVAILABLE until then)", self.live.root)
                    waiting_logged = True
            except Exception:  # a poller that dies would silently freeze the served version
                log.exception("checking for a new snapshot failed; still serving the last good one")
            self._stopping.wait(self.cfg.poll_s)

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let the ones in flight finish (up to ``grace`` seconds), end watch streams."""
        self._health.enter_graceful_shutdown()
        self._stopping.set()
        self._server.stop(self.cfg.grace_s if grace is None else grace).wait()
        self._poller.join(timeout=5)
        log.info("gRPC server stopped")

    def wait(self, stop: threading.Event) -> None:
        stop.wait()
        self.stop()
