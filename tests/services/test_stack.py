"""The real Kafka and Neo4j started by the session fixture answer real clients."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer

from m2grl.errors import GraphStoreError
from m2grl.graphstore import GraphStore
from m2grl.ingest.admin import TopicSpec, ensure_topics, ping
from m2grl.services import launcher
from m2grl.settings import Settings

pytestmark = pytest.mark.services


def test_kafka_produce_and_consume_on_a_real_topic(stack: Settings) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    assert ensure_topics(stack.kafka, [TopicSpec(topic, partitions=2)]) == [topic]
    assert ensure_topics(stack.kafka, [TopicSpec(topic, partitions=2)]) == []  # idempotent

    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers, acks="all")
    sent = [(f"user-{i % 3}".encode(), f"event-{i}".encode()) for i in range(50)]
    for key, value in sent:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka.bootstrap_servers,
        group_id=f"test-{topic}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=15000,
    )
    received = []
    for message in consumer:
        received.append((message.key, message.value, message.partition))
        if len(received) == len(sent):
            break
    consumer.close()

    assert sorted((k, v) for k, v, _ in received) == sorted(sent)
    # Keyed messages: each user's events share one partition, in the order they were sent.
    for user in {k for k, _ in sent}:
        partitions = {p for k, _, p in received if k == user}
        assert len(partitions) == 1
        values = [v for k, v, _ in received if k == user]
        assert values == [v for k, v in sent if k == user]
    assert ping(stack.kafka) == 1


def test_neo4j_constraint_write_and_read_with_auth(stack: Settings) -> None:
    label = f"Probe{uuid.uuid4().hex[:8]}"
    with GraphStore(stack.neo4j) as store:
        store.write(f"CREATE CONSTRAINT IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE")
        store.write(f"UNWIND $ids AS id MERGE (:{label} {{id: id}})", ids=["a", "b", "c"])
        store.write(f"UNWIND $ids AS id MERGE (:{label} {{id: id}})", ids=["a", "b"])  # MERGE: no duplicates
        rows = store.read(f"MATCH (n:{label}) RETURN n.id AS id ORDER BY id")
        assert [r["id"] for r in rows] == ["a", "b", "c"]
        with pytest.raises(GraphStoreError, match=r"ConstraintValidation|already exists"):
            store.write(f"CREATE (:{label} {{id: 'a'}})")
        constraints = store.read("SHOW CONSTRAINTS YIELD labelsOrTypes RETURN labelsOrTypes")
        assert [label] in [r["labelsOrTypes"] for r in constraints]


def test_neo4j_rejects_a_wrong_password(stack: Settings) -> None:
    wrong = stack.neo4j.model_copy(update={"password": type(stack.neo4j.password)("not-the-password")})
    with pytest.raises(GraphStoreError, match="rejected the credentials"), GraphStore(wrong) as store:
        store.read("RETURN 1")


def test_status_reports_both_services_healthy(stack: Settings) -> None:
    statuses = {s.name: s for s in launcher.status(stack)}
    assert statuses["kafka"].healthy and statuses["neo4j"].healthy
    assert statuses["kafka"].ports["kafka.port"] == stack.kafka.port
    assert statuses["neo4j"].endpoints["bolt"] == stack.neo4j.bolt_uri
    assert statuses["kafka"].pid and statuses["neo4j"].pid
