"""Every Kafka client of the engine is built here, so each one honours every broker setting.

The broker section of the settings (address, client id, PLAINTEXT / SSL / SASL_PLAINTEXT /
SASL_SSL, SASL user and password, TLS files) is translated once: :func:`client_config` for the
Python clients (kafka-python), :func:`java_properties` for the Flink Kafka connector. A broker
that cannot be reached raises :class:`BrokerUnavailable` with what to do.

>>> from infra.settings import Settings
>>> s = Settings(broker={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
...                      "sasl_username": "svc", "sasl_password": "pw"})
>>> c = client_config(s, "dlq")
>>> c["client_id"], c["security_protocol"], c["sasl_plain_username"], c["sasl_plain_password"]
('recsys-dlq', 'SASL_SSL', 'svc', 'pw')
"""

from __future__ import annotations

from typing import Any

from infra.settings import Settings


class BrokerUnavailable(ConnectionError):
    """The Kafka broker cannot be reached; the message says how to fix it."""


def broker_hint(settings: Settings) -> str:
    return (
        f"cannot reach the Kafka broker at {settings.broker.bootstrap}: start the local stack with "
        "`recsys up`, or set RECSYS_BROKER__BOOTSTRAP_SERVERS to your Kafka cluster"
    )


def client_config(settings: Settings, role: str) -> dict[str, Any]:
    """kafka-python keyword arguments shared by every client; ``role`` names it to the broker."""
    b = settings.broker
    config: dict[str, Any] = {
        "bootstrap_servers": b.bootstrap,
        "client_id": f"{b.client_id}-{role}",
        "security_protocol": b.security_protocol,
    }
    if b.security_protocol.startswith("SASL"):
        config["sasl_mechanism"] = b.sasl_mechanism or "PLAIN"
        config["sasl_plain_username"] = b.sasl_username
        config["sasl_plain_password"] = b.sasl_password.get_secret_value() if b.sasl_password else None
    if b.security_protocol.endswith("SSL"):
        config["ssl_check_hostname"] = b.ssl_check_hostname
        for key, path in (("ssl_cafile", b.ssl_cafile), ("ssl_certfile", b.ssl_certfile), ("ssl_keyfile", b.ssl_keyfile)):
            if path is not None:
                config[key] = str(path)
    return config


def java_properties(settings: Settings) -> dict[str, str]:
    """The same settings as Kafka Java client properties (the Flink connector's ``properties.*``)."""
    b = settings.broker
    props = {"bootstrap.servers": b.bootstrap, "security.protocol": b.security_protocol}
    if b.security_protocol.startswith("SASL"):
        mechanism = b.sasl_mechanism or "PLAIN"
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if mechanism == "PLAIN"
                  else "org.apache.kafka.common.security.scram.ScramLoginModule")
        password = b.sasl_password.get_secret_value() if b.sasl_password else ""
        props["sasl.mechanism"] = mechanism
        props["sasl.jaas.config"] = f'{module} required username="{b.sasl_username or ""}" password="{password}";'
    if b.security_protocol.endswith("SSL"):
        if b.ssl_cafile is not None:
            props.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": str(b.ssl_cafile)})
        if b.ssl_certfile is not None:  # Java reads key + certificate chain from one PEM file
            props.update({"ssl.keystore.type": "PEM", "ssl.keystore.location": str(b.ssl_certfile)})
        if not b.ssl_check_hostname:
            props["ssl.endpoint.identification.algorithm"] = ""
    return props


def _built(kind: type, settings: Settings, role: str, args: tuple, options: dict[str, Any]) -> Any:
    from kafka.errors import NoBrokersAvailable

    try:
        return kind(*args, **{**client_config(settings, role), **options})
    except NoBrokersAvailable as exc:
        raise BrokerUnavailable(broker_hint(settings)) from exc


def producer(settings: Settings, role: str, **options: Any) -> Any:
    """A ``kafka.KafkaProducer``; ``options`` are its other keyword arguments (acks, linger_ms...)."""
    from kafka import KafkaProducer

    return _built(KafkaProducer, settings, role, (), options)


def consumer(settings: Settings, role: str, *topics: str, **options: Any) -> Any:
    """A ``kafka.KafkaConsumer`` (subscribed to ``topics`` if any)."""
    from kafka import KafkaConsumer

    return _built(KafkaConsumer, settings, role, topics, options)


def admin(settings: Settings, role: str = "admin", **options: Any) -> Any:
    """A ``kafka.KafkaAdminClient``."""
    from kafka import KafkaAdminClient

    return _built(KafkaAdminClient, settings, role, (), options)


__all__ = ["BrokerUnavailable", "admin", "broker_hint", "client_config", "consumer", "java_properties", "producer"]
