"""What Kafka's security costs the stream loader: readings/s over SASL_SSL beside PLAINTEXT, in one run.

One private Kafka node (its own runtime folder and ports, the stack's Kafka
class, so TLS, SCRAM and the authorizer are exactly the stack's) gets, for this
benchmark only, a third listener that is PLAINTEXT on loopback. Both loaders
read from that same broker into the stack's Elasticsearch and OpenTSDB:

* ``SASL_SSL``: a loader logging in as a SCRAM-SHA-512 user with the stream
  loader's ACLs on the run's topics and group, over TLS (the stack's default);
* ``PLAINTEXT``: a loader without TLS or login (principal ``ANONYMOUS``, given
  the same ACLs so the authorizer does the same work in both).

Each measurement is :func:`stream_bench.bench_throughput`: ``--messages``
payloads (three readings each) put in topics of the measurement's own, then a
``python -m collectors.stream`` process loads them; readings/s from its first
consumed record to its group's lag at zero. The modes alternate for
``--rounds`` rounds (PLAINTEXT first in odd rounds, SASL_SSL first in even
ones) so warm-up and drift fall on both; the medians are printed side by side
with their ratio. The sinks take most of a loader's time, so a second figure
isolates Kafka: the loader's own consumer settings (``collectors.stream.clients.consumer_config``)
reading every record of the run's topics back, no sinks, records/s over each
listener, alternating the same way. Asserts nothing.

Needs the stack's Elasticsearch and OpenTSDB (``python -m stack up elasticsearch opentsdb``), or
only the sinks named by ``--sinks``.
Run: ``.venv/bin/python tests/benchmarks/stream_security_bench.py [--messages 20000] [--rounds 3] [--sinks elasticsearch]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stream_bench  # noqa: E402
from stream_bench import KafkaTarget, free_port  # noqa: E402

BENCH_USER = "bench-stream-loader"
PLAINTEXT = "PLAINTEXT"
SASL_SSL = "SASL_SSL"


def private_kafka(cfg, runtime: Path, plaintext_port: int):
    """A one-node Kafka like the stack's, plus a PLAINTEXT listener on ``plaintext_port`` (loopback)."""
    from stack.config import DEFAULT_PORTS
    from stack.secrets import write_private
    from stack.services.kafka import Kafka

    class BenchKafka(Kafka):
        def prepare(self) -> None:
            super().prepare()
            host = self.config.host
            lines = []
            for line in self.properties_file.read_text().splitlines():
                if line.startswith(("listeners=", "advertised.listeners=")):
                    line += f",PLAIN://{host}:{plaintext_port}"
                elif line.startswith("listener.security.protocol.map="):
                    line += ",PLAIN:PLAINTEXT"
                lines.append(line)
            write_private(self.properties_file, "\n".join(lines) + "\n", replace=True)

    config = replace(cfg, runtime=runtime, ports={name: free_port() for name in DEFAULT_PORTS}, kafka_brokers=1)
    return BenchKafka(config)


def grant(admin_settings: dict, principal: str, run: str, group: str) -> None:
    """The stream loader's rights on the run's topics and group (what include.kafka.ROLES gives it on Sluice's)."""
    from confluent_kafka.admin import AdminClient, AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    raw, host, dl = stream_bench.bench_topics(run)
    rights = [(ResourceType.TOPIC, raw, AclOperation.READ), (ResourceType.TOPIC, host, AclOperation.READ),
              (ResourceType.TOPIC, dl, AclOperation.WRITE), (ResourceType.GROUP, group, AclOperation.READ)]
    admin = AdminClient({**admin_settings, "log_level": 0})
    bindings = [AclBinding(kind, name, ResourcePatternType.LITERAL, principal, "*", op, AclPermissionType.ALLOW)
                for kind, name, op in rights]
    for future in admin.create_acls(bindings, request_timeout=15).values():
        future.result(15)


