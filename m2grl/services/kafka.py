"""A single-node Kafka 4 (KRaft, combined broker and controller) run from Maven jars."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from m2grl.ingest import admin
from m2grl.services.base import LocalService, java_options, write_properties

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
        write_properties(self._config_path, {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{k.host}:{k.controller_port}",
            "listeners": f"PLAINTEXT://{k.host}:{k.port},CONTROLLER://{k.host}:{k.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{k.host}:{k.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
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
        (self.home / "log4j2.properties").write_text(_LOG4J2)
        if not (data_dir / "meta.properties").exists():
            # KRaft storage is formatted exactly once; formatting again would orphan the data.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self.run_tool(
                [self.settings.services.java, *self._jvm_base(jars), "kafka.tools.StorageTool", "format",
                 f"--cluster-id={cluster_id}", f"--config={self._config_path}"],  # ids may start with "-"
                what="formatting the KRaft storage",
            )

    def _jvm_base(self, jars: Path) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.home / 'logs'}", "-cp", f"{jars / 'libs'}/*"]

    def command(self, jars: Path) -> list[str]:
        return [self.settings.services.java, *java_options(self.settings.kafka.heap), *self._jvm_base(jars),
                "kafka.Kafka", str(self._config_path)]

    def check_health(self, timeout_s: float) -> None:
        admin.ping(self.settings.kafka, timeout_s=timeout_s)
