"""m2grl's Python client kit: EmbeddingClient and the code generated from protos/embedding.proto,
installable alone (``pip install ./clients/python``: grpcio, protobuf and numpy, no torch).

The client's names load on first use, so that importing the errors alone (as m2grl's command line
does at every start, to print them) does not import grpc and numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from m2grl_client.errors import ClientConfigError, ClientError, RpcError

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    """The client's names, from m2grl_client.client on first use (the errors are bound above)."""
    if name in __all__:
        from m2grl_client import client

        return getattr(client, name)
    raise AttributeError(f"module 'm2grl_client' has no attribute {name!r}")
