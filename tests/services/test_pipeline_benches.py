"""`m2grl bench freshness`, `bench load`, `bench ingest` and `bench ingest-scaling` as a user runs them, kept short:
the whole pipeline on MovieLens-100K's first events, on the session's Kafka and Neo4j."""

from __future__ import annotations

import json

import pytest

from m2grl.services.launcher import free_port
from m2grl.settings import Settings, settings_env
from tests.services.test_cli_lifecycle import m2grl

pytestmark = [pytest.mark.services, pytest.mark.slow]


def pipeline_env(stack: Settings) -> dict[str, str]:
    return {**settings_env(stack), "M2GRL_RPC_PORT": str(free_port()), "M2GRL_INGEST_METRICS_PORT": "0",
            "M2GRL_TRAIN_METRICS_PORT": "0", "M2GRL_RPC_METRICS_PORT": "0", "M2GRL_TRAIN_DIM": "16",
            "M2GRL_TRAIN_WALKS_PER_NODE": "4"}


def test_bench_freshness_times_new_items_and_retrained_vectors(stack: Settings) -> None:
    result = m2grl("bench", "freshness", "--dataset", "movielens-100k", "--limit", "4000", "--rate", "100",
                   "--probes", "2", "--every", "1", "--interval", "4", "--json", env=pipeline_env(stack), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for kind in ("new_item_servable", "retrained_served"):
        row = report[kind]
        assert row["probes"] == 2 and row["never_fresh"] == 0, report
        assert 0 < row["p50_s"] <= row["p95_s"] <= row["max_s"] < 120
    assert report["new_item_servable"]["max_s"] < report["retrained_served"]["max_s"] + 5
    assert report["versions_during_probes"] > 0 and report["stream_rate"]["achieved"] > 0


def test_bench_load_compares_calls_under_ingest_and_training_with_idle(stack: Settings) -> None:
    result = m2grl("bench", "load", "--dataset", "movielens-100k", "--limit", "4000", "--rate", "200", "--seconds", "8",
                   "--idle-seconds", "3", "--concurrency", "2", "--interval", "3", "--json", env=pipeline_env(stack),
                   timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    busy = report["under_ingest_and_training"]
    assert report["idle"]["calls"] > 0 and busy["calls"] > 0 and not busy["failures"]
    assert busy["events_streamed"] > 0 and busy["versions_went_live"] > 0 and busy["versions_went_back"] == 0
    assert report["p99_over_idle"] > 0


def test_bench_ingest_applies_every_event_and_measures_the_ceiling_around_it(stack: Settings) -> None:
    result = m2grl("bench", "ingest", "--dataset", "movielens-100k", "--use-configured-services", "--json",
                   env=settings_env(stack), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    e2e, ceiling = report["end_to_end"], report["ceiling"]
    assert report["events"] == e2e["applied"] == 100_000 and e2e["dead_lettered"] == 0
    assert e2e["batches"] >= 100_000 // report["batch_max_records"]
    before, after = ceiling["seconds_before_and_after"]
    # Each figure is rounded to 0.01 s on its own, so the mean of the rounded ones may differ by 0.01.
    assert before > 0 and after > 0 and abs(ceiling["seconds"] - (before + after) / 2) <= 0.011
    assert report["ratio"] > 0


def test_bench_ingest_scaling_gives_the_same_graph_with_three_consumers(stack: Settings) -> None:
    result = m2grl("bench", "ingest-scaling", "--dataset", "movielens-100k", "--consumers", "3", "--partitions", "6",
                   "--use-configured-services", "--json", env=settings_env(stack), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["same_graph"] is True
    many = report["3_consumers"]
    # Exactly once: every event applied by one consumer; records read twice around a rebalance are
    # replayed, not applied (a run once counted 0 + 10,000 + 100,000 records).
    assert sum(many["applied_per_process"]) == report["events"] == 100_000
    assert sum(many["records_per_process"]) == report["events"] + sum(many["replayed_per_process"])
    assert report["one_consumer"]["events_per_s"] > 0 and report["speedup"] > 0
