"""Serving replicas: a client balances over several servers, asks for at least a version, and rides
through a replica killed under load; servers close connections at their age limit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from m2grl.rpc.server import EmbeddingServer
from m2grl.services.launcher import free_port
from m2grl.settings import RpcSettings
from m2grl_client import ClientConfigError, EmbeddingClient, RpcError, channel_target
from tests.rpc.conftest import publish, version_marked, wait_for_version
from tests.rpc.test_commands import m2grl


@pytest.fixture
def servers() -> Iterator[list[EmbeddingServer]]:
    """Servers the test starts, stopped afterwards."""
    started: list[EmbeddingServer] = []
    yield started
    for server in started:
        server.stop(grace=1)


def _serve(root: Path, into: list[EmbeddingServer], **overrides: object) -> str:
    cfg = RpcSettings(**{"port": 0, "poll_s": 0.05, "metrics_port": 0, **overrides})
    server = EmbeddingServer(root, cfg).start()
    into.append(server)
    with EmbeddingClient(f"127.0.0.1:{server.port}") as client:
        wait_for_version(client, 1)
    return f"127.0.0.1:{server.port}"


def test_several_replicas_make_one_address_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert channel_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["[::1]:1", "::1:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert channel_target(["dns:///embeddings.internal:50051"]) == "dns:///embeddings.internal:50051"
    for bad in (["127.0.0.1", "127.0.0.1:2"], ["127.0.0.1:1", "dns:///x:2"], ["127.0.0.1:1", "[::1]:2"]):
        with pytest.raises(ClientConfigError, match="replica"):
            channel_target(bad)

    both = {"a.internal": ["10.0.0.1", "fd00::1"], "b.internal": ["fd00::2", "10.0.0.2"]}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **_: [
        (None, None, None, "", (address, port)) for address in both.get(host, [host])])
    assert channel_target(["a.internal:1", "b.internal:2"]) == "ipv4:10.0.0.1:1,10.0.0.2:2"
    assert channel_target(["a.internal:1", "[fd00::9]:2"]) == "ipv6:[fd00::1]:1,[fd00::9]:2"


def test_calls_are_spread_over_replicas_and_min_version_skips_the_one_behind(
        tmp_path: Path, servers: list[EmbeddingServer]) -> None:
    behind_root, ahead_root = tmp_path / "behind", tmp_path / "ahead"
    publish(behind_root, 1)
    publish(ahead_root, 1)
    publish(ahead_root, 2, extra_items=1)
    behind, ahead = _serve(behind_root, servers), _serve(ahead_root, servers)
    with EmbeddingClient(f"127.0.0.1:{servers[1].port}") as client:
        wait_for_version(client, 2)

    with EmbeddingClient([behind, ahead]) as client:
        assert {client.info().version for _ in range(20)} == {1, 2}  # round-robin reaches both
        assert {client.similar("item", id="c1-1", k=3, min_version=2).version for _ in range(20)} == {2}

    with EmbeddingClient([behind, ahead], monotonic=True) as client:
        versions = [client.embeddings("item", ["c0-0"]).version for _ in range(20)]
        assert versions == sorted(versions) and versions[-1] == 2  # once it has seen 2, never 1 again

    with EmbeddingClient(behind) as alone, pytest.raises(RpcError) as refused:
        alone.info(min_version=2)
    assert refused.value.code == "UNAVAILABLE"
    assert "serves snapshot version 1" in str(refused.value) and "at least version 2" in str(refused.value)


def test_connections_closed_at_their_age_limit_cost_no_call_and_no_watched_version(
        tmp_path: Path, servers: list[EmbeddingServer]) -> None:
    root = tmp_path / "snapshots"
    publish(root, 1)
    target = _serve(root, servers, max_connection_age_s=0.3, grace_s=0.3)
    streams_before = _streams_ended()
    seen: list[int] = []
    with EmbeddingClient(target) as watcher, EmbeddingClient(target) as caller:
        watching = threading.Thread(target=lambda: seen.extend(event.version for event in watcher.watch(timeout=6)))
        watching.start()
        ends, version = time.monotonic() + 4, 1
        while time.monotonic() < ends:  # every call must succeed, across many closed connections
            assert version_marked(caller.embeddings("item", ["c0-0", "c5-1"]).vectors) == {caller.highest_version}
            if time.monotonic() > ends - 4 + version and version < 4:
                version += 1
                publish(root, version)
            time.sleep(0.01)
        watching.join()
    assert seen == [1, 2, 3, 4]
    deadline = time.monotonic() + 10
    while _streams_ended() - streams_before < 5:  # the watch was cut off and opened again, every 0.6 s or so
        assert time.monotonic() < deadline, "no watch stream was cut off by the age limit"
        time.sleep(0.1)


def _streams_ended() -> float:
    return REGISTRY.get_sample_value("m2grl_rpc_latency_seconds_count", {"method": "WatchSnapshots"}) or 0.0


def test_a_replica_killed_under_load_fails_no_call_and_versions_never_go_back(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    publish(root, 1)
    ports = [free_port(), free_port()]
    env = {**os.environ, "M2GRL_TRAIN_SNAPSHOT_DIR": str(root), "M2GRL_RPC_METRICS_PORT": "0",
           "M2GRL_RPC_POLL_S": "0.1"}
    replicas = [subprocess.Popen([sys.executable, "-m", "m2grl", "serve"], env={**env, "M2GRL_RPC_PORT": str(port)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in ports]
    targets = [f"127.0.0.1:{port}" for port in ports]
    try:
        for target in targets:
            deadline = time.monotonic() + 60
            while m2grl("query", "--target", target, "info", env=env).returncode != 0:
                assert time.monotonic() < deadline, f"{target} never served"
                time.sleep(0.3)
        answers: list[tuple[int, int, set[int]]] = []  # (caller, version, versions its vectors carry)
        failures: list[str] = []
        stop = threading.Event()

        def call(caller: int, client: EmbeddingClient) -> None:
            while not stop.is_set():
                try:
                    answer = client.embeddings("item", ["c0-0", "c3-7", "c5-19"])
                    answers.append((caller, answer.version, version_marked(answer.vectors)))
                    client.similar("item", id="c2-2", k=5)
                except RpcError as exc:
                    failures.append(f"{exc.code}: {exc}")

        clients = [EmbeddingClient(targets, monotonic=True) for _ in range(3)]
        callers = [threading.Thread(target=call, args=(n, client)) for n, client in enumerate(clients)]
        for thread in callers:
            thread.start()
        for version in (2, 3):
            time.sleep(1.0)
            publish(root, version)
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait(timeout=10)
        calls_at_kill = len(answers)
        for version in (4, 5):
            time.sleep(1.0)
            publish(root, version)
        time.sleep(1.0)
        stop.set()
        for thread in callers:
            thread.join(timeout=30)
        for client in clients:
            client.close()

        assert not failures, failures[:5]
        assert calls_at_kill > 0 and len(answers) > calls_at_kill + 10
        for caller in range(len(clients)):
            versions = [version for n, version, _ in answers if n == caller]
            assert versions == sorted(versions), f"caller {caller} saw a version go back"
        assert all(marked == {version} for _, version, marked in answers), "an answer mixed versions"
        assert max(version for _, version, _ in answers) == 5
        # The command line balances the same way: the dead replica first in the list costs nothing.
        assert m2grl("query", "--target", ",".join(targets), "info", env=env).returncode == 0
    finally:
        for replica in replicas:
            if replica.poll() is None:
                replica.send_signal(signal.SIGTERM)
                replica.wait(timeout=30)
