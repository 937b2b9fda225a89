"""The real Kafka and Neo4j started by the session fixture answer real clients."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from m2grl.errors import GraphStoreError
from m2grl.graphstore import GraphStore
from m2grl.ingest.admin import TopicSpec, ensure_topics, ping
from m2grl.services import launcher
from m2grl.services.launcher import free_port
from m2grl.settings import NEO4J_PASSWORD_FILE, Settings, load_settings

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


def test_the_local_neo4j_gets_a_generated_password_no_command_line_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = {"bolt_port": free_port(), "http_port": free_port(), "heap": "512m", "pagecache": "64m"}
    settings = load_settings(services={"state_dir": tmp_path}, neo4j=ports)
    kept = tmp_path / NEO4J_PASSWORD_FILE
    assert kept.stat().st_mode & 0o777 == 0o600, "only its owner may read the password"
    password = kept.read_text().strip()
    assert len(password) >= 24 and settings.neo4j.password.get_secret_value() == password
    assert load_settings(services={"state_dir": tmp_path}, neo4j=ports).neo4j.password == settings.neo4j.password
    command_lines: list[str] = []
    run, popen = subprocess.run, subprocess.Popen

    def seen_run(argv: list[str], *args: object, **kwargs: object) -> object:
        command_lines.append(" ".join(map(str, argv)))
        return run(argv, *args, **kwargs)

    class SeenPopen(popen):  # type: ignore[misc,valid-type]
        def __init__(self, argv: list[str], *args: object, **kwargs: object) -> None:
            command_lines.append(" ".join(map(str, argv)))
            super().__init__(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", seen_run)
    monkeypatch.setattr(subprocess, "Popen", SeenPopen)
    neo4j = launcher.service_named(settings, "neo4j")
    try:
        launcher.start(neo4j, report=lambda _: None)  # healthy means it took the password
        with GraphStore(settings.neo4j) as store:
            assert store.read("RETURN 1 AS ok") == [{"ok": 1}]
    finally:
        launcher.stop(neo4j, report=lambda _: None)
    assert any("set-initial-password" in line for line in command_lines), command_lines
    assert not any(password in line for line in command_lines)
    assert not list(neo4j.home.glob("*.args")), "the argument file goes once read"


def test_the_local_neo4j_takes_a_password_that_looks_like_an_option(tmp_path: Path) -> None:
    """One generated password in 64 starts with '-' (token_urlsafe); neo4j-admin must take it as the
    password, not as an unknown option."""
    ports = {"bolt_port": free_port(), "http_port": free_port(), "heap": "512m", "pagecache": "64m"}
    settings = load_settings(services={"state_dir": tmp_path}, neo4j={**ports, "password": '-Xq"\\Z9-long-enough'})
    neo4j = launcher.service_named(settings, "neo4j")
    try:
        launcher.start(neo4j, report=lambda _: None)
        with GraphStore(settings.neo4j) as store:
            assert store.read("RETURN 1 AS ok") == [{"ok": 1}]
    finally:
        launcher.stop(neo4j, report=lambda _: None)
