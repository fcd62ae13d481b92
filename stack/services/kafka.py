"""Apache Kafka 4.x as a single KRaft node, from Maven Central's jars.

`mvn dependency:build-classpath` resolves ``kafka_2.13`` and its runtime
dependencies (stack/maven/kafka-pom.xml) into Maven's cache; the broker runs as
``java -cp <those jars> kafka.Kafka server.properties`` after the storage was
formatted once with ``kafka.tools.StorageTool``. It is Apache Kafka itself:
lag checks depend on its exact offsets and watermarks.
"""

from __future__ import annotations

import base64
import time
import uuid

from stack.config import REPO_ROOT
from stack.service import Service
from stack.toolchain import find_jdk, maven_classpath

POM = REPO_ROOT / "stack" / "maven" / "kafka-pom.xml"


class Kafka(Service):
    name = "kafka"
    port_names = ("kafka", "kafka_controller")
    start_timeout = 90.0

    @property
    def classpath_file(self):
        return self.config.cache / "kafka" / "classpath.txt"

    @property
    def properties_file(self):
        return self.dir / "server.properties"

    def install(self) -> None:
        find_jdk(self.name, 17)
        maven_classpath(self.name, POM, self.classpath_file)

    def _java(self, main: str, *args: str, heap: str = "-Xmx512m") -> list[str]:
        java = find_jdk(self.name, 17) / "bin" / "java"
        classpath = maven_classpath(self.name, POM, self.classpath_file)
        return [
            str(java), "-Xms128m", heap, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp", classpath, main, *args,
        ]

    def prepare(self) -> None:
        host = self.config.host
        broker, controller = self.config.ports["kafka"], self.config.ports["kafka_controller"]
        logs = self.data_dir / "logs"
        self.properties_file.write_text(
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            "process.roles=broker,controller\n"
            "node.id=1\n"
            f"controller.quorum.voters=1@{host}:{controller}\n"
            f"listeners=PLAINTEXT://{host}:{broker},CONTROLLER://{host}:{controller}\n"
            f"advertised.listeners=PLAINTEXT://{host}:{broker}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
            f"log.dirs={logs}\n"
            "num.partitions=3\n"
            # Topics are created on purpose (include/kafka.py), never by a typo.
            "auto.create.topics.enable=false\n"
            "offsets.topic.replication.factor=1\n"
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
            "transaction.state.log.replication.factor=1\n"
            "transaction.state.log.min.isr=1\n"
            # A consumer group joins at once instead of waiting 3 s for peers.
            "group.initial.rebalance.delay.ms=0\n"
            "log.retention.hours=168\n"
        )
        (self.dir / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d{ISO8601}] %p %m (%c)%n\n"
            "rootLogger.level = info\n"
            "rootLogger.appenderRef.out.ref = out\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = info\n"
            "logger.state.name = state.change.logger\nlogger.state.level = warn\n"
        )
        if not (logs / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            self.run_checked(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                           "-c", str(self.properties_file), heap="-Xmx256m"),
                "formatting the KRaft storage",
            )

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.properties_file))

    def check_health(self) -> str:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"{self.config.host}:{self.port}", "socket.timeout.ms": 3000, "log_level": 0})
        meta = admin.list_topics(timeout=3)
        if not meta.brokers:
            raise RuntimeError("metadata lists no broker")
        # The group coordinator answers only once __consumer_offsets can be served.
        admin.list_consumer_groups(request_timeout=3).result()
        return f"{len(meta.brokers)} broker, {len(meta.topics)} topics"

    def after_start(self) -> None:
        """Make the group coordinator ready before anyone relies on it.

        On a freshly formatted broker the first offset commit creates
        ``__consumer_offsets`` and fails with COORDINATOR_LOAD_IN_PROGRESS
        until its partitions are loaded. Commit once for a probe group (with
        retries) so that "healthy" means commits work.
        """
        from confluent_kafka import Consumer, KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        bootstrap = f"{self.config.host}:{self.port}"
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        probe_topic, probe_group = "__sluice_stack_probe", "sluice-stack-probe"
        if probe_topic not in admin.list_topics(timeout=10).topics:
            admin.create_topics([NewTopic(probe_topic, num_partitions=1, replication_factor=1)])[probe_topic].result(30)
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": probe_group, "log_level": 0})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    consumer.commit(offsets=[TopicPartition(probe_topic, 0, 0)], asynchronous=False)
                    break
                except KafkaException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        finally:
            consumer.close()
