"""Apache Kafka 4.x in KRaft mode, from Maven Central's jars: one node, or a cluster of three.

`mvn dependency:build-classpath` resolves ``kafka_2.13`` and its runtime
dependencies (stack/maven/kafka-pom.xml) into Maven's cache; each node runs as
``java -cp <those jars> kafka.Kafka server.properties`` after its storage was
formatted once with ``kafka.tools.StorageTool``. It is Apache Kafka itself:
lag checks depend on its exact offsets and watermarks.

``SLUICE_KAFKA_BROKERS=3`` runs three combined broker+controller nodes
(services ``kafka``, ``kafka-2``, ``kafka-3``, each its own process group, so a
test can SIGKILL one) with a static three-voter quorum and one cluster id. The
internal topics get replication factor 3 and ``min.isr`` 2, and so do Sluice's
topics (:func:`include.kafka.ensure_topics` sizes them from the brokers it
sees): the cluster keeps accepting ``acks=all`` writes with one node down.
While the quorum forms, nodes 1 and 2 count as started once their controller
listens; the last node waits for the whole cluster, so ``up`` returns with every
broker registered and offset commits working.

Security is on by default. Both listeners of every node are SASL_SSL with the
certificate :func:`stack.tls.server_cert` signs for ``kafka``: the client
listener (also the inter-broker one) takes SCRAM-SHA-512, the controller
listener PLAIN for the brokers' own principal only (KRaft controllers cannot
check SCRAM: the credentials live in the metadata they serve). The admin's
SCRAM credential is written into the storage when it is formatted
(``--add-scram``, through a 0600 Java argument file, so no password is on a
command line); on every start the admin then sets the other users' credentials
(:data:`include.kafka.ROLES`), creates Sluice's topics and makes the ACLs match
(``StandardAuthorizer``, nothing allowed without an ACL, the admin the only
super user). Passwords are generated once into ``runtime/kafka/users.json``
(0600); :func:`client_settings` and :func:`client_env` hand them to clients.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

from include.kafka import ADMIN_USER, DEFAULT_MECHANISM, DEFAULT_PROTOCOL, ROLES, TOPICS, apply_acls, ensure_topics, upsert_users
from stack.config import REPO_ROOT, StackConfig, StackError
from stack.secrets import new_password, secret_json, write_private
from stack.service import Service, port_open
from stack.tls import ca_cert_path, server_cert
from stack.toolchain import find_jdk, maven_classpath

POM = REPO_ROOT / "stack" / "maven" / "kafka-pom.xml"


# --- Credentials: the one place the local stack keeps Kafka's users --------------------------

def users_file(config: StackConfig) -> Path:
    return config.runtime / "kafka" / "users.json"


def kafka_passwords(config: StackConfig) -> dict[str, str]:
    """User -> password of the admin and every role, generated on first use (a role added later gets one too)."""
    users = [ADMIN_USER, *ROLES]
    path = users_file(config)
    passwords = secret_json(path, lambda: {u: new_password() for u in users})
    if missing := [u for u in users if u not in passwords]:
        passwords.update({u: new_password() for u in missing})
        import json

        write_private(path, json.dumps(passwords) + "\n", replace=True)
    return passwords


def password_file(config: StackConfig, user: str) -> Path:
    """A 0600 file holding ``user``'s password, for programs that read ``SLUICE_KAFKA_PASSWORD_FILE``."""
    path = config.runtime / "kafka" / "secrets" / f"{user}.password"
    password = kafka_passwords(config)[user]
    if not path.exists() or path.read_text() != password:
        write_private(path, password, replace=True)
    return path


def client_settings(config: StackConfig, user: str = ADMIN_USER) -> dict[str, str]:
    """librdkafka settings of a client of the local stack logging in as ``user`` (bootstrap included)."""
    if user not in kafka_passwords(config):
        raise KeyError(f"no Kafka user {user!r} in the local stack (users: {', '.join(kafka_passwords(config))})")
    return {
        "bootstrap.servers": config.kafka_bootstrap,
        "security.protocol": DEFAULT_PROTOCOL,
        "sasl.mechanism": DEFAULT_MECHANISM,
        "sasl.username": user,
        "sasl.password": kafka_passwords(config)[user],
        "ssl.ca.location": str(ca_cert_path(config)),
    }


