"""Cluster-level Kafka operations: health probe and topic management."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from m2grl.ingest.clients import client_options
from m2grl.ingest.errors import translated_errors
from m2grl.settings import KafkaSettings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = 1


def _admin(settings: KafkaSettings, timeout_s: float) -> KafkaAdminClient:
    timeout_ms = int(timeout_s * 1000)
    return KafkaAdminClient(
        **client_options(settings),
        client_id="m2grl-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
        reconnect_backoff_max_ms=500,
    )


def ping(settings: KafkaSettings, *, timeout_s: float = 3.0) -> int:
    """Return the number of brokers once the cluster answers a metadata request; raise otherwise."""
    with translated_errors(settings.bootstrap_servers):
        admin = _admin(settings, timeout_s)
        try:
            cluster = admin.describe_cluster()
        finally:
            admin.close()
    return len(cluster["brokers"])


def ensure_topics(settings: KafkaSettings, topics: list[TopicSpec], *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names that were created."""
    with translated_errors(settings.bootstrap_servers):
        admin = _admin(settings, timeout_s)
        try:
            existing = set(admin.list_topics())
            missing = [t for t in topics if t.name not in existing]
            if missing:
                # another process may create one between list and create: same outcome
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(
                        [NewTopic(t.name, t.partitions, t.replication_factor) for t in missing],
                        timeout_ms=int(timeout_s * 1000),
                    )
        finally:
            admin.close()
    return [t.name for t in missing]


def consumer_lag(settings: KafkaSettings, group_id: str, topic: str, *, timeout_s: float = 10.0) -> int:
    """Messages of ``topic`` the group has not committed yet, over all partitions (Kafka's own
    committed offsets, which the consumer advances after each batch it applied)."""
    from kafka import KafkaConsumer, TopicPartition

    with translated_errors(settings.bootstrap_servers):
        admin = _admin(settings, timeout_s)
        # No group and nothing to commit: said, so that kafka-python does not warn at every call.
        consumer = KafkaConsumer(**client_options(settings), client_id="m2grl-lag", enable_auto_commit=False,
                                 request_timeout_ms=int(timeout_s * 1000) + 1000)
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = consumer.end_offsets(partitions)
            committed = admin.list_group_offsets({group_id: partitions}).get(group_id, {})
        finally:
            consumer.close()
            admin.close()
    return sum(max(ends[tp] - max(committed[tp].offset if tp in committed else 0, 0), 0) for tp in partitions)
