"""`m2grl serve` and `m2grl query …` as a user runs them: separate processes, settings from the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2grl.services.launcher import free_port
from tests.rpc.conftest import CATEGORIES, ITEMS_PER_CATEGORY, publish


def m2grl(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "m2grl", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A running `m2grl serve` over a published snapshot; yields the environment that points at it."""
    root = tmp_path / "snapshots"
    publish(root, 1)
    env = {**os.environ, "M2GRL_TRAIN_SNAPSHOT_DIR": str(root), "M2GRL_RPC_PORT": str(free_port()),
           "M2GRL_RPC_METRICS_PORT": str(free_port()), "M2GRL_RPC_TOKEN": "cli-token", "M2GRL_RPC_POLL_S": "0.1"}
    server = subprocess.Popen([sys.executable, "-m", "m2grl", "serve"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while m2grl("query", "info", env=env).returncode != 0:
        assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.stdout else ""
        time.sleep(0.3)
    yield env
    server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=30)
    assert server.returncode == 0 and "gRPC server stopped" in output, output


def test_query_commands_print_tables_and_json(served: dict[str, str]) -> None:
    info = json.loads(m2grl("query", "--json", "info", env=served).stdout)
    assert info["snapshot_version"] == 1
    assert {v["name"]: v["count"] for v in info["views"]} == {"item": CATEGORIES * ITEMS_PER_CATEGORY,
                                                              "category": CATEGORIES}
    table = m2grl("query", "info", env=served).stdout
    assert "snapshot 1" in table and "σ² inter:category" in table

    similar = json.loads(m2grl("query", "--json", "similar", "item", "c0-1", "-k", "3", env=served).stdout)
    assert len(similar["results"]) == 3 and all(r["id"].startswith("c0-") for r in similar["results"])
    assert "1. c0-" in m2grl("query", "similar", "item", "c0-1", "-k", "3", env=served).stdout
    each = json.loads(m2grl("query", "--json", "similar", "item", "c0-1", "ghost", "-k", "2", env=served).stdout)
    assert [(q["id"], q["found"], len(q["results"])) for q in each["queries"]] == [("c0-1", True, 2),
                                                                                   ("ghost", False, 0)]
    table = m2grl("query", "similar", "item", "c0-1", "ghost", env=served).stdout
    assert "ghost is not in the served snapshot" in table and "nearest to c0-1" in table

    embed = json.loads(m2grl("query", "--json", "embed", "item", "c0-1", "ghost", env=served).stdout)
    assert [e["found"] for e in embed["embeddings"]] == [True, False]
    assert "unknown id" in m2grl("query", "embed", "item", "ghost", env=served).stdout

    recommend = m2grl("query", "recommend", "c2-0", "c2-1", "-k", "6", "--diversity", "0.5", env=served).stdout
    assert "nearby-category" in recommend and "item-neighbour" in recommend

    watch = m2grl("query", "watch", "--count", "1", env=served)
    assert watch.returncode == 0 and "snapshot 1 live" in watch.stdout

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{served['M2GRL_RPC_METRICS_PORT']}/metrics").read().decode()
    assert 'm2grl_rpc_requests_total{code="OK",method="SimilarItems"}' in metrics
    assert "m2grl_rpc_snapshot_version 1.0" in metrics


def test_query_errors_are_one_readable_line(served: dict[str, str]) -> None:
    unknown = m2grl("query", "similar", "brand", "x", env=served)
    assert unknown.returncode == 1 and unknown.stderr.startswith("m2grl: error: NOT_FOUND: no view 'brand'")
    no_token = m2grl("query", "info", env={**served, "M2GRL_RPC_TOKEN": "wrong"})
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
    nothing = m2grl("query", "--target", f"127.0.0.1:{free_port()}", "--timeout", "2", "info", env=served)
    assert nothing.returncode == 1 and "UNAVAILABLE" in nothing.stderr


def test_a_rollback_from_the_command_line_is_served(served: dict[str, str]) -> None:
    root = Path(served["M2GRL_TRAIN_SNAPSHOT_DIR"])
    publish(root, 2)
    publish(root, 3, extra_items=2)
    wait_for_version(served, 3)
    listed = json.loads(m2grl("snapshots", "list", "--json", env=served).stdout)
    assert listed["current"] == 3 and [v["version"] for v in listed["versions"]] == [1, 2, 3]
    assert "*        3" in m2grl("snapshots", "list", env=served).stdout

    rolled = m2grl("snapshots", "rollback", "2", env=served)
    assert rolled.returncode == 0 and "version 3 -> 2" in rolled.stdout, rolled.stderr
    wait_for_version(served, 2)  # the server follows CURRENT backwards
    watch = m2grl("query", "watch", "--count", "1", env=served)
    assert "snapshot 2 live" in watch.stdout

    gone = m2grl("snapshots", "rollback", "9", env=served)
    assert gone.returncode == 1 and "version 9 is not in" in gone.stderr and "versions kept: 1, 2, 3" in gone.stderr


def wait_for_version(env: dict[str, str], version: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while json.loads(m2grl("query", "--json", "info", env=env).stdout)["snapshot_version"] != version:
        assert time.monotonic() < deadline, f"the server never served version {version}"
        time.sleep(0.2)


@pytest.mark.slow
def test_bench_rpc_measures_both_handlers_recall_and_swaps() -> None:
    result = m2grl("bench", "rpc", "--rows", "60000", "--seconds", "0.5", "--swap-seconds", "4", "--json",
                   env={**os.environ}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for kind in ("empty-embeddings", "embeddings", "empty-similar", "similar"):
        assert report["one_at_a_time"][kind]["calls"] > 0 and not report["one_at_a_time"][kind]["failures"]
    assert report["qps_ratio_to_empty"]["embeddings"] > 0 and report["similar_recall_at_100"] >= 0.95
    for swaps in (report["during_swaps"], report["during_swaps_beside_publisher"]):
        assert swaps["published"] >= 2 and swaps["went_live"] >= 1 and swaps["versions_went_back"] == 0
        assert not swaps["failures"] and swaps["cpu_stolen_s"] >= 0
    assert report["idle_max_over_idle_p99"] >= 1 and report["server_peak_rss_mb"] > 0


def test_bench_rpc_refuses_counts_below_one_before_starting_anything() -> None:
    result = m2grl("bench", "rpc", "--rounds", "0", env={**os.environ})
    assert result.returncode == 2 and "--rounds: must be at least 1, got 0" in result.stderr
    assert "is not a whole number" in m2grl("bench", "rpc", "--concurrency", "four", env={**os.environ}).stderr
