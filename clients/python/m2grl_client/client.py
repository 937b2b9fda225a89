"""A typed Python client of m2grl's EmbeddingService: numpy arrays in and out, and an RpcError
(m2grl_client.errors) out of every failed call.

Below, ``address`` is the host:port of ``m2grl serve`` and ``item`` an item id it serves; these
examples run as tests (tests/clients/test_kit.py) against a real server.

    >>> from m2grl_client import EmbeddingClient
    >>> client = EmbeddingClient(address)  # or a list of replicas' host:port; token= and tls_ca= if set
    >>> answer = client.embeddings("item", [item, "no-such-item"])
    >>> answer.found.tolist(), answer.vectors.shape  # rows of unknown ids are 0
    ([True, False], (2, ...))
    >>> nearest = client.similar("item", id=item, k=5)  # or vector=[...]; the query itself left out
    >>> len(nearest.ids), bool(nearest.scores[0] >= nearest.scores[-1])  # cosine, best first
    (5, True)
    >>> for query, found in zip([item, "no-such-item"], client.similar_to_each("item", [item, "no-such-item"], k=5)):
    ...     print(query == item, None if found is None else len(found.ids))  # one call, one version
    True 5
    False None
    >>> picks = client.recommend([item], k=5, diversity=0.4)  # 2 of 5 from categories near the item's
    >>> sorted(pick.route for pick in picks.results)
    ['item-neighbour', 'item-neighbour', 'item-neighbour', 'nearby-category', 'nearby-category']
    >>> client.info().version == next(client.watch(timeout=5)).version  # watch: each version as it goes live
    True
    >>> client.similar("no-such-view", id=item, k=5)
    Traceback (most recent call last):
    m2grl_client.errors.RpcError: NOT_FOUND: ...
    >>> client.close()

Replicas are gRPC's own business: one channel over every replica's address with the round_robin
policy, and a retry policy that sends a call that got UNAVAILABLE (a replica stopping, or behind the
call's min_version) to the next replica, within the call's deadline. A monotonic client asks each
call for at least the highest version it has seen, so its answers never go back in version.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from numpy.typing import NDArray

from m2grl_client import embedding_pb2 as pb
from m2grl_client import embedding_pb2_grpc as pb_grpc
from m2grl_client.errors import ClientConfigError, RpcError

ROUTE_NAMES = {pb.ROUTE_ITEM_NEIGHBOUR: "item-neighbour", pb.ROUTE_NEARBY_CATEGORY: "nearby-category"}
SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
ATTEMPTS = 4  # per call, the first included; gRPC allows at most 5


@dataclass(frozen=True)
class Embeddings:
    version: int
    ids: list[str]
    found: NDArray[np.bool_]  # per id
    vectors: NDArray[np.float32]  # (ids, dim); rows of unknown ids are 0


@dataclass(frozen=True)
class Neighbours:
    version: int
    ids: list[str]
    scores: NDArray[np.float32]  # cosine similarities, best first


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    route: str  # "item-neighbour" or "nearby-category"
    via: str


@dataclass(frozen=True)
class Recommendations:
    version: int
    results: list[Recommendation]
    unknown_recent_ids: list[str]


@dataclass(frozen=True)
class SnapshotEvent:
    version: int
    created_ms: int
    ids_added: dict[str, int]
    rows_changed: dict[str, int]


@dataclass(frozen=True)
class ViewInfo:
    name: str
    dimension: int
    count: int


@dataclass(frozen=True)
class ModelInfo:
    version: int
    created_ms: int
    views: list[ViewInfo]
    watermark_ms: dict[str, int] = field(default_factory=dict)
    sigma2: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else None
        raise RpcError(code.name if code else "UNKNOWN", detail if detail is not None else str(exc)) from None


def _service_config() -> str:
    retry = {"maxAttempts": ATTEMPTS, "initialBackoff": "0.05s", "maxBackoff": "1s", "backoffMultiplier": 2,
             "retryableStatusCodes": ["UNAVAILABLE"]}
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                       "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": retry}]})


def _addresses(replica: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    host, _, port = replica.rpartition(":")
    if not host or not port.isdigit() or "://" in replica:
        raise ClientConfigError(f"replica {replica!r} is not host:port (one dns:/// name goes alone, not in a list)")
    try:
        found = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ClientConfigError(f"cannot resolve replica {replica!r}: {exc}") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in found))


def channel_target(replicas: Sequence[str]) -> str:
    """One gRPC target for ``replicas``: a single one as it is (host:port, whose DNS records gRPC
    balances over and reads again on reconnection, or any gRPC target URI), several as one
    ipv4:/ipv6: address list, their names resolved now."""
    if not replicas:
        raise ClientConfigError("no server to call: give at least one host:port")
    if len(replicas) == 1:
        return replicas[0]
    found = {replica: _addresses(replica) for replica in replicas}
    # One address family for all (gRPC's address lists hold one): IPv4 where every replica has one,
    # as a name like localhost often resolves to both.
    for family, scheme, form in ((4, "ipv4:", "{}:{}"), (6, "ipv6:", "[{}]:{}")):
        if all(any(address.version == family for address in addresses) for addresses in found.values()):
            return scheme + ",".join(form.format(address, replica.rpartition(":")[2])
                                     for replica, addresses in found.items()
                                     for address in addresses if address.version == family)
    raise ClientConfigError(f"replicas {', '.join(replicas)} have no address family in common (IPv4 or IPv6); gRPC "
                      "balances over one")


class EmbeddingClient:
    def __init__(self, replicas: str | Sequence[str], *, token: str | None = None, tls_ca: Path | None = None,
                 timeout: float = 10.0, monotonic: bool = False) -> None:
        """``replicas``: host:port, or several (see ``channel_target``). ``tls_ca``: PEM of the
        certificates to trust (the server's own for a self-signed one); without it the connection
        is plaintext; with several replicas, each must present a certificate for the first one's
        host name. ``monotonic``: every call asks for at least the highest version seen so far."""
        replicas = [replicas] if isinstance(replicas, str) else list(replicas)
        target = channel_target(replicas)
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1),
                   ("grpc.enable_retries", 1), ("grpc.service_config", _service_config())]
        if len(replicas) > 1:
            options.append(("grpc.default_authority", replicas[0]))
        if tls_ca is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            try:
                credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
            except OSError as exc:
                raise ClientConfigError(f"cannot read the TLS CA file {tls_ca}: {exc}") from None
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.monotonic = monotonic
        self.highest_version = 0  # of every answer so far
        self._lock = threading.Lock()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _at_least(self, min_version: int) -> int:
        return max(min_version, self.highest_version) if self.monotonic else min_version

    def _saw(self, version: int) -> int:
        with self._lock:
            self.highest_version = max(self.highest_version, version)
        return version

    def embeddings(self, view: str, ids: Sequence[str], *, min_version: int = 0) -> Embeddings:
        """Every method's ``min_version``: answer from that snapshot version or a later one."""
        request = pb.GetEmbeddingsRequest(view=view, ids=ids, min_version=self._at_least(min_version))
        with _translated():
            response = self._stub.GetEmbeddings(request, timeout=self.timeout, metadata=self._metadata)
        found = np.array(response.found, dtype=bool)
        vectors = np.zeros((len(found), response.dimension), dtype=np.float32)
        vectors[found] = np.frombuffer(response.vectors, "<f4").reshape(-1, response.dimension)
        return Embeddings(self._saw(response.snapshot_version), list(ids), found, vectors)

    def similar(self, view: str, *, k: int, id: str | None = None, vector: Sequence[float] | None = None,
                exclude: Sequence[str] = (), min_version: int = 0) -> Neighbours:
        """Neighbours of an id of ``view`` or of a vector (give exactly one)."""
        if (id is None) == (vector is None):
            raise ClientConfigError("give exactly one of id and vector")
        request = pb.SimilarItemsRequest(view=view, k=k, exclude=exclude, min_version=self._at_least(min_version))
        if id is not None:
            request.id = id
        else:
            request.vector.values.extend(np.asarray(vector, dtype=np.float32).tolist())
        with _translated():
            response = self._stub.SimilarItems(request, timeout=self.timeout, metadata=self._metadata)
        return Neighbours(self._saw(response.snapshot_version), list(response.ids),
                          np.array(response.scores, dtype=np.float32))

    def similar_to_each(self, view: str, ids: Sequence[str], *, k: int, exclude: Sequence[str] = (),
                        min_version: int = 0) -> list[Neighbours | None]:
        """Per id of ``view``, in order, its ``k`` neighbours (itself left out), or None for an id the
        served snapshot does not have; one call, one version."""
        request = pb.SimilarItemsBatchRequest(view=view, ids=ids, k=k, exclude=exclude,
                                              min_version=self._at_least(min_version))
        with _translated():
            response = self._stub.SimilarItemsBatch(request, timeout=self.timeout, metadata=self._metadata)
        version = self._saw(response.snapshot_version)
        return [Neighbours(version, list(result.ids), np.array(result.scores, dtype=np.float32)) if result.found
                else None for result in response.results]

    def recommend(self, recent_item_ids: Sequence[str], *, k: int, diversity: float = 0.0,
                  min_version: int = 0) -> Recommendations:
        request = pb.RecommendRequest(recent_item_ids=recent_item_ids, k=k, diversity=diversity,
                                      min_version=self._at_least(min_version))
        with _translated():
            response = self._stub.Recommend(request, timeout=self.timeout, metadata=self._metadata)
        return Recommendations(
            self._saw(response.snapshot_version),
            [Recommendation(r.item_id, r.score, ROUTE_NAMES.get(r.route, "unspecified"), r.via)
             for r in response.results],
            list(response.unknown_recent_ids))

    def info(self, *, min_version: int = 0) -> ModelInfo:
        request = pb.GetModelInfoRequest(min_version=self._at_least(min_version))
        with _translated():
            response = self._stub.GetModelInfo(request, timeout=self.timeout, metadata=self._metadata)
        return ModelInfo(self._saw(response.snapshot_version), response.created_ms,
                         [ViewInfo(v.name, v.dimension, v.count) for v in response.views],
                         dict(response.watermark_ms), dict(response.sigma2))

    def watch(self, timeout: float | None = None) -> Iterator[SnapshotEvent]:
        """Each snapshot version as it goes live, the current one first; ends after ``timeout``
        seconds (None: when the server ends the stream). A stream cut off (its connection reached
        the server's max_connection_age_s, or its replica stopped) is opened again, on whichever
        replica the channel picks, and goes on after the last version it gave."""
        ends = None if timeout is None else time.monotonic() + timeout
        last = 0
        while ends is None or time.monotonic() < ends:
            remaining = None if ends is None else ends - time.monotonic()
            stream = self._stub.WatchSnapshots(pb.WatchSnapshotsRequest(), timeout=remaining, metadata=self._metadata)
            heard = False
            try:
                with _translated():
                    for event in stream:
                        heard = True
                        if event.snapshot_version <= last:
                            continue  # a replica that is behind, or the one before, repeating its current version
                        last = self._saw(event.snapshot_version)
                        yield SnapshotEvent(event.snapshot_version, event.created_ms, dict(event.ids_added),
                                            dict(event.rows_changed))
                return
            except RpcError as exc:
                if exc.code == "DEADLINE_EXCEEDED":
                    return
                if exc.code != "UNAVAILABLE" or not heard:  # not a stream that was working and got cut off
                    raise
            finally:
                stream.cancel()
