"""How every Kafka client of m2grl connects: brokers, security protocol, SASL credentials, CA."""

from __future__ import annotations

from typing import Any

from m2grl.settings import KafkaSettings


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's KafkaConsumer, KafkaProducer and KafkaAdminClient."""
    options: dict[str, Any] = {"bootstrap_servers": kafka.bootstrap_servers,
                               "security_protocol": kafka.security_protocol}
    if kafka.uses_sasl:
        assert kafka.sasl_password is not None  # the settings refuse SASL without credentials
        options.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                       sasl_plain_password=kafka.sasl_password.get_secret_value())
    if kafka.uses_tls:
        options.update(ssl_check_hostname=kafka.ssl_check_hostname,
                       ssl_cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile is not None else None)
    return options
