"""Prometheus metrics of the trainer (scraped at http://127.0.0.1:<train.metrics_port>/metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROUNDS = Counter("m2grl_train_rounds_total", "Training rounds completed", ["kind"])
ROUND_FAILURES = Counter("m2grl_train_round_failures_total", "Training rounds that failed (retried next tick)")
ROUND_SECONDS = Histogram("m2grl_train_round_seconds", "Duration of a training round",
                          buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
TASK_LOSS = Gauge("m2grl_train_task_loss", "Smoothed loss of each task in the last round", ["task"])
TASK_SIGMA2 = Gauge("m2grl_train_task_sigma2", "Learned uncertainty sigma^2 of each task", ["task"])
PAIRS_PER_S = Gauge("m2grl_train_pairs_per_second", "(center, context) pairs trained per second, last round")
SNAPSHOT_VERSION = Gauge("m2grl_train_snapshot_version", "Version of the last published snapshot")
STALENESS = Gauge("m2grl_train_staleness_seconds",
                  "Now minus the oldest view watermark of the last published snapshot")
COLD_START_ITEMS = Counter("m2grl_train_cold_start_items_total",
                           "Brand-new items published with a vector from their side views before a round trained them")
SNAPSHOT_BYTES = Counter("m2grl_train_snapshot_bytes_total", "Bytes of snapshot segments published", ["kind"])
SNAPSHOT_COMPACTIONS = Counter("m2grl_train_snapshot_compactions_total",
                               "Chains of snapshot deltas folded into a new base")
