"""The EmbeddingService end to end: a real server on a free port, the project's client, real snapshots."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from m2grl.errors import ConfigError
from m2grl.rpc import queries
from m2grl.rpc.server import SERVICE, EmbeddingServer
from m2grl.settings import RpcSettings
from m2grl_client import EmbeddingClient, RpcError
from m2grl_client import embedding_pb2 as pb
from m2grl_client import embedding_pb2_grpc as pb_grpc
from tests.rpc.conftest import CATEGORIES, DIM, ITEMS_PER_CATEGORY, publish, version_marked, wait_for_version

Start = Callable[..., tuple[EmbeddingServer, Path]]


def client_of(server: EmbeddingServer, **kwargs: object) -> EmbeddingClient:
    return EmbeddingClient(f"127.0.0.1:{server.port}", **kwargs)


def serving(start_server: Start, **overrides: object) -> tuple[EmbeddingServer, Path, EmbeddingClient]:
    server, root = start_server(**overrides)
    publish(root, 1)
    client = client_of(server, token=overrides.get("token"))
    wait_for_version(client, 1)
    return server, root, client


def went_live(server: EmbeddingServer, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (server.live.current is None or server.live.current.version < version) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.live.current is not None and server.live.current.version >= version


def code_of(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(RpcError) as failure:
        call()
    return failure.value.code, failure.value.detail


def test_every_method_answers_from_the_served_snapshot(start_server: Start) -> None:
    _server, _, client = serving(start_server)
    with client:
        answer = client.embeddings("item", ["c0-1", "nobody", "c2-3"])
        assert answer.version == 1 and answer.ids == ["c0-1", "nobody", "c2-3"]
        assert answer.found.tolist() == [True, False, True]
        assert answer.vectors.shape == (3, DIM) and not answer.vectors[1].any()
        assert version_marked(answer.vectors[answer.found]) == {1}

        similar = client.similar("item", id="c0-1", k=5)
        assert len(similar.ids) == 5 and "c0-1" not in similar.ids
        assert all(ext.startswith("c0-") for ext in similar.ids)  # its own category's cluster
        assert list(similar.scores) == sorted(similar.scores, reverse=True)
        excluded = client.similar("item", id="c0-1", k=5, exclude=similar.ids[:2])
        assert not set(similar.ids[:2]) & set(excluded.ids) and len(excluded.ids) == 5
        by_vector = client.similar("category", vector=[1, 0, 0, 0, 0, 0, 0, 0], k=2)
        assert by_vector.ids[0] == "cat0" and by_vector.scores[0] == pytest.approx(1.0, abs=1e-3)

        info = client.info()
        assert info.version == 1 and info.sigma2 == {"intra:item": 0.5, "inter:category": 0.9}
        assert {(v.name, v.dimension, v.count) for v in info.views} == {
            ("item", DIM, CATEGORIES * ITEMS_PER_CATEGORY), ("category", DIM, CATEGORIES)}

        plain = client.recommend(["c1-0", "c1-1", "ghost"], k=6)
        assert plain.unknown_recent_ids == ["ghost"] and len(plain.results) == 6
        assert {r.route for r in plain.results} == {"item-neighbour"}
        assert all(r.via in ("c1-0", "c1-1") and r.item_id != "c1-1" for r in plain.results)


def test_recommend_ranks_by_the_recency_weighted_mean_cosine_and_never_returns_the_latest_item(
        start_server: Start) -> None:
    _, _, client = serving(start_server)
    recent = ["c1-0", "c2-3", "c1-1"]  # most recent last
    with client:
        answer = client.recommend(recent, k=20)
        everything = [f"c{c}-{n}" for c in range(CATEGORIES) for n in range(ITEMS_PER_CATEGORY)]
        vectors = client.embeddings("item", everything).vectors
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    of = {ext: row for row, ext in enumerate(everything)}
    weights = np.array([4, 2, 1]) / 7  # RECENCY_DECAY 0.5 per step back, most recent first
    by_recent = unit @ unit[[of[ext] for ext in reversed(recent)]].T  # items × recent items, most recent first
    expected = by_recent @ weights
    expected[of["c1-1"]] = -np.inf  # the item the user is on now
    best = np.argsort(-expected, kind="stable")[:20]
    assert [r.item_id for r in answer.results] == [everything[row] for row in best]
    assert [r.score for r in answer.results] == pytest.approx(expected[best].tolist(), abs=1e-4)
    assert "c1-0" in [r.item_id for r in answer.results]  # an older recent item may come back
    adds = by_recent[best] * weights
    assert [r.via for r in answer.results] == [list(reversed(recent))[i] for i in adds.argmax(axis=1)]


def test_recommend_with_diversity_reaches_nearby_categories_the_user_has_not_visited(start_server: Start) -> None:
    _, _, client = serving(start_server)
    with client:
        answer = client.recommend(["c2-0", "c2-5", "c2-9"], k=10, diversity=0.4)
    diverse = [r for r in answer.results if r.route == "nearby-category"]
    assert len(answer.results) == 10 and len(diverse) == 4
    assert all(not r.item_id.startswith("c2-") for r in diverse)  # outside the user's recent category
    # Categories sit on a half circle 30° apart: 1 and 3 are next to 2, then 0 and 4; 5 is farthest.
    # One item per nearby category in turn, closest first.
    assert {r.via for r in diverse[:2]} == {"cat1", "cat3"} and {r.via for r in diverse[2:]} == {"cat0", "cat4"}
    assert all(r.item_id.startswith(r.via.replace("cat", "c") + "-") for r in diverse)
    assert all(r.item_id.startswith("c2-") for r in answer.results if r.route == "item-neighbour")


def test_limits_and_unknown_views_get_their_status_codes(start_server: Start) -> None:
    _, _, client = serving(start_server, max_ids=50, max_k=20, max_request_bytes=2048)
    with client:
        code, detail = code_of(lambda: client.embeddings("item", [f"x{n}" for n in range(51)]))
        assert code == "INVALID_ARGUMENT" and "51 ids" in detail and "rpc.max_ids" in detail
        code, detail = code_of(lambda: client.similar("item", id="c0-1", k=21))
        assert code == "INVALID_ARGUMENT" and "rpc.max_k" in detail
        assert code_of(lambda: client.similar("item", id="c0-1", k=0))[0] == "INVALID_ARGUMENT"
        code, detail = code_of(lambda: client.embeddings("item", ["x" * 100] * 30))
        assert code == "INVALID_ARGUMENT" and "rpc.max_request_bytes" in detail
        code, detail = code_of(lambda: client.similar("item", vector=[1.0, 2.0], k=3))
        assert code == "INVALID_ARGUMENT" and f"has {DIM}" in detail
        assert code_of(lambda: client.similar("item", id="nobody", k=3))[0] == "INVALID_ARGUMENT"
        assert code_of(lambda: client.recommend(["c0-1"], k=5, diversity=1.5))[0] == "INVALID_ARGUMENT"
        code, detail = code_of(lambda: client.embeddings("brand", ["c0-1"]))
        assert code == "NOT_FOUND" and "item, category" in detail


def test_before_any_snapshot_calls_are_unavailable_and_health_says_not_serving(start_server: Start) -> None:
    server, root = start_server()
    with client_of(server) as client, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        assert code_of(lambda: client.info())[0] == "UNAVAILABLE"
        publish(root, 1)
        wait_for_version(client, 1)
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(start_server: Start) -> None:
    server, _, _ = serving(start_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_bearer_token_is_required_except_for_health_checks(start_server: Start) -> None:
    server, _, client = serving(start_server, token="s3cret-token")
    with client:
        assert client.info().version == 1
    with client_of(server) as anonymous, client_of(server, token="wrong") as wrong:
        code, detail = code_of(lambda: anonymous.info())
        assert code == "UNAUTHENTICATED" and "bearer token" in detail
        assert code_of(lambda: wrong.embeddings("item", ["c0-1"]))[0] == "UNAUTHENTICATED"
        assert code_of(lambda: list(wrong.watch(timeout=2)))[0] == "UNAUTHENTICATED"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "server.pem", folder / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_serves_clients_that_trust_the_certificate_only(start_server: Start, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server, root = start_server(tls_cert=cert, tls_key=key, token="t0ken")
    publish(root, 1)
    with EmbeddingClient(f"localhost:{server.port}", tls_ca=cert, token="t0ken") as client:
        wait_for_version(client, 1)
        assert client.embeddings("item", ["c0-1"]).found.all()
    with EmbeddingClient(f"localhost:{server.port}", token="t0ken", timeout=3) as plaintext:
        assert code_of(lambda: plaintext.info())[0] == "UNAVAILABLE"


def test_clients_see_only_whole_versions_in_order_while_ten_are_swapped(start_server: Start) -> None:
    server, root, client = serving(start_server)
    seen: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def call_in_a_loop() -> None:
        last = 0
        with client_of(server) as caller:
            while not done.is_set():
                answer = caller.embeddings("item", ["c0-0", "c3-7", "c5-19", "new-10"])
                if answer.version < last:
                    failures.append(f"version {answer.version} after version {last}")
                last = answer.version
                known = answer.vectors[answer.found]
                if version_marked(known) != {answer.version}:
                    failures.append(f"version {answer.version} answered with rows of {version_marked(known)}")
                if answer.found[3] != (answer.version >= 11):
                    failures.append(f"version {answer.version} {'knows' if answer.found[3] else 'lacks'} new-10")
                seen.append(answer.version)

    callers = [threading.Thread(target=call_in_a_loop) for _ in range(3)]
    for caller in callers:
        caller.start()
    for version in range(2, 12):
        publish(root, version, extra_items=version)
        time.sleep(0.15)
    wait_for_version(client, 11)
    time.sleep(0.2)
    done.set()
    for caller in callers:
        caller.join()
    client.close()
    assert not failures, failures[:5]
    assert seen[-1] == 11 and len(set(seen)) >= 3


def test_watchers_get_each_version_exactly_once(start_server: Start) -> None:
    server, root, client = serving(start_server)
    received: list[int] = []
    ready = threading.Event()

    def watch() -> None:
        with client_of(server) as watcher:
            for event in watcher.watch(timeout=30):
                received.append(event.version)
                ready.set()
                if event.version == 11:
                    return

    thread = threading.Thread(target=watch)
    thread.start()
    assert ready.wait(10)
    for version in range(2, 12):
        publish(root, version, extra_items=version)
        went_live(server, version)
    thread.join(timeout=30)
    client.close()
    assert received == list(range(1, 12))


def test_a_corrupt_snapshot_is_refused_and_the_old_one_keeps_serving(start_server: Start) -> None:
    server, root, client = serving(start_server)
    before = REGISTRY.get_sample_value("m2grl_rpc_snapshots_refused_total") or 0.0
    publish(root, 2, poison=True)
    deadline = time.monotonic() + 10
    while 2 not in server.live.refused and time.monotonic() < deadline:
        time.sleep(0.05)
    with client:
        assert 2 in server.live.refused and "NaN" in server.live.refused[2]
        assert client.info().version == 1
        assert version_marked(client.embeddings("item", ["c0-0"]).vectors) == {1}
        assert REGISTRY.get_sample_value("m2grl_rpc_snapshots_refused_total") == before + 1
        publish(root, 3)
        wait_for_version(client, 3)
        assert client.info().version == 3


def test_calls_are_counted_by_method_and_status(start_server: Start) -> None:
    _, _, client = serving(start_server)

    def count(method: str, code: str) -> float:
        return REGISTRY.get_sample_value("m2grl_rpc_requests_total", {"method": method, "code": code}) or 0.0

    ok, missing = count("SimilarItems", "OK"), count("SimilarItems", "NOT_FOUND")
    with client:
        client.similar("item", id="c0-0", k=3)
        code_of(lambda: client.similar("nope", id="c0-0", k=3))
    assert count("SimilarItems", "OK") == ok + 1 and count("SimilarItems", "NOT_FOUND") == missing + 1
    assert REGISTRY.get_sample_value("m2grl_rpc_latency_seconds_count", {"method": "SimilarItems"}) >= 2


def test_shutdown_ends_watch_streams_and_lets_calls_in_flight_finish(start_server: Start,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server, _, client = serving(start_server, workers=4, max_watch_streams=1)
    inside, release = threading.Event(), threading.Event()
    answer_slowly = queries.recommend

    def slow_recommend(*args: object, **kwargs: object) -> queries.Recommendations:
        inside.set()
        release.wait(2)  # still running when the shutdown begins
        return answer_slowly(*args, **kwargs)

    monkeypatch.setattr(queries, "recommend", slow_recommend)
    events: list[int] = []
    watcher = threading.Thread(target=lambda: events.extend(e.version for e in client.watch()))
    watcher.start()
    answered: list[int] = []
    in_flight = threading.Thread(target=lambda: answered.append(client.recommend(["c0-0"], k=5).version))
    in_flight.start()
    assert inside.wait(10)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
    stopper.start()
    time.sleep(0.3)
    code, _ = code_of(lambda: client.info())  # a call that arrives after the stop began
    release.set()
    for thread in (watcher, in_flight, stopper):
        thread.join(timeout=15)
    client.close()
    assert events == [1] and not watcher.is_alive()
    assert answered == [1]  # the call in flight when the stop began was answered
    assert code == "UNAVAILABLE"


def test_two_servers_on_one_snapshot_folder_answer_alike(start_server: Start) -> None:
    """Serving scales by replicas reading one snapshot store (docs/scaling.md)."""
    first, root = start_server()
    second, _ = start_server()
    publish(root, 1)
    with client_of(first) as a, client_of(second) as b:
        wait_for_version(a, 1)
        wait_for_version(b, 1)
        assert a.similar("item", id="c3-3", k=10).ids == b.similar("item", id="c3-3", k=10).ids
        assert a.embeddings("item", ["c1-1"]).vectors.tolist() == b.embeddings("item", ["c1-1"]).vectors.tolist()
        publish(root, 2, extra_items=2)
        wait_for_version(a, 2)
        wait_for_version(b, 2)
        assert a.info().version == b.info().version == 2


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port} \(rpc.host, rpc.port\)"):
            EmbeddingServer(tmp_path, RpcSettings(port=port))


def watching_once_free(stub: pb_grpc.EmbeddingServiceStub, within_s: float = 15.0) -> Any:
    """A watch stream that gave the current version (1), opened again while the server refuses it
    for want of a free slot, as a stream that just ended frees its own once its handler returns."""
    deadline = time.monotonic() + within_s
    while True:
        stream = stub.WatchSnapshots(pb.WatchSnapshotsRequest(), timeout=30)
        try:
            assert next(stream).snapshot_version == 1
            return stream
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.1)


def test_watch_streams_past_the_limit_are_refused_and_each_ends_after_its_lifetime(start_server: Start) -> None:
    server, _, client = serving(start_server, max_watch_streams=1, watch_max_s=1.5)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        first = watching_once_free(stub)  # the stream serving() watched with ends within a second of its cancel
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.WatchSnapshots(pb.WatchSnapshotsRequest(), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rpc.max_watch_streams" in refused.value.details()
        with pytest.raises(grpc.RpcError) as ended:
            next(first)  # no new version: the stream waits until its lifetime is over
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "rpc.watch_max_s" in ended.value.details()
        watching_once_free(stub).cancel()  # the ended stream gave its slot back
    with client:  # the project's client opens an ended stream again and repeats no version
        assert [event.version for event in client.watch(timeout=4)] == [1]


def test_calls_past_max_concurrent_rpcs_get_resource_exhausted(start_server: Start) -> None:
    server, _, client = serving(start_server, max_concurrent_rpcs=2, max_watch_streams=2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, client:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        streams = []
        deadline = time.monotonic() + 15
        while len(streams) < 2:  # the stream serving() watched with ends within a second of its cancel
            stream = stub.WatchSnapshots(pb.WatchSnapshotsRequest(), timeout=30)
            try:
                assert next(stream).snapshot_version == 1
                streams.append(stream)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.1)
        assert code_of(lambda: client.info())[0] == "RESOURCE_EXHAUSTED"
        for stream in streams:
            stream.cancel()
        deadline = time.monotonic() + 15
        while True:  # a cancelled stream's handler notices within a second
            try:
                assert client.info().version == 1
                break
            except RpcError as exc:
                assert exc.code == "RESOURCE_EXHAUSTED" and time.monotonic() < deadline


def slowed_searches(server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make each nearest-neighbour search of the served index take 0.3 s; the times they started."""
    served = server.live.current
    assert served is not None
    index = type(served.views["item"].index)
    searches: list[float] = []
    search = index.search

    def slow_search(self: object, *args: object, **kwargs: object) -> object:
        searches.append(time.monotonic())
        time.sleep(0.3)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(index, "search", slow_search)
    return searches


