"""Prometheus metrics of the ingest consumer (scraped at http://<metrics_host>:<metrics_port>/metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("m2grl_ingest_events_total", "Messages read from the behaviour topic", ["topic"])
EVENTS_APPLIED = Counter("m2grl_ingest_events_applied_total", "Valid events applied to the graphs", ["topic"])
EVENTS_SKIPPED = Counter("m2grl_ingest_events_replayed_total",
                         "Messages skipped because the graph already holds them (replay after a restart)", ["topic"])
DEAD_LETTERED = Counter("m2grl_ingest_dead_lettered_total", "Messages sent to the dead-letter topic", ["reason"])
EDGES_WRITTEN = Counter("m2grl_ingest_edge_rows_written_total",
                        "Aggregated edge rows (transitions and memberships) upserted", ["view"])
BATCH_SECONDS = Histogram("m2grl_ingest_batch_seconds",
                          "Time to dead-letter and commit one batch (decoding and planning happen before it, "
                          "beside the previous commit)",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
BATCH_EVENTS = Histogram("m2grl_ingest_batch_events", "Messages per batch",
                         buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000))
REPLANNED = Counter("m2grl_ingest_replanned_total",
                    "Store writes planned again at commit time because the plan made ahead was void "
                    "(an outage, a rebalance or another consumer changed what the store holds)")
OFFSET_GAPS = Counter("m2grl_ingest_offset_gaps_total",
                      "Times a partition's next record lay past the offset after the stored one (records removed "
                      "before ingest read them)", ["topic", "partition"])
OFFSETS_SKIPPED = Counter("m2grl_ingest_offsets_skipped_total", "Offsets inside those gaps, never read",
                          ["topic", "partition"])
RETRIES = Counter("m2grl_ingest_retries_total", "Batches retried after an outage or an offset conflict", ["cause"])
LAG = Gauge("m2grl_ingest_consumer_lag", "Messages between the consumer's position and the partition end",
            ["topic", "partition"])

