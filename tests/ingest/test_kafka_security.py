"""m2grl's Kafka clients over SASL_SSL, against a local broker the launcher started with a SASL_SSL
listener (a CA and certificate made for it, SASL/PLAIN): ingest streams exactly as over PLAINTEXT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from m2grl.errors import StreamError
from m2grl.graphstore import GraphStore
from m2grl.graphstore.maintenance import wipe_graph
from m2grl.ingest.admin import ping
from m2grl.ingest.consumer import create_topics
from m2grl.ingest.events import Event
from m2grl.ingest.replay import replay
from m2grl.services import launcher
from m2grl.services.launcher import free_port
from m2grl.settings import LOCAL_KAFKA_CA, Settings, load_settings
from tests.ingest.conftest import read_topic, run_ingest, with_ingest
from tests.ingest.reference import assert_same_graph, expected_graph, stored_graph

pytestmark = pytest.mark.services

USER, PASSWORD = "m2grl-ingest", "sasl-secret-1"


@pytest.fixture(scope="module")
def secured(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A broker of its own whose only client listener is SASL_SSL, with the session's Neo4j."""
    settings = load_settings(
        services={"state_dir": tmp_path_factory.mktemp("secured")},
        kafka={"port": free_port(), "controller_port": free_port(), "heap": "512m",
               "security_protocol": "SASL_SSL", "sasl_username": USER, "sasl_password": PASSWORD},
        neo4j={"bolt_port": stack.neo4j.bolt_port, "http_port": stack.neo4j.http_port,
               "password": stack.neo4j.password.get_secret_value()},
        views={"side": ["category"]})
    kafka = launcher.service_named(settings, "kafka")
    launcher.start(kafka, report=lambda _: None)  # healthy: m2grl's admin client got in over SASL_SSL
    try:
        yield with_ingest(settings, topic="secured", dead_letter_topic="secured.dlq", group_id="secured-group",
                          partitions=2, metrics_port=0, batch_max_ms=200)
    finally:
        launcher.stop(kafka, report=lambda _: None)


def test_ingest_streams_exactly_over_sasl_ssl(secured: Settings, movielens_sample: list[Event]) -> None:
    assert secured.kafka.ssl_cafile == secured.services.state_dir.resolve() / "kafka" / LOCAL_KAFKA_CA
    with GraphStore(secured.neo4j) as store:
        wipe_graph(store)
    create_topics(secured)
    events = movielens_sample[:2000]
    replay(secured, events, progress=False)
    totals = run_ingest(secured)
    assert totals["applied"] == len(events)
    assert_same_graph(stored_graph(secured), expected_graph(events, ("category",), 30 * 60 * 1000))
    assert len(read_topic(secured, secured.ingest.topic)) == len(events)


def test_wrong_credentials_and_plaintext_are_turned_away(secured: Settings) -> None:
    wrong = secured.kafka.model_copy(update={"sasl_password": type(secured.kafka.sasl_password)("not-the-one")})
    with pytest.raises(StreamError, match=r"check kafka\.security_protocol, kafka\.sasl_username"):
        ping(wrong, timeout_s=5)
    plain = secured.kafka.model_copy(update={"security_protocol": "PLAINTEXT"})
    with pytest.raises(StreamError):
        ping(plain, timeout_s=5)
    untrusted = secured.kafka.model_copy(update={"ssl_cafile": Path("/etc/ssl/certs/ca-certificates.crt")})
    with pytest.raises(StreamError):
        ping(untrusted, timeout_s=5)  # the broker's certificate comes from the local CA, not a public one
