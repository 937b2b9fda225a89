"""m2grl's Python client kit: EmbeddingClient and the code generated from protos/embedding.proto,
installable alone (``pip install ./clients/python``: grpcio, protobuf and numpy, no torch)."""

from m2grl_client.client import (
    EmbeddingClient,
    Embeddings,
    ModelInfo,
    Neighbours,
    Recommendation,
    Recommendations,
    SnapshotEvent,
    ViewInfo,
    channel_target,
)
from m2grl_client.errors import ClientConfigError, ClientError, RpcError

__all__ = [
    "ClientConfigError",
    "ClientError",
    "EmbeddingClient",
    "Embeddings",
    "ModelInfo",
    "Neighbours",
    "Recommendation",
    "Recommendations",
    "RpcError",
    "SnapshotEvent",
    "ViewInfo",
    "channel_target",
]
