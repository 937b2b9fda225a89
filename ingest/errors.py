"""The single place where kafka-python exceptions become m2grl errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kafka import errors as kafka_errors

from m2grl.errors import StreamError, StreamUnavailable


@contextmanager
def translated_errors(target: str) -> Iterator[None]:
    """Re-raise Kafka client errors as StreamError / StreamUnavailable naming ``target``."""
    try:
        yield
    except kafka_errors.SaslAuthenticationFailedError as exc:
        raise StreamError(f"Kafka at {target} rejected the SASL credentials (kafka.sasl_username, "
                          f"kafka.sasl_password): {exc}") from exc
    except kafka_errors.KafkaTimeoutError as exc:
        if "bootstrap" not in str(exc):
            raise StreamUnavailable(f"Kafka at {target} is unavailable: {exc}") from exc
        # kafka-python retries a broker that refused this client's TLS or SASL credentials as if it
        # were down, then gives up the same way: say so, for the credentials are the likelier cause.
        raise StreamUnavailable(f"Kafka at {target} is unavailable: no broker answered, or each turned this client "
                                "away (check kafka.security_protocol, kafka.sasl_username / kafka.sasl_password and "
                                f"kafka.ssl_cafile): {exc}") from exc
    except kafka_errors.KafkaError as exc:
        # kafka-python marks the errors worth retrying (timeouts, no leader, broker down) itself.
        if exc.retriable or isinstance(exc, kafka_errors.KafkaConnectionError):
            raise StreamUnavailable(f"Kafka at {target} is unavailable: {exc}") from exc
        raise StreamError(f"Kafka at {target} failed the request: {exc}") from exc
    except OSError as exc:
        raise StreamUnavailable(f"Kafka at {target} cannot be reached: {exc}") from exc
