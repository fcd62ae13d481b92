"""CLI of the local stack: ``python -m stack run|up|down|status|logs|install|env|demo|kafka-user|es-keys|mqtt-user|compose-secrets``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys

from include.sensors import SENSOR_TOPIC_PREFIX
from stack import api
from stack.config import StackConfig, StackError, check_workers
from stack.connections import airflow_env
from stack.service import State, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, text in [
        ("up", "install what is missing and start services that are not running"),
        ("down", "stop services started by the stack"),
        ("status", "per component state, health, uptime, restarts; then the pipeline (freshness, lag, failed runs)"),
        ("install", "download and build without starting"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("services", nargs="*", help="default: all")
    p = sub.add_parser("run", help="the platform: start everything, unpause the DAGs, print the URLs")
    p.add_argument("--devices", type=int, default=5, help="simulated sensor devices (default 5)")
    p.add_argument("--workers", help="Celery workers with SLUICE_EXECUTOR=celery (default SLUICE_AIRFLOW_WORKERS or 2)")
    p = sub.add_parser("logs", help="print the end of a service's log")
    p.add_argument("service")
    p.add_argument("-n", "--lines", type=int, default=50)
    sub.add_parser("env", help="print shell exports for Airflow (AIRFLOW_HOME, AIRFLOW_CONN_*)")
    # Kafka's users (issue 15): the passwords live in runtime/kafka/users.json (0600).
    p = sub.add_parser("kafka-user", help="list Kafka's users and their rights, or rotate one's password")
    p.add_argument("action", choices=("list", "rotate"))
    p.add_argument("user", nargs="?", help="the user to rotate (see `kafka-user list`)")
    p = sub.add_parser("demo", help="check the running platform: wait for scheduled minutes, print landed vs loaded")
    p.add_argument("--minutes", type=int, default=3, help="scheduled minutes to wait for (default 3)")
    # Elasticsearch API keys (stack/services/elasticsearch.py): which exist, and rotation. Never prints a key.
    p = sub.add_parser("es-keys", help="Elasticsearch API keys per role: list them (ids only) or rotate them")
    p.add_argument("action", choices=["list", "rotate"])
    p.add_argument("--prefix", default=None, help="index prefix (default SLUICE_ES_INDEX_PREFIX or sluice)")
    # docker-compose.yaml's secrets (stack/compose.py): not the local stack, which makes its own under runtime/.
    p = sub.add_parser("compose-secrets", help="write missing ./secrets files for docker compose (random; never overwrites)")
    p.add_argument("--dir", help="default: ./secrets of the repository (what docker-compose.yaml reads)")
    p = sub.add_parser("mqtt-user", help="add, remove or list the broker's users (devices and collectors)",
                       description="Users of the stack's Mosquitto. A device may publish to sluice/sensors/<its name> "
                                   "only; a collector may read every device's topic. A running broker rereads its "
                                   "users at once (SIGHUP).")
    p.add_argument("action", choices=("add", "remove", "list"))
    p.add_argument("name", nargs="?", help="device id or collector user name (add, remove)")
    p.add_argument("--collector", action="store_true", help="add: a collector user (default: a device)")
    p.add_argument("--password-stdin", action="store_true",
                   help="add: read the password from standard input (default: generate one and print it)")
    p.add_argument("--replace", action="store_true", help="add: give an existing user a new password (rotation)")
    args = parser.parse_args(argv)
    if args.cmd == "compose-secrets":
        from stack import compose

        return compose.main(["secrets", *(["--dir", args.dir] if args.dir else [])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    try:
        config = StackConfig.from_env()
        names = getattr(args, "services", None) or None
        if args.cmd == "up":
            api.ensure(config, names)
            return _print_status(config, names)
        if args.cmd == "down":
            stopped = api.down(config, names)
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
            return 0
        if args.cmd == "run":
            from stack import platform

            if args.workers is not None:
                if config.executor != "celery":
                    raise ValueError("--workers needs SLUICE_EXECUTOR=celery (the LocalExecutor has no workers)")
                config = dataclasses.replace(config, airflow_workers=check_workers(args.workers, "--workers"))
            platform.bring_up(config, devices=args.devices)
            print(platform.where(config))
            return 0
        if args.cmd == "status":
            if names:
                return _print_status(config, names)
            from stack import platform

            lines, healthy = platform.status_report(config)
            print("\n".join(lines))
            return 0 if healthy else 3
        if args.cmd == "install":
            api.install(config, names)
            if names is None:
                # Not a service: the jars the Spark anomaly job reads s3a:// with.
                from stack import spark

                spark.install(config)
            return 0
        if args.cmd == "logs":
            (svc,) = api.services(config, [args.service])
            print(f"# {svc.log_file}")
            print(tail(svc.log_file, args.lines))
            return 0
        if args.cmd == "kafka-user":
            return _kafka_user(config, args.action, args.user)
        if args.cmd == "demo":
            from stack import demo

            return demo.run(config, minutes=args.minutes)
        if args.cmd == "es-keys":
            return _es_keys(config, args.action, args.prefix)
        if args.cmd == "mqtt-user":
            return _mqtt_user(config, args)
        if args.cmd == "env":
            for key, value in airflow_env(config).items():
                print(f"export {key}={shlex.quote(value)}")
            return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.log_tail:
            print(f"--- last lines of the {exc.service} log ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 2


def _kafka_user(config: StackConfig, action: str, user: str | None) -> int:
    from include.kafka import ADMIN_USER, ROLES
    from stack.services.kafka import USED_BY, password_file, rotate_password

    if action == "list":
        print(f"{ADMIN_USER:<24} super user: the brokers and the stack's administration")
        for name, grants in ROLES.items():
            rights = "; ".join(f"{'/'.join(g.operations)} {g.resource} {g.name}" for g in grants)
            print(f"{name:<24} {rights}\n{'':<24} password file {password_file(config, name)}; used by {USED_BY.get(name, '?')}")
        return 0
    if not user:
        raise ValueError("kafka-user rotate needs the user's name (see `python -m stack kafka-user list`)")
    try:
        used_by = rotate_password(config, user)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    except RuntimeError as exc:
        raise StackError("kafka", str(exc)) from None
    print(f"{user}: new password set on the cluster and in {password_file(config, user)}")
    if user == ADMIN_USER:
        names = [s.name for s in api.services(config, ["kafka"])]
        api.down(config, names)
        api.ensure(config, names)
        print("restarted " + ", ".join(names) + " with it")
    else:
        print(f"restart what logs in as {user} to use it: {used_by}")
    return 0


def _es_keys(config: StackConfig, action: str, prefix: str | None) -> int:
    from include.contract import index_prefix
    from stack.services.elasticsearch import Elasticsearch

    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one INFO line per request otherwise
    es, prefix = Elasticsearch(config), prefix or index_prefix()
    if es.pid() is None:
        raise StackError(es.name, "not running: `python -m stack up elasticsearch` first")
    if action == "rotate":
        es.rotate_api_keys(prefix)
        print(f"new keys for prefix {prefix}, the old ones are invalidated: restart the clients "
              "(`python -m stack down` then `python -m stack run`)")
    keys = es.api_keys(prefix, verify=True)
    print(f"{'role':<11} {'key id':<22} name   (keys in {es.keys_file(prefix)}, mode 0600)")
    for role, key in keys.items():
        print(f"{role:<11} {key['id']:<22} {key['name']}")
    return 0


def _mqtt_user(config: StackConfig, args: argparse.Namespace) -> int:
    """``mqtt-user add|remove|list``; passwords come from stdin or are generated, never from argv."""
    from stack.services.mosquitto import COLLECTOR, DEVICE, Mosquitto

    broker = Mosquitto(config)
    if args.action == "list":
        users = broker.users()
        for name, role in sorted(users.items()):
            print(f"{name:<40} {role}")
        if not users:
            print("no MQTT users yet (`python -m stack up mosquitto` adds the stack's own)", file=sys.stderr)
        return 0
    if not args.name:
        raise ValueError(f"mqtt-user {args.action} needs a NAME")
    if args.action == "remove":
        (role,) = broker.remove_users([args.name])
        print(f"removed {role} {args.name}")
        return 0
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    role = COLLECTOR if args.collector else DEVICE
    password_out = broker.add_user(args.name, role, password, replace=args.replace)
    verb = "new password for" if args.replace else "added"
    where = broker.collector_password_file(args.name) if role == COLLECTOR else broker.devices_file
    print(f"{verb} {role} {args.name} (kept in {where}, mode 0600)", file=sys.stderr)
    if role == DEVICE:
        print(f"it may publish to {SENSOR_TOPIC_PREFIX}/{args.name} only", file=sys.stderr)
    if password is None:
        print(password_out)  # the one place the generated password is shown: give it to the device
    return 0


def _print_status(config: StackConfig, names) -> int:
    rows = api.status(config, names)
    for st in rows:
        ports = " ".join(f"{n}={p}" for n, p in st.ports.items())
        pid = st.pid if st.pid else "-"
        print(f"{st.service:<14} {st.state.value:<10} pid={pid:<8} {ports:<45} {st.detail}")
    # Exit status for scripts: 0 only when every listed service is healthy.
    return 0 if all(st.state is State.RUNNING for st in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
