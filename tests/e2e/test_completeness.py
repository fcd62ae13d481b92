"""Minute completeness under the real scheduler (issue 12's first test).

The platform as ``make run`` brings it up (session fixture ``platform``): the
scheduler, dag-processor and api-server run the minute DAGs every minute, the
supervised host sampler and MQTT collector land the minute files and write
their manifests and heartbeats, the simulator publishes. On top of that:

1. From minute M on, each minute a new device publishes one message (the real
   simulator, through the platform's MQTT collector) and never again, so every
   minute after M follows a minute with a device that published in it only.
   The first run the scheduler made after M, of each minute DAG, must go on on
   the collectors' manifests, not on the grace (the old sensor waited for
   every device of the previous minute: 65-67 s after the minute instead of
   10-15 s). The evidence is what the sensor decided (its XCom ``readiness``),
   never a wall-clock bound; the seconds after the minute's close are printed.
   (The first run *made*, not minute M+1: the running platform does not catch
   up, and a scheduler with four runs in flight when a minute ends skips it,
   which on a loaded machine happens.)
2. The host collector is stopped 20 s into a minute X (SIGTERM under its
   supervisor: it lands its partial minute and that minute's manifest, and
   heartbeats no more). ``sluice_reconcile``'s ``check_collectors`` opens an
   incident naming the writer, and the first host run from X on goes on at the
   grace (no live writer says the minute is whole), naming the writer as
   stopped and loading exactly the rows it landed. The collector is started
   again at the end.

The scheduled DAGs the test does not need are paused while it runs (every task
is a process that parses its DAG file; a shared 2-core machine falls behind).
The grace is the platform's ``SLUICE_GRACE_SECONDS`` (default 45 s, read by
the minute DAGs from the scheduler's environment); the test reads the grace
each run used from its readiness, so it holds for any grace that is longer
than a minute's normal close (~10 s). 16 min 47 s at load 35-40 here; an idle machine needs
about 5 (an estimate: it was not idle this session).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from collectors.config import default_host
from collectors.simulate_sensors import device_ids
from include.alerts import IncidentBook
from include.landing import open_landing
from include.manifests import read_heartbeats, read_manifests
from include.pipeline import READY_GRACE, READY_MANIFESTS
from include.schemas import HOST, SENSOR
from stack import api, demo
from stack.airflow_api import MINUTE_DAGS
from stack.connections import landing_url
from stack.services.collectors import HostCollector, MqttCollector, Simulator
from stack.services.minio import MinIO
from stack.services.mosquitto import DEVICE, Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

SENSOR_DAG, HOST_DAG = "sluice_sensor_minute", "sluice_host_minute"
assert set(MINUTE_DAGS) == {SENSOR_DAG, HOST_DAG}
HEARTBEAT_BOOK = "state/alerts/heartbeat.json"


def _sleep_until(at: datetime) -> None:
    time.sleep(max(0.0, (at - datetime.now(timezone.utc)).total_seconds()))


def _minute_after(now: datetime, *, at_least: float) -> datetime:
    """The first whole minute that starts ``at_least`` seconds from ``now`` or later."""
    return (now + timedelta(seconds=at_least + 60)).replace(second=0, microsecond=0)


def _publish_once(stack_config, device_prefix: str) -> None:
    """One message (three readings) of a device of its own, by the real simulator on the platform's broker.

    The platform simulator's own arguments and environment (broker, credentials), with
    the last word on what differs: argparse keeps the last value of a repeated option.
    """
    sim = Simulator(stack_config)
    # The device is a user of the broker (TLS, its own password in the registry the simulator reads).
    broker, devices = Mosquitto(stack_config), device_ids(device_prefix, 1)
    broker.ensure_users(devices, DEVICE)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "collectors.simulate_sensors", *sim.args(), "--devices", "1", "--messages", "1",
             "--duration", "0", "--qos", "1", "--device-prefix", device_prefix],
            env=sim.env(), capture_output=True, text=True, timeout=120,
        )
    finally:
        broker.remove_users(devices)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"messages":1' in proc.stdout.replace(" ", ""), proc.stdout


def _readiness(client, run: dict) -> dict:
    return client.xcom(run["dag_id"], run["dag_run_id"], "wait_for_minute_files", "readiness")


def _seconds_after_close(text: str | None, minute: datetime) -> float:
    return (demo.parse_time(text) - (minute + timedelta(minutes=1))).total_seconds()


def _report(client, run: dict, minute: datetime, note: str) -> dict:
    """Print when the sensor and the run finished, seconds after the minute's close; return the readiness."""
    readiness = _readiness(client, run)
    sensor = next(ti for ti in client.task_instances(run["dag_id"], run["dag_run_id"])
                  if ti["task_id"] == "wait_for_minute_files")
    print(f"{run['dag_id']} {minute:%H:%M} ({note}): sensor done on {readiness['reason']} "
          f"{readiness['decided_after_minute_s']} s after the minute's close (grace ends at "
          f"{readiness['grace_after_minute_s']} s), sensor finished {_seconds_after_close(sensor['end_date'], minute):.1f} s, "
          f"run finished {_seconds_after_close(run['end_date'], minute):.1f} s after the close; "
          f"live {readiness['live']}, stopped {readiness['stopped']}, {readiness['files']} file(s)")
    return readiness