def client_env(config: StackConfig, user: str) -> dict[str, str]:
    """``SLUICE_KAFKA_*`` environment of a collector or loader logging in as ``user`` (password by file)."""
    return {
        "SLUICE_KAFKA_SECURITY_PROTOCOL": DEFAULT_PROTOCOL,
        "SLUICE_KAFKA_SASL_MECHANISM": DEFAULT_MECHANISM,
        "SLUICE_KAFKA_USERNAME": user,
        "SLUICE_KAFKA_PASSWORD_FILE": str(password_file(config, user)),
        "SLUICE_KAFKA_CA_FILE": str(ca_cert_path(config)),
    }


#: Which programs log in as which user: they read the password at start, so they restart after a rotation.
USED_BY = {
    ADMIN_USER: "the Kafka nodes themselves (restarted here) and `python -m stack`",
    "sluice-mqtt-collector": "mqtt-collector",
    "sluice-host-collector": "host-collector",
    "sluice-stream-loader": "stream-loader",
    "sluice-lag": "Airflow (connection kafka_lag) and `python -m stack status`",
    "sluice-airflow": "Airflow (connection kafka_default)",
}


def rotate_password(config: StackConfig, user: str) -> str:
    """Give ``user`` a new generated password: on the running cluster first, then in users.json and its file.

    The cluster is told with the admin's current login, so a rotation of the
    admin itself works too (its nodes must then restart: their JAAS lines hold
    the old one). Returns who uses the login and must restart. Raises KeyError
    for an unknown user, RuntimeError when the cluster refuses.
    """
    import json

    passwords = kafka_passwords(config)
    if user not in passwords:
        raise KeyError(f"no Kafka user {user!r} (users: {', '.join(passwords)})")
    new = new_password()
    from confluent_kafka.admin import AdminClient

    if port_open(config.host, config.ports["kafka"]):
        admin = AdminClient({**client_settings(config, ADMIN_USER), "log_level": 0})
        upsert_users(admin, {user: new})
    # Not running: the next start sets it (users at every start; the admin's own needs a running cluster).
    elif user == ADMIN_USER:
        raise RuntimeError("the admin's password is stored in the cluster: start Kafka (`python -m stack up kafka`) first")
    write_private(users_file(config), json.dumps({**passwords, user: new}) + "\n", replace=True)
    password_file(config, user)
    return USED_BY.get(user, "its programs")


def _jaas(module: str, user: str, password: str, **users: str) -> str:
    extra = "".join(f' user_{name}="{pw}"' for name, pw in users.items())
    return f'org.apache.kafka.common.security.{module} required username="{user}" password="{password}"{extra};'


