"""The platform as a whole: bring it all up (``run``) and say how it is doing (``status``).

``python -m stack run --devices N`` (``make run``) starts, in order, the
servers of the local stack, PostgreSQL and the four Airflow components (with
``SLUICE_EXECUTOR=celery`` also Redis and ``--workers N`` Celery workers), then
the supervised host sampler, MQTT collector, stream loader and sensor simulator;
it unpauses the scheduled Sluice DAGs through Airflow's REST API and prints
where everything is. Then it returns: the services run in the background (each
in its own process group) until ``python -m stack down`` (``make down``).

``python -m stack status`` shows per component its state, health, uptime and
restarts, and under that the pipeline: the last minute loaded per source (the
freshness point the minute DAGs write to OpenTSDB), the stream loader's lag
(Kafka admin API) and the DAG runs that failed in the last hour (REST API).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from include.kafka import STREAM_GROUP
from stack import api
from stack.airflow_api import SCHEDULED_DAGS, AirflowApiError, AirflowClient
from stack.config import LANDING_BUCKET, StackConfig
from stack.service import State, port_open
from stack.services.airflow import CELERY_WORKERS, AirflowScheduler, password_file
from stack.services import ALL
from stack.services.redis import Redis
from stack.services.collectors import Simulator, SupervisedService
from stack.tls import ca_cert_path

Out = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


def bring_up(config: StackConfig, *, devices: int, out: Out = _print) -> None:
    """Start what is not running, with ``devices`` simulated sensors, and unpause the DAGs."""
    sim = Simulator(config)
    changed = sim.devices() != devices
    sim.set_devices(devices)
    if changed and sim.pid() is not None:
        out(f"simulator: restarting with {devices} devices")
        sim.stop()
    apply_executor(config, out=out)
    names = [svc.name for svc in api.services(config)]
    for i, name in enumerate(names, 1):
        out(f"[{i}/{len(names)}] {name} ...")
        api.ensure(config, [name])
    out("unpausing the scheduled Sluice DAGs: " + ", ".join(SCHEDULED_DAGS))
    unpause(config, out=out)


def apply_executor(config: StackConfig, *, out: Out = _print) -> None:
    """Stop what runs with another executor or worker count, so the next ``ensure`` starts it right.

    A scheduler started with the other ``SLUICE_EXECUTOR`` stops (its replacement
    reads the new cfg); workers beyond the count stop, and on the LocalExecutor
    all of them and Redis.
    """
    scheduler = AirflowScheduler(config)
    running = scheduler.running_executor()
    if running is not None and running != config.executor:
        out(f"airflow-scheduler: restarting with SLUICE_EXECUTOR={config.executor} (it runs {running})")
        scheduler.stop()
    for cls in (*CELERY_WORKERS, Redis):
        svc = cls(config)
        if not cls.enabled(config) and svc.pid() is not None:
            out(f"{svc.name}: stopping (not part of this configuration)")
            svc.stop()


def unpause(config: StackConfig, *, dags: tuple[str, ...] = SCHEDULED_DAGS, timeout: float = 300,
            out: Out = _print) -> None:
    """Unpause ``dags`` (default :data:`SCHEDULED_DAGS`), waiting for the dag-processor to have parsed each."""
    client = AirflowClient(config)
    deadline = time.monotonic() + timeout
    pending = list(dags)
    while pending:
        try:
            client.unpause(pending[0])
            pending.pop(0)
            continue
        except AirflowApiError as exc:
            if "HTTP 404" not in str(exc) or time.monotonic() > deadline:
                raise
        out(f"  waiting for the dag-processor to parse {pending[0]} ...")
        time.sleep(5)


def executor_line(config: StackConfig) -> str:
    if config.executor == "celery":
        return (f"CeleryExecutor: {config.airflow_workers} workers (airflow-worker-1..{config.airflow_workers}), "
                f"Redis broker on port {config.ports['redis']}")
    return "LocalExecutor (SLUICE_EXECUTOR=celery ... --workers N for Celery workers)"


def where(config: StackConfig) -> str:
    """The URLs and the password file, as ``run`` prints them."""
    return f"""
Sluice is running (in the background; `make down` stops all of it).
  Airflow UI      {config.url('airflow_api')}   user admin, password in {password_file(config)}
  Elasticsearch   {config.url('elasticsearch', scheme='https')}   CA {config.runtime / 'tls' / 'ca.crt'}, API keys in {config.runtime / 'elasticsearch'}/api-keys-sluice.json
  OpenTSDB        {config.url('opentsdb')}
  MinIO console   {config.url('minio_console', 'https')}   root keys in {config.runtime / 'minio' / 'credentials.json'}, bucket {LANDING_BUCKET}; CA {ca_cert_path(config)}
  Logs            {config.runtime}/<service>/<service>.log   (`python -m stack logs <service>`)
  Executor        {executor_line(config)}
  Health          python -m stack status     Check the counts: make demo
