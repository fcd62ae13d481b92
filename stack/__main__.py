"""CLI of the local stack: ``python -m stack run|up|down|status|logs|install|env|demo|mqtt-user``."""

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
    p = sub.add_parser("demo", help="check the running platform: wait for scheduled minutes, print landed vs loaded")
    p.add_argument("--minutes", type=int, default=3, help="scheduled minutes to wait for (default 3)")
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
        if args.cmd == "demo":
            from stack import demo

            return demo.run(config, minutes=args.minutes)
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