def consume_rate(bootstrap: str, env: dict, topic: str, count: int) -> float:
    """Records/s of the loader's consumer (its settings, login from ``env``) reading ``count`` records of ``topic``."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    from collectors.stream.clients import consumer_config
    from collectors.stream.config import StreamConfig

    config = StreamConfig.from_args(["--kafka-bootstrap", bootstrap, "--kafka-instance-id", "bench"], env)
    consumer = Consumer(consumer_config(config))
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got, t0 = 0, time.monotonic()
        while got < count:
            got += sum(1 for m in consumer.consume(min(1000, count - got), timeout=1.0) if not m.error())
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"only {got} of {count} records of {topic} in 300 s")
        return got / (time.monotonic() - t0)
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="payloads per measurement (3 readings each)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per mode, alternating")
    parser.add_argument("--sinks", default="elasticsearch,opentsdb", help="the loader's sinks (default: both)")
    args = parser.parse_args()

    from include.kafka import upsert_users
    from stack.config import StackConfig
    from stack.secrets import new_password, write_private
    from stack.services.kafka import ADMIN_USER, client_settings

    cfg = StackConfig.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-kafka-security-"))
    plain_port = free_port()
    broker = private_kafka(cfg, tmp / "runtime", plain_port)
    print(f"starting a private Kafka node in {tmp / 'runtime'} (SASL_SSL {broker.port}, PLAINTEXT {plain_port}) ...",
          flush=True)
    broker.install()
    broker.start()
    results: dict[str, list[dict]] = {PLAINTEXT: [], SASL_SSL: []}
    try:
        admin = client_settings(broker.config, ADMIN_USER)
        from confluent_kafka.admin import AdminClient

        password = new_password()
        upsert_users(AdminClient({**admin, "log_level": 0}), {BENCH_USER: password})
        password_file = tmp / "bench-user.password"
        write_private(password_file, password)
        targets = {
            PLAINTEXT: KafkaTarget(f"{broker.config.host}:{plain_port}",
                                   {"SLUICE_KAFKA_SECURITY_PROTOCOL": PLAINTEXT}, admin),
            SASL_SSL: KafkaTarget(broker.config.kafka_bootstrap, {
                "SLUICE_KAFKA_SECURITY_PROTOCOL": SASL_SSL, "SLUICE_KAFKA_SASL_MECHANISM": admin["sasl.mechanism"],
                "SLUICE_KAFKA_USERNAME": BENCH_USER, "SLUICE_KAFKA_PASSWORD_FILE": str(password_file),
                "SLUICE_KAFKA_CA_FILE": admin["ssl.ca.location"]}, admin),
        }
        principals = {PLAINTEXT: "User:ANONYMOUS", SASL_SSL: f"User:{BENCH_USER}"}
        for round_ in range(args.rounds):
            order = (PLAINTEXT, SASL_SSL) if round_ % 2 == 0 else (SASL_SSL, PLAINTEXT)
            for mode in order:
                target = targets[mode]
                print(f"round {round_ + 1}/{args.rounds}: {mode}, {args.messages} payloads ...", flush=True)
                got = stream_bench.bench_throughput(
                    cfg, args.messages, tmp, ["--sinks", args.sinks], target,
                    prepared=lambda run, group, m=mode: grant(admin, principals[m], run, group))
                results[mode].append(got)
                print(json.dumps({mode: got}), flush=True)
        # Kafka alone: every measurement's records read back over each listener, alternating.
        consumed: dict[str, list[float]] = {PLAINTEXT: [], SASL_SSL: []}
        runs = [r["run"] for mode in (PLAINTEXT, SASL_SSL) for r in results[mode]]
        for i, run in enumerate(runs):
            for mode in ((PLAINTEXT, SASL_SSL) if i % 2 == 0 else (SASL_SSL, PLAINTEXT)):
                target = targets[mode]
                grant(admin, principals[mode], run, "bench")  # assign only; the group id needs a right all the same
                rate = consume_rate(target.bootstrap, {**target.env, "SLUICE_KAFKA_GROUP": "bench"},
                                    f"bench.{run}.raw", args.messages)
                consumed[mode].append(rate)
                print(json.dumps({"consume_only": mode, "run": run, "records_per_s": round(rate)}), flush=True)
    finally:
        broker.stop()
    plain = statistics.median(r["readings_per_s_into_both_sinks"] for r in results[PLAINTEXT])
    secure = statistics.median(r["readings_per_s_into_both_sinks"] for r in results[SASL_SSL])
    print()
    print(f"stream loader into {args.sinks}, {args.messages} payloads ({3 * args.messages} readings) per run, "
          f"median of {args.rounds}:")
    print(f"  {'PLAINTEXT (no TLS, no login)':<44}{plain:>10,.0f} readings/s")
    print(f"  {'SASL_SSL (TLS 1.3, SCRAM-SHA-512, ACLs)':<44}{secure:>10,.0f} readings/s")
    print(f"  {'ratio SASL_SSL / PLAINTEXT':<44}{secure / plain:>10.3f}  ({(1 - secure / plain) * 100:+.1f} % cost)")
    c_plain, c_secure = statistics.median(consumed[PLAINTEXT]), statistics.median(consumed[SASL_SSL])
    print(f"Kafka alone: the loader's consumer reading {args.messages} records back, no sinks, median of "
          f"{len(consumed[PLAINTEXT])}:")
    print(f"  {'PLAINTEXT':<44}{c_plain:>10,.0f} records/s")
    print(f"  {'SASL_SSL':<44}{c_secure:>10,.0f} records/s")
    print(f"  {'ratio SASL_SSL / PLAINTEXT':<44}{c_secure / c_plain:>10.3f}  ({(1 - c_secure / c_plain) * 100:+.1f} % cost)")
    print(json.dumps({"plaintext": results[PLAINTEXT], "sasl_ssl": results[SASL_SSL], "median_plaintext": plain,
                      "median_sasl_ssl": secure, "ratio": round(secure / plain, 3),
                      "consume_only_records_per_s": consumed, "consume_only_ratio": round(c_secure / c_plain, 3),
                      "logs": str(tmp)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