def test_recommend_stops_searching_once_its_deadline_has_passed(start_server: Start,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server, _, client = serving(start_server, max_recent_ids=20)
    with client:
        code, detail = code_of(lambda: client.recommend([f"c0-{n}" for n in range(21)], k=5))
        assert code == "INVALID_ARGUMENT" and "rpc.max_recent_ids" in detail
    searches = slowed_searches(server, monkeypatch)
    # One item search, then one per category of the recent items: 4 searches of 0.3 s, 1.2 s unstopped.
    recent = [f"c{c}-{n}" for c in range(3) for n in range(4)]
    with client_of(server, timeout=0.5) as hurried:
        assert code_of(lambda: hurried.recommend(recent, k=10, diversity=0.5))[0] == "DEADLINE_EXCEEDED"
    time.sleep(1.5)
    assert 1 <= len(searches) < 4  # the server gave up between searches


def test_similar_items_batch_answers_each_id_as_similar_items_does(start_server: Start,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server, _, client = serving(start_server, max_queries=10)
    queried = ["c0-1", "ghost", "c3-2", "c0-1"]
    with client:
        batch = client.similar_to_each("item", queried, k=4, exclude=["c0-2"])
        assert batch[1] is None and len(batch) == len(queried)
        for query, answer in zip(queried, batch):
            if answer is not None:
                alone = client.similar("item", id=query, k=4, exclude=["c0-2"])
                assert answer.version == alone.version == 1
                assert answer.ids == alone.ids and query not in answer.ids and "c0-2" not in answer.ids
                assert answer.scores.tolist() == alone.scores.tolist()
        code, detail = code_of(lambda: client.similar_to_each("item", [f"c0-{n}" for n in range(11)], k=3))
        assert code == "INVALID_ARGUMENT" and "rpc.max_queries" in detail
        assert code_of(lambda: client.similar_to_each("brand", ["c0-1"], k=3))[0] == "NOT_FOUND"
    searches = slowed_searches(server, monkeypatch)
    with client_of(server, timeout=0.5) as hurried:
        assert code_of(lambda: hurried.similar_to_each("item", [f"c1-{n}" for n in range(10)], k=3))[0] == \
            "DEADLINE_EXCEEDED"
    time.sleep(3.5)
    assert 1 <= len(searches) < 10  # the server gave up between searches


def test_a_request_without_a_view_means_the_item_view(start_server: Start) -> None:
    server, _, client = serving(start_server)
    with client, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)  # as a client that never sets the field sends it
        unset = stub.GetEmbeddings(pb.GetEmbeddingsRequest(ids=["c0-1"]))
        named = client.embeddings("item", ["c0-1"])
        assert list(unset.found) == [True] and unset.dimension == DIM
        assert unset.vectors == named.vectors.astype("<f4").tobytes()
        assert list(stub.SimilarItems(pb.SimilarItemsRequest(id="c0-1", k=3)).ids) == \
            client.similar("item", id="c0-1", k=3).ids
        assert stub.SimilarItemsBatch(pb.SimilarItemsBatchRequest(ids=["c0-1"], k=3)).results[0].found


def test_made_up_method_names_do_not_grow_the_metric_labels(start_server: Start) -> None:
    server, _, _ = serving(start_server, token="s3cret-token")

    def count(method: str) -> float:
        labels = {"method": method, "code": "UNAUTHENTICATED"}
        return REGISTRY.get_sample_value("m2grl_rpc_requests_total", labels) or 0.0

    before = count("unknown")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for n in range(30):
            call = channel.unary_unary(f"/m2grl.v1.EmbeddingService/MadeUp{n}")
            with pytest.raises(grpc.RpcError) as denied:
                call(b"", timeout=5)
            assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert count("unknown") == before + 30
    labels = {sample.labels["method"] for metric in REGISTRY.collect() if metric.name == "m2grl_rpc_requests"
              for sample in metric.samples}
    assert not any(label.startswith("MadeUp") for label in labels)


def test_listening_beyond_loopback_needs_tls_and_a_token_or_an_explicit_insecure_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"without TLS .* and a token .*rpc\.allow_insecure"):
        EmbeddingServer(tmp_path / "snapshots", RpcSettings(host="0.0.0.0", port=0, metrics_port=0))
    with pytest.raises(ConfigError, match=r"without a token"):
        cert, key = self_signed(tmp_path)
        EmbeddingServer(tmp_path / "snapshots", RpcSettings(host="0.0.0.0", port=0, metrics_port=0, tls_cert=cert,
                                                            tls_key=key))
    for cfg in (RpcSettings(host="0.0.0.0", port=0, metrics_port=0, allow_insecure=True),
                RpcSettings(host="0.0.0.0", port=0, metrics_port=0, tls_cert=cert, tls_key=key, token="t0ken"),
                RpcSettings(host="localhost", port=0, metrics_port=0)):
        server = EmbeddingServer(tmp_path / "snapshots", cfg).start()
        assert server.port > 0
        server.stop(grace=0)