class Kafka(Service):
    name = "kafka"
    node_id = 1
    port_names = ("kafka", "kafka_controller")
    # TLS and SCRAM add to a JVM start that takes a minute on a busy machine.
    start_timeout = 180.0
    _starting = False

    @classmethod
    def enabled(cls, config: StackConfig) -> bool:
        return cls.node_id <= config.kafka_brokers

    @property
    def brokers(self) -> int:
        return self.config.kafka_brokers

    @property
    def cluster_id_file(self):
        # One id for every node of the cluster, kept in node 1's folder.
        return self.config.runtime / "kafka" / "cluster-id"

    @property
    def classpath_file(self):
        return self.config.cache / "kafka" / "classpath.txt"

    @property
    def properties_file(self):
        return self.dir / "server.properties"

    @property
    def keystore_file(self):
        return self.dir / "keystore.pem"

    def admin_settings(self) -> dict[str, str]:
        return client_settings(self.config, ADMIN_USER)

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
        self._starting = True
        host, n = self.config.host, self.brokers
        broker, controller = self.ports.values()
        voters = ",".join(
            f"{node}@{host}:{self.config.ports[self.config.kafka_port_names(node)[1]]}" for node in range(1, n + 1)
        )
        # Internal topics as replicated as the cluster allows: with 3 nodes one may die.
        rf, min_isr = min(n, 3), 2 if n >= 3 else 1
        logs = self.data_dir / "logs"
        tls = server_cert(self.config, "kafka")
        # Kafka's PEM key store: the PKCS#8 key and the chain (leaf, then CA) in one 0600 file.
        write_private(self.keystore_file, tls.key.read_bytes() + tls.cert.read_bytes(), replace=True)
        admin_pw = kafka_passwords(self.config)[ADMIN_USER]
        # 0600: it holds the admin's password (the JAAS lines below).
        write_private(self.properties_file, (
            "# Written by `python -m stack`; edits are replaced at the next start.\n"
            "process.roles=broker,controller\n"
            f"node.id={self.node_id}\n"
            f"controller.quorum.voters={voters}\n"
            f"listeners=CLIENT://{host}:{broker},CONTROLLER://{host}:{controller}\n"
            f"advertised.listeners=CLIENT://{host}:{broker}\n"
            "controller.listener.names=CONTROLLER\n"
            "inter.broker.listener.name=CLIENT\n"
            "listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SASL_SSL\n"
            # Clients and brokers between them: SCRAM-SHA-512 (credentials in the cluster metadata).
            "listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512\n"
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n"
            "listener.name.client.scram-sha-512.sasl.jaas.config="
            + _jaas("scram.ScramLoginModule", ADMIN_USER, admin_pw) + "\n"
            # Controllers: PLAIN over TLS, the admin the only user it knows.
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN\n"
            "sasl.mechanism.controller.protocol=PLAIN\n"
            "listener.name.controller.plain.sasl.jaas.config="
            + _jaas("plain.PlainLoginModule", ADMIN_USER, admin_pw, **{ADMIN_USER: admin_pw}) + "\n"
            "ssl.keystore.type=PEM\n"
            f"ssl.keystore.location={self.keystore_file}\n"
            "ssl.truststore.type=PEM\n"
            f"ssl.truststore.location={tls.ca}\n"
            "ssl.endpoint.identification.algorithm=https\n"
            "ssl.enabled.protocols=TLSv1.3,TLSv1.2\n"
            # Nothing is allowed without an ACL; the brokers' principal (also the stack's admin) is the only super user.
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
            "allow.everyone.if.no.acl.found=false\n"
            f"super.users=User:{ADMIN_USER}\n"
            f"log.dirs={logs}\n"
            "num.partitions=3\n"
            f"default.replication.factor={rf}\n"
            f"min.insync.replicas={min_isr}\n"
            # Topics are created on purpose (include/kafka.py), never by a typo.
            "auto.create.topics.enable=false\n"
            f"offsets.topic.replication.factor={rf}\n"
            f"share.coordinator.state.topic.replication.factor={rf}\n"
            f"share.coordinator.state.topic.min.isr={min_isr}\n"
            f"transaction.state.log.replication.factor={rf}\n"
            f"transaction.state.log.min.isr={min_isr}\n"
            # A consumer group joins at once instead of waiting 3 s for peers.
            "group.initial.rebalance.delay.ms=0\n"
            "log.retention.hours=168\n"
        ), replace=True)
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
        formatted_for = self.dir / "formatted-for-brokers"
        secured = self.dir / "formatted-with-scram"
        if (logs / "meta.properties").exists():
            was = formatted_for.read_text().strip() if formatted_for.exists() else "1"
            if was != str(n):
                raise StackError(
                    self.name,
                    f"{logs} was formatted for a {was}-broker cluster, SLUICE_KAFKA_BROKERS asks for {n}: "
                    f"set SLUICE_KAFKA_BROKERS={was}, or `python -m stack down` and remove runtime/kafka* "
                    "(that deletes the Kafka data)",
                )
            if not secured.exists():
                raise StackError(
                    self.name,
                    f"{logs} was formatted before Kafka had users (no SCRAM credential for {ADMIN_USER}): "
                    "`python -m stack down` and remove runtime/kafka* (that deletes the Kafka data), then start again",
                )
            return
        if self.node_id == 1 and not self.cluster_id_file.exists():
            self.cluster_id_file.parent.mkdir(parents=True, exist_ok=True)
            self.cluster_id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + "\n")
        if not self.cluster_id_file.exists():
            raise StackError(self.name, f"no cluster id in {self.cluster_id_file}: start node 1 (`kafka`) first")
        # The admin's SCRAM credential goes into the bootstrap metadata, so the brokers can log in to each
        # other before any user exists. The password reaches StorageTool through a Java argument file
        # (0600, removed right after), never through the command line `ps` shows.
        argfile = self.dir / "format.args"
        args = self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id_file.read_text().strip(),
                          "-c", str(self.properties_file),
                          "--add-scram", f"{DEFAULT_MECHANISM}=[name={ADMIN_USER},password={admin_pw}]",
                          heap="-Xmx256m")
        write_private(argfile, "\n".join(_argfile_quote(a) for a in args[1:]) + "\n", replace=True)
        try:
            self.run_checked([args[0], f"@{argfile}"], "formatting the KRaft storage")
        finally:
            argfile.unlink(missing_ok=True)
        formatted_for.write_text(f"{n}\n")
        secured.write_text(f"{DEFAULT_MECHANISM} {ADMIN_USER}\n")

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.properties_file))

    def check_health(self) -> str:
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({**self.admin_settings(), "socket.timeout.ms": 3000, "log_level": 0})
            meta = admin.list_topics(timeout=3)
            if self.node_id not in meta.brokers:
                raise RuntimeError(f"broker {self.node_id} is not in the cluster metadata")
            # The group coordinator answers only once __consumer_offsets can be served.
            admin.list_consumer_groups(request_timeout=3).result()
        except Exception:
            # Nodes before the last start while there is no quorum yet: their controller
            # listening is all that can be had until the last node joins.
            controller = self.config.ports[self.port_names[1]]
            if self._starting and self.node_id < self.brokers and port_open(self.config.host, controller):
                return "controller listening, waiting for the quorum"
            raise
        if self.brokers == 1:
            return f"1 broker, {len(meta.topics)} topics"
        return f"broker {self.node_id} of {len(meta.brokers)}/{self.brokers} up, {len(meta.topics)} topics"

    def after_start(self) -> None:
        """Make the group coordinator ready before anyone relies on it.

        On a freshly formatted broker the first offset commit creates
        ``__consumer_offsets`` and fails with COORDINATOR_LOAD_IN_PROGRESS
        until its partitions are loaded. Commit once for a probe group (with
        retries) so that "healthy" means commits work.
        """
        from confluent_kafka import Consumer, KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        self._starting = False
        if self.node_id < self.brokers:
            return  # the last node probes the whole cluster
        admin = AdminClient({**self.admin_settings(), "log_level": 0})
        deadline = time.monotonic() + 60
        while len(admin.list_topics(timeout=10).brokers) < self.brokers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(admin.list_topics(timeout=10).brokers)} of {self.brokers} brokers joined")
            time.sleep(0.5)
        probe_topic, probe_group = "__sluice_stack_probe", "sluice-stack-probe"
        if probe_topic not in admin.list_topics(timeout=10).topics:
            admin.create_topics(
                [NewTopic(probe_topic, num_partitions=1, replication_factor=min(self.brokers, 3))]
            )[probe_topic].result(30)
        consumer = Consumer({**self.admin_settings(), "group.id": probe_group, "log_level": 0})
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
        # Users, Sluice's topics and the ACLs, set by the admin at every start: a role added to
        # include.kafka.ROLES, or a password rotated in users.json, takes effect here.
        passwords = kafka_passwords(self.config)
        upsert_users(admin, {u: pw for u, pw in passwords.items() if u != ADMIN_USER})
        ensure_topics(self.config.kafka_bootstrap, TOPICS, settings=self.admin_settings())
        apply_acls(admin)


def _argfile_quote(arg: str) -> str:
    """One argument of a Java @-file: quoted, with backslashes and quotes escaped."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KafkaNode2(Kafka):
    """Node 2 of the three-broker cluster (only with SLUICE_KAFKA_BROKERS=3)."""

    name = "kafka-2"
    node_id = 2
    port_names = ("kafka_2", "kafka_2_controller")


class KafkaNode3(Kafka):
    """Node 3 of the three-broker cluster (only with SLUICE_KAFKA_BROKERS=3)."""

    name = "kafka-3"
    node_id = 3
    port_names = ("kafka_3", "kafka_3_controller")