def _loaded_and_landed(landing, source: str, minute: datetime) -> tuple[int, int]:
    """(documents the minute's load records accepted, data rows in its files), per current file version."""
    return demo.batch_loaded(landing, source, minute), demo.landed_rows(landing, source, minute)[1]


#: Scheduled DAGs this test does not need: paused while it runs, so the minute DAGs get the machine
#: (every task is a process that parses its DAG file; a 2-core machine shared by a team falls behind).
#: ``sluice_reconcile`` is paused too until the collector is stopped (its check_collectors reports it).
NOT_NEEDED = ("sluice_anomaly", "sluice_kafka_lag", "sluice_sweep_late_files", "sluice_reconcile")


@pytest.fixture
def quiet(platform):
    """Pause :data:`NOT_NEEDED` for the test; afterwards unpause what was unpaused before."""
    was_running = [dag for dag in NOT_NEEDED if not platform.dag(dag)["is_paused"]]
    for dag in was_running:
        platform.pause(dag)
    yield
    for dag in was_running:
        platform.unpause(dag)


def _first_run_after(client, dag: str, after: datetime, timeout: float) -> tuple[datetime, dict]:
    """(minute, run): the earliest scheduled run of ``dag`` over a minute later than ``after``, once finished.

    The earliest the scheduler made, not a given minute: the running platform
    does not catch up, so a scheduler with four runs in flight when a minute
    ends skips that minute (on a loaded machine, often).
    """
    deadline = time.monotonic() + timeout
    while True:
        runs = sorted(
            ((demo.parse_time(r["data_interval_start"]), r)
             for r in client.dag_runs(dag, since=after - timedelta(minutes=2), run_type="scheduled", limit=200)
             if demo.parse_time(r["data_interval_start"]) > after),
            key=lambda pair: pair[0],
        )
        if runs and runs[0][1]["state"] in demo.FINISHED:
            return runs[0]
        assert time.monotonic() < deadline, f"no finished scheduled run of {dag} after {after:%H:%M} in {timeout:.0f} s"
        time.sleep(5)


@pytest.fixture(scope="module")
def landing(minio, stack_config):
    # Root's client on purpose: the test reads manifests, heartbeats and load records of every writer.
    return open_landing(landing_url(stack_config), s3_client=MinIO(stack_config).admin_client())


def _wait_live(landing, source: str, writer: str, timeout: float = 180) -> None:
    """Until ``writer`` beats: a collector just started writes its first heartbeat within seconds."""
    deadline = time.monotonic() + timeout
    while True:
        now = datetime.now(timezone.utc)
        beats = {hb.writer: hb for hb in read_heartbeats(landing, source)[0]}
        if writer in beats and beats[writer].alive(now):
            return
        assert time.monotonic() < deadline, f"no live heartbeat of {source} writer {writer}: {beats}"
        time.sleep(2)


def _intermittent_devices(stack_config, prefix: str, first: datetime, stop: threading.Event,
                          published: dict[datetime, str]) -> None:
    """From minute ``first`` on, each minute a new device publishes once (15 s in), until ``stop``.

    So every minute after ``first`` follows a minute with a device that published
    in it only, whichever minutes the scheduler runs.
    """
    at = first
    while not stop.is_set():
        _sleep_until(at + timedelta(seconds=15))
        if stop.is_set():
            return
        device_prefix = f"{prefix}-{at:%H%M}"
        _publish_once(stack_config, device_prefix)
        published[at] = f"{device_prefix}-0000"  # the simulator names its devices <prefix>-<n:04d>
        at += timedelta(minutes=1)


