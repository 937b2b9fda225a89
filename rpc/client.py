"""A typed Python client of the EmbeddingService: numpy arrays in and out, m2grl's RpcError out of
every failed call (gRPC's own errors are translated here, nowhere else).

    with EmbeddingClient("127.0.0.1:50051", token="...") as client:
        found, vectors = client.embeddings("item", ["42", "7"])
        for n in client.similar("item", id="42", k=10).neighbours: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from numpy.typing import NDArray

from m2grl.errors import ConfigError, RpcError
from m2grl.protos import embedding_pb2 as pb
from m2grl.protos import embedding_pb2_grpc as pb_grpc
from m2grl.settings import Settings

ROUTE_NAMES = {pb.ROUTE_ITEM_NEIGHBOUR: "item-neighbour", pb.ROUTE_NEARBY_CATEGORY: "nearby-category"}


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


class EmbeddingClient:
    def __init__(self, target: str, *, token: str | None = None, tls_ca: Path | None = None,
                 timeout: float = 10.0) -> None:
        """``target``: host:port. ``tls_ca``: PEM of the certificates to trust (the server's own
        for a self-signed one); without it the connection is plaintext."""
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        if tls_ca is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            try:
                credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read the TLS CA file {tls_ca}: {exc}") from None
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings, target: str | None = None, timeout: float = 10.0) -> EmbeddingClient:
        """A client of the server these settings describe (address, token, TLS)."""
        cfg = settings.rpc
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
        return cls(target or f"{host}:{cfg.port}", token=cfg.token.get_secret_value() if cfg.token else None,
                   tls_ca=cfg.tls_ca or cfg.tls_cert, timeout=timeout)

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def embeddings(self, view: str, ids: Sequence[str]) -> Embeddings:
        with _translated():
            response = self._stub.GetEmbeddings(pb.GetEmbeddingsRequest(view=view, ids=ids),
                                                timeout=self.timeout, metadata=self._metadata)
        found = np.array(response.found, dtype=bool)
        vectors = np.zeros((len(found), response.dimension), dtype=np.float32)
        vectors[found] = np.frombuffer(response.vectors, "<f4").reshape(-1, response.dimension)
        return Embeddings(response.snapshot_version, list(ids), found, vectors)

    def similar(self, view: str, *, k: int, id: str | None = None, vector: Sequence[float] | None = None,
                exclude: Sequence[str] = ()) -> Neighbours:
        """Neighbours of an id of ``view`` or of a vector (give exactly one)."""
        if (id is None) == (vector is None):
            raise ConfigError("give exactly one of id and vector")
        request = pb.SimilarItemsRequest(view=view, k=k, exclude=exclude)
        if id is not None:
            request.id = id
        else:
            request.vector.values.extend(np.asarray(vector, dtype=np.float32).tolist())
        with _translated():
            response = self._stub.SimilarItems(request, timeout=self.timeout, metadata=self._metadata)
        return Neighbours(response.snapshot_version, list(response.ids), np.array(response.scores, dtype=np.float32))

    def recommend(self, recent_item_ids: Sequence[str], *, k: int, diversity: float = 0.0) -> Recommendations:
        with _translated():
            response = self._stub.Recommend(
                pb.RecommendRequest(recent_item_ids=recent_item_ids, k=k, diversity=diversity),
                timeout=self.timeout, metadata=self._metadata)
        return Recommendations(
            response.snapshot_version,
            [Recommendation(r.item_id, r.score, ROUTE_NAMES.get(r.route, "unspecified"), r.via)
             for r in response.results],
            list(response.unknown_recent_ids))

    def info(self) -> ModelInfo:
        with _translated():
            response = self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout, metadata=self._metadata)
        return ModelInfo(response.snapshot_version, response.created_ms,
                         [ViewInfo(v.name, v.dimension, v.count) for v in response.views],
                         dict(response.watermark_ms), dict(response.sigma2))

    def watch(self, timeout: float | None = None) -> Iterator[SnapshotEvent]:
        """Each snapshot version as it goes live, the current one first; ends after ``timeout``
        seconds (None: when the server ends the stream)."""
        stream = self._stub.WatchSnapshots(pb.WatchSnapshotsRequest(), timeout=timeout, metadata=self._metadata)
        try:
            with _translated():
                for event in stream:
                    yield SnapshotEvent(event.snapshot_version, event.created_ms, dict(event.ids_added),
                                        dict(event.rows_changed))
        except RpcError as exc:
            if exc.code != "DEADLINE_EXCEEDED":
                raise
        finally:
            stream.cancel()