"""


# -- status -------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def components(config: StackConfig) -> tuple[list[str], bool]:
    """The component table and whether every component is running and healthy."""
    healthy = True
    lines = [f"{'component':<22} {'state':<10} {'uptime':>8} {'restarts':>8}  health"]
    # Also what runs outside this configuration (workers of a celery run, asked without the variable).
    for svc in [cls(config) for cls in ALL if cls.enabled(config) or cls(config).pid() is not None]:
        st = svc.status()
        healthy &= st.state is State.RUNNING
        restarts = "-" if svc.restarts() is None else str(svc.restarts())
        detail = st.detail
        if isinstance(svc, SupervisedService):
            state = svc.supervisor_state()
            detail = detail.removeprefix(f"restarts={state.get('restarts', 0)} ")
            if state.get("failing"):
                detail = "FAILING " + detail
        first, *rest = (detail or "").splitlines() or [""]
        lines.append(f"{svc.name:<22} {st.state.value:<10} {_duration(svc.uptime()):>8} {restarts:>8}  {first}")
        lines += [f"{'':<52}{line}" for line in rest]
    return lines, healthy


@dataclass(frozen=True)
class Freshness:
    source: str
    minute: datetime | None

    def age(self, now: datetime) -> float | None:
        return (now - (self.minute + timedelta(minutes=1))).total_seconds() if self.minute else None


def last_loaded(config: StackConfig, *, hours: int = 24) -> list[Freshness]:
    """The last minute the minute DAGs recorded as loaded, per source (OpenTSDB freshness metric)."""
    from include.opentsdb import OpenTSDBClient
    from include.schemas import FRESHNESS_METRIC, SOURCES

    now = int(time.time())
    newest: dict[str, int] = {}
    with OpenTSDBClient(config.url("opentsdb")) as tsdb:
        for src in SOURCES:
            for s in tsdb.query(FRESHNESS_METRIC, start=now - hours * 3600, tags={"source": src}):
                if s["dps"]:
                    newest[src] = max(newest.get(src, 0), max(int(float(v)) for v in s["dps"].values()))
    return [Freshness(src, datetime.fromtimestamp(newest[src], timezone.utc) if src in newest else None)
            for src in SOURCES]


def stream_lag(config: StackConfig) -> int:
    """The stream loader group's total lag over both topics (messages)."""
    from confluent_kafka.admin import AdminClient

    from include.kafka import HOST_METRICS, SENSORS_RAW
    from include.kafka_lag import fetch_offsets

    if not port_open(config.host, config.ports["kafka"]):  # else librdkafka retries noisily until the timeout
        raise RuntimeError(f"Kafka is not running on {config.host}:{config.ports['kafka']}")
    from stack.services.kafka import client_settings

    # The lag check's user: describing the group and the topics is all it may do.
    admin = AdminClient({**client_settings(config, "sluice-lag"), "log_level": 0})
    return sum(o.lag for o in fetch_offsets(admin, STREAM_GROUP, topics=[SENSORS_RAW, HOST_METRICS], timeout=5))


def failed_runs(config: StackConfig, *, hours: float = 1) -> list[dict]:
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    return AirflowClient(config).dag_runs("~", since=since, state="failed")


def pipeline(config: StackConfig) -> list[str]:
    """The pipeline lines of ``status``; a part whose service is down says why instead."""
    now = datetime.now(timezone.utc)
    lines = ["", "pipeline"]
    try:
        for f in last_loaded(config):
            if f.minute is None:
                lines.append(f"  last minute loaded  {f.source:<7} none in the last 24 h")
            else:
                lines.append(f"  last minute loaded  {f.source:<7} {f.minute:%Y-%m-%d %H:%M} UTC "
                             f"({_duration(f.age(now))} after its end)")
    except Exception as exc:  # OpenTSDB down: say so, show the rest
        lines.append(f"  last minute loaded  unavailable: {type(exc).__name__}: {exc}")
    try:
        lines.append(f"  stream loader lag   {stream_lag(config)} messages (group {STREAM_GROUP})")
    except Exception as exc:
        lines.append(f"  stream loader lag   unavailable: {type(exc).__name__}: {exc}")
    try:
        failed = failed_runs(config)
        lines.append(f"  failed DAG runs     {len(failed)} in the last hour")
        lines += [f"    {r['dag_id']} {r['dag_run_id']} ({r.get('run_type')})" for r in failed[:10]]
    except Exception as exc:
        lines.append(f"  failed DAG runs     unavailable: {type(exc).__name__}: {exc}")
    return lines


def status_report(config: StackConfig) -> tuple[list[str], bool]:
    """(lines, every component running and healthy)."""
    lines, healthy = components(config)
    return lines + pipeline(config), healthy