def test_an_intermittent_device_holds_back_nothing_and_a_stopped_collector_is_reported_and_loaded_after_the_grace(
    platform, quiet, stack_config, landing
):
    client = platform
    host_writer, sensor_writer = default_host(), MqttCollector.client_id
    _wait_live(landing, HOST, host_writer)
    _wait_live(landing, SENSOR, sensor_writer)

    # --- 1. A device that publishes in one minute only holds back nothing ------------------------
    first = _minute_after(datetime.now(timezone.utc), at_least=5)
    published: dict[datetime, str] = {}
    stop = threading.Event()
    publisher = threading.Thread(target=_intermittent_devices, daemon=True,
                                 args=(stack_config, f"intermittent-{uuid.uuid4().hex[:6]}", first, stop, published))
    publisher.start()
    try:
        nexts = {dag: _first_run_after(client, dag, first, timeout=1800) for dag in (SENSOR_DAG, HOST_DAG)}
    finally:
        stop.set()
    publisher.join(150)
    for dag, (minute, run) in nexts.items():
        before = minute - timedelta(minutes=1)
        assert before in published, f"no device published in {before:%H:%M} (the publisher's error is above): {published}"
        device = published[before]
        # The premise: the device is in the previous minute's manifest, and absent from this one's.
        prev = {m.writer: m for m in read_manifests(landing, SENSOR, before)[0]}
        assert prev[sensor_writer].rows.get(device) == 3, (device, prev[sensor_writer].rows)
        this = {m.writer: m for m in read_manifests(landing, SENSOR, minute)[0]}
        assert sensor_writer in this and device not in this[sensor_writer].rows, (device, this)
        assert run["state"] == "success", (dag, minute, run)
        readiness = _report(client, run, minute, f"the minute after {device} published once")
        # It went on because every live collector's manifest was there, not at the grace.
        assert readiness["reason"] == READY_MANIFESTS, (dag, minute, readiness)
        writer = sensor_writer if dag == SENSOR_DAG else host_writer
        assert writer in readiness["live"] and readiness["missing"] == [], (dag, minute, readiness)
        source = SENSOR if dag == SENSOR_DAG else HOST
        loaded, landed = _loaded_and_landed(landing, source, minute)
        assert loaded == landed > 0, f"{dag} {minute:%H:%M}: loaded {loaded} of {landed} landed rows"

    # --- 2. A collector that stops heartbeating --------------------------------------------------
    # Stopped 20 s into minute X: its last beat is then >= 40 s old when X ends, and 3 missed
    # 10 s beats make a writer stopped.
    host = HostCollector(stack_config)
    stopped_minute = _minute_after(datetime.now(timezone.utc), at_least=5 - 20)
    _sleep_until(stopped_minute + timedelta(seconds=20))
    stopped_at = datetime.now(timezone.utc)
    try:
        assert host.stop(), "the host collector was not running"
        print(f"host collector {host_writer} stopped at {stopped_at:%H:%M:%S} (minute {stopped_minute:%H:%M})")
        client.unpause("sluice_reconcile")  # its check_collectors is what reports a stopped collector
        # It landed its partial minute and that minute's manifest before it exited.
        partial = {m.writer: m for m in read_manifests(landing, HOST, stopped_minute)[0]}
        assert host_writer in partial and 0 < partial[host_writer].total_rows, partial

        # Reported: the reconcile DAG's check_collectors opens one incident for the writer.
        book = IncidentBook(landing, HEARTBEAT_BOOK)
        key = f"heartbeat:{HOST}:{host_writer}"
        deadline = time.monotonic() + 1200  # the reconcile DAG runs every minute; a loaded machine delays it
        while True:
            incident = book.load()[0].get(key)
            if incident is not None and demo.parse_time(incident.opened_at) >= stopped_at.replace(microsecond=0):
                break
            assert time.monotonic() < deadline, f"no heartbeat incident for {host_writer} in {HEARTBEAT_BOOK}"
            time.sleep(5)
        print(f"reported at {incident.opened_at}: {incident.title}: {incident.text}")
        assert incident.hop == "collector" and incident.source == HOST

        # Stopped until the first host run from X on decided (a new heartbeat would make the
        # collector a writer started after that minute, no longer named).
        minute, run = _first_run_after(client, HOST_DAG, stopped_minute - timedelta(minutes=1), timeout=1800)
    finally:
        # The rest of the session has its host collector again (a new heartbeat clears the incident).
        api.ensure(stack_config, [host.name])

    # --- 3. ... and its minutes went on after the grace, with the rows it landed ------------------
    assert run["state"] == "success", run
    readiness = _report(client, run, minute, f"its collector stopped at {stopped_at:%H:%M:%S}")
    assert readiness["reason"] == READY_GRACE, readiness
    assert (readiness["live"], readiness["missing"]) == ([], []), readiness
    assert host_writer in readiness["stopped"], readiness
    loaded, landed = _loaded_and_landed(landing, HOST, minute)
    # In X, the partial minute it landed when stopped; after X (when the scheduler skipped X), nothing.
    expected = partial[host_writer].total_rows if minute == stopped_minute else 0
    assert loaded == landed == expected, (minute, loaded, landed, expected)
    print(f"{HOST_DAG} {minute:%H:%M} loaded the {loaded} rows the stopped collector landed")
    _wait_live(landing, HOST, host_writer)
