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
with their ratio. Asserts nothing.

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
    print(json.dumps({"plaintext": results[PLAINTEXT], "sasl_ssl": results[SASL_SSL], "median_plaintext": plain,
                      "median_sasl_ssl": secure, "ratio": round(secure / plain, 3), "logs": str(tmp)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
