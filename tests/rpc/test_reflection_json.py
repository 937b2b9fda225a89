"""Every RPC driven the way grpcurl drives it: no generated code, the service's descriptors fetched
from the server by reflection, requests written as JSON and answers read back as JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from m2grl.rpc.server import SERVICE, EmbeddingServer
from tests.rpc.conftest import DIM, publish

Start = Callable[..., tuple[EmbeddingServer, Path]]


class JsonClient:
    """Calls methods of SERVICE by name with JSON requests, knowing only what reflection tells it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.pool = descriptor_pool.DescriptorPool()
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=SERVICE)]))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for reply in replies for raw in reply.file_descriptor_response.file_descriptor_proto]
        added: set[str] = set()
        while len(added) < len(files):  # dependencies first
            for proto in files:
                if proto.name not in added and all(dep in added for dep in proto.dependency):
                    self.pool.Add(proto)
                    added.add(proto.name)
        self.service = self.pool.FindServiceByName(SERVICE)

    def _method(self, name: str) -> tuple[str, Any, Any, bool]:
        method = self.service.methods_by_name[name]
        return (f"/{SERVICE}/{name}", message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type), method.server_streaming)

    def call(self, name: str, request_json: str) -> dict[str, Any] | list[dict[str, Any]]:
        path, request_type, response_type, streaming = self._method(name)
        request = json_format.Parse(request_json, request_type())
        if streaming:
            stream = self.channel.unary_stream(path, request_serializer=request_type.SerializeToString,
                                               response_deserializer=response_type.FromString)
            first = next(iter(stream(request, timeout=10)))
            return [json_format.MessageToDict(first)]
        unary = self.channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                         response_deserializer=response_type.FromString)
        return json_format.MessageToDict(unary(request, timeout=10))


@pytest.fixture
def json_client(start_server: Start) -> Iterator[JsonClient]:
    server, root = start_server()
    publish(root, 1)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = JsonClient(channel)
        for _ in range(200):
            try:
                client.call("GetModelInfo", "{}")
                break
            except grpc.RpcError:  # not serving the snapshot yet
                time.sleep(0.05)
        yield client


def test_every_rpc_answers_json_requests_made_from_reflection(json_client: JsonClient) -> None:
    assert set(json_client.service.methods_by_name) == {
        "GetEmbeddings", "SimilarItems", "SimilarItemsBatch", "Recommend", "WatchSnapshots", "GetModelInfo"}
    info = json_client.call("GetModelInfo", "{}")
    assert info["snapshotVersion"] == "1" and {v["name"] for v in info["views"]} == {"item", "category"}

    # No "view": proto3 reads it as "", which means the item view.
    embeddings = json_client.call("GetEmbeddings", '{"ids": ["c0-1", "ghost"]}')
    assert embeddings["found"] == [True, False] and embeddings["dimension"] == DIM

    similar = json_client.call("SimilarItems", '{"id": "c0-1", "k": 3}')
    assert len(similar["ids"]) == 3 and all(ext.startswith("c0-") for ext in similar["ids"])
    by_vector = json_client.call("SimilarItems", json.dumps(
        {"view": "category", "vector": {"values": [1, 0, 0, 0, 0, 0, 0, 0]}, "k": 1}))
    assert by_vector["ids"] == ["cat0"]

    batch = json_client.call("SimilarItemsBatch", '{"ids": ["c0-1", "ghost"], "k": 2}')
    assert batch["results"][0]["found"] and len(batch["results"][0]["ids"]) == 2
    assert batch["results"][1] == {}  # found false, nothing else: proto3 JSON leaves defaults out

    recommended = json_client.call("Recommend", '{"recentItemIds": ["c1-0", "c1-1"], "k": 4, "diversity": 0.5}')
    routes = {r["route"] for r in recommended["results"]}
    assert len(recommended["results"]) == 4 and routes == {"ROUTE_ITEM_NEIGHBOUR", "ROUTE_NEARBY_CATEGORY"}

    (event,) = json_client.call("WatchSnapshots", "{}")
    assert event["snapshotVersion"] == "1"
