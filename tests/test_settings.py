from pathlib import Path

import pytest

from m2grl.errors import ConfigError
from m2grl.settings import load_settings, masked_dict, record_stream_views, render_toml


def test_defaults_are_loopback_and_managed() -> None:
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.neo4j.bolt_uri == "bolt://127.0.0.1:7687"
    assert settings.kafka.managed and settings.neo4j.managed
    # Every address anything binds to, servers and metrics endpoints alike.
    hosts = {f"{section}.{name}": value for section, fields in settings.model_dump().items() if isinstance(fields, dict)
             for name, value in fields.items() if name == "host" or name.endswith("_host")}
    assert len(hosts) >= 6 and set(hosts.values()) == {"127.0.0.1"}, hosts


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "m2grl.toml"
    config.write_text('[neo4j]\nbolt_port = 7001\nuser = "graph"\n[kafka]\nport = 9001\n')
    monkeypatch.setenv("M2GRL_NEO4J_BOLT_PORT", "7002")
    settings = load_settings(config)
    assert settings.neo4j.bolt_port == 7002  # environment wins over the file
    assert settings.neo4j.user == "graph"  # the file wins over defaults
    assert settings.kafka.port == 9001


def test_external_servers_switch_off_local_management(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2GRL_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("M2GRL_NEO4J_URI", "neo4j+s://graphs.example:7687")
    settings = load_settings()
    assert not settings.kafka.managed and settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert not settings.neo4j.managed and settings.neo4j.bolt_uri == "neo4j+s://graphs.example:7687"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("M2GRL_NEO4J_BOLT_PORT", "70000", "neo4j.bolt_port (M2GRL_NEO4J_BOLT_PORT)"),
        ("M2GRL_KAFKA_HEAP", "lots", "kafka.heap (M2GRL_KAFKA_HEAP)"),
        ("M2GRL_NEO4J_PASSWORD", "short", "at least 8 characters"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match="invalid settings") as err:
        load_settings()
    assert expected in str(err.value)


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[neo4j]\nbolt_prot = 7001\n")
    with pytest.raises(ConfigError, match=r"neo4j\.bolt_prot"):
        load_settings(config)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[neo4j\n")
    with pytest.raises(ConfigError, match="cannot read settings"):
        load_settings(broken)


def test_show_masks_secrets_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2GRL_NEO4J_PASSWORD", "s3cret-value-42")
    monkeypatch.setenv("M2GRL_RPC_TOKEN", "bearer-s3cret-7")
    monkeypatch.setenv("M2GRL_KAFKA_PORT", "9999")
    settings = load_settings()
    assert settings.rpc.token.get_secret_value() == "bearer-s3cret-7"
    text = render_toml(masked_dict(settings))
    assert "s3cret-value-42" not in text and 'password = "********"' in text
    assert "bearer-s3cret-7" not in text and 'token = "********"' in text
    # The printed configuration is itself a valid settings file (secrets aside).
    monkeypatch.delenv("M2GRL_KAFKA_PORT")
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(text.replace('password = "********"', 'password = "another-password"')
                      .replace('token = "********"', 'token = "another-token"'))
    assert load_settings(dumped).kafka.port == 9999


def test_unset_side_views_follow_what_replay_streamed_into_the_topic(tmp_path: Path) -> None:
    def side(**overrides: object) -> tuple[str, ...] | None:
        return load_settings(services={"state_dir": tmp_path}, ingest={"topic": "movies"}, **overrides).views.side

    assert side() == ("category",)  # nothing recorded: the default
    record_stream_views(tmp_path, "movies", ("genre",))
    assert side() == ("genre",)
    assert load_settings(services={"state_dir": tmp_path}, ingest={"topic": "other"}).views.side == ("category",)
    assert side(views={"side": ["brand"]}) == ("brand",)  # set, it wins
    assert side(views={"stores": {"genre": {"uri": "bolt://elsewhere:7687"}}}) == ("genre",)
