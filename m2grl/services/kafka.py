"""A single-node Kafka 4 (KRaft, combined broker and controller) run from Maven jars."""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import shutil
import uuid
from pathlib import Path

from m2grl.errors import ToolMissingError
from m2grl.ingest import admin
from m2grl.services.base import LocalService, java_options, write_properties
from m2grl.settings import LOCAL_KAFKA_CA

_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
"""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _jaas_quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KafkaService(LocalService):
    name = "kafka"

    @property
    def managed(self) -> bool:
        return self.settings.kafka.managed

    def ports(self) -> dict[str, tuple[str, int]]:
        k = self.settings.kafka
        return {"kafka.port": (k.host, k.port), "kafka.controller_port": (k.host, k.controller_port)}

    def endpoints(self) -> dict[str, str]:
        return {"bootstrap": self.settings.kafka.bootstrap_servers}

    @property
    def _config_path(self) -> Path:
        return self.home / "server.properties"

    def prepare(self, jars: Path) -> None:
        k = self.settings.kafka
        data_dir = self.home / "data"
        client = k.security_protocol  # the client listener is named after its protocol
        write_properties(self._config_path, {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{k.host}:{k.controller_port}",
            "listeners": f"{client}://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            "advertised.listeners": f"{client}://{k.host}:{k.port}",
            "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            **self._security(),
            "log.dirs": data_dir,
            # m2grl creates its topics explicitly, with the partition count from settings.
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            # One node: every internal topic has a single replica.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            # A lone consumer should not wait 3 s for peers that will never join.
            "group.initial.rebalance.delay.ms": 0,
        })
        self._config_path.chmod(0o600)  # it may hold the keystore's and the SASL user's passwords
        (self.home / "log4j2.properties").write_text(_LOG4J2)
        if not (data_dir / "meta.properties").exists():
            # KRaft storage is formatted exactly once; formatting again would orphan the data.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self.run_tool(
                [self.settings.services.java, *self._jvm_base(jars), "kafka.tools.StorageTool", "format",
                 f"--cluster-id={cluster_id}", f"--config={self._config_path}"],  # ids may start with "-"
                what="formatting the KRaft storage",
            )

    def _security(self) -> dict[str, object]:
        """The client listener's TLS (a certificate from a CA made for this broker) and SASL/PLAIN
        properties, as kafka.security_protocol asks."""
        k = self.settings.kafka
        properties: dict[str, object] = {}
        if k.uses_tls:
            store_password = self._certificates()
            properties.update({
                "ssl.keystore.type": "PKCS12", "ssl.keystore.location": self.home / "broker.p12",
                "ssl.keystore.password": store_password, "ssl.key.password": store_password,
                "ssl.truststore.type": "PEM", "ssl.truststore.location": self.home / LOCAL_KAFKA_CA,
            })
        if k.uses_sasl:
            assert k.sasl_username is not None and k.sasl_password is not None  # the settings see to it
            user, password = _jaas_quoted(k.sasl_username), _jaas_quoted(k.sasl_password.get_secret_value())
            listener = k.security_protocol.lower()
            properties.update({
                "sasl.enabled.mechanisms": "PLAIN", "sasl.mechanism.inter.broker.protocol": "PLAIN",
                # The broker's own login (its listener is also the inter-broker one), then its users.
                f"listener.name.{listener}.plain.sasl.jaas.config":
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required username={user} "
                    f"password={password} user_{k.sasl_username}={password};",
            })
        return properties

    def _certificates(self) -> str:
        """Make, once, a CA and a broker certificate it signs (keytool, beside the JVM), keys kept in
        PKCS12 stores under a generated password; return that password. Clients trust ca.pem."""
        password_file = self.home / "tls.password"
        if (self.home / "broker.p12").exists() and password_file.exists():
            return password_file.read_text().strip()
        for stale in ("ca.p12", "broker.p12", LOCAL_KAFKA_CA, "broker.csr", "broker.pem"):
            (self.home / stale).unlink(missing_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(secrets.token_urlsafe(24))
        host = self.settings.kafka.host
        kind = "ip" if _is_address(host) else "dns"
        keytool = self._keytool()
        stores = ["-storetype", "PKCS12", "-storepass:file", str(password_file)]
        ca_store = ["-keystore", str(self.home / "ca.p12"), *stores]
        broker_store = ["-keystore", str(self.home / "broker.p12"), *stores]
        for argv, what in [
            (["-genkeypair", "-alias", "ca", *ca_store, "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
              "-dname", "CN=m2grl local Kafka CA", "-ext", "bc:c", "-keypass:file", str(password_file)],
             "making the local CA"),
            (["-exportcert", "-alias", "ca", *ca_store, "-rfc", "-file", str(self.home / LOCAL_KAFKA_CA)],
             "exporting the CA certificate"),
            (["-genkeypair", "-alias", "broker", *broker_store, "-keyalg", "RSA", "-keysize", "2048",
              "-validity", "3650", "-dname", f"CN={host}", "-keypass:file", str(password_file)],
             "making the broker's key"),
            (["-certreq", "-alias", "broker", *broker_store, "-file", str(self.home / "broker.csr")],
             "requesting the broker's certificate"),
            (["-gencert", "-alias", "ca", *ca_store, "-rfc", "-validity", "3650",
              "-infile", str(self.home / "broker.csr"), "-outfile", str(self.home / "broker.pem"),
              "-ext", f"SAN={kind}:{host}", "-ext", "KU=digitalSignature,keyEncipherment", "-ext", "EKU=serverAuth"],
             "signing it with the CA"),
            (["-importcert", "-alias", "ca", *broker_store, "-noprompt", "-file", str(self.home / LOCAL_KAFKA_CA)],
             "storing the CA beside it"),
            (["-importcert", "-alias", "broker", *broker_store, "-file", str(self.home / "broker.pem")],
             "storing the signed certificate"),
        ]:
            self.run_tool([keytool, *argv], what=what)
        return password_file.read_text().strip()

    def _keytool(self) -> str:
        java = shutil.which(self.settings.services.java)
        keytool = Path(java).resolve().parent / "keytool" if java else None
        if keytool is None or not keytool.exists():
            raise ToolMissingError(f"keytool (beside {self.settings.services.java}) makes the local broker's "
                                   "certificates for kafka.security_protocol SSL or SASL_SSL; install a full JDK 17+")
        return str(keytool)

    def _jvm_base(self, jars: Path) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.home / 'logs'}", "-cp", f"{jars / 'libs'}/*"]

    def command(self, jars: Path) -> list[str]:
        return [self.settings.services.java, *java_options(self.settings.kafka.heap), *self._jvm_base(jars),
                "kafka.Kafka", str(self._config_path)]

    def check_health(self, timeout_s: float) -> None:
        admin.ping(self.settings.kafka, timeout_s=timeout_s)
