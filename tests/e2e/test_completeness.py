"""Minute completeness under the real scheduler (issue 12's first test).

The platform as ``make run`` brings it up (session fixture ``platform``): the
scheduler, dag-processor and api-server run the minute DAGs every minute, the
supervised host sampler and MQTT collector land the minute files and write
their manifests and heartbeats, the simulator publishes. On top of that:

1. A device that publishes in minute M only (one message from the real
   simulator, a device of its own) lands in M through the platform's MQTT
   collector. The runs of M+1 of both minute DAGs must go on on the
   collectors' manifests, not on the grace (the old sensor waited for every
   device of the previous minute: 65-67 s after the minute instead of 10-15 s).
   The evidence is what the sensor decided (its XCom ``readiness``), never a
   wall-clock bound; the seconds after the minute's close are printed.
2. The host collector is stopped 20 s into X = M+2 (SIGTERM under its supervisor:
   it lands its partial minute and that minute's manifest, and heartbeats no
   more). ``sluice_reconcile``'s ``check_collectors`` opens an incident naming
   the writer, and the host run of X goes on at the grace (no live writer says
   the minute is whole) naming the writer as stopped, loading exactly the rows
   it did land. The collector is started again at the end.

Room first: the running platform does not catch up, so a scheduler with four
runs in flight when a minute ends skips that minute (always, on a loaded
machine). The test pauses the minute DAGs until their runs in flight finish
and the scheduled DAGs it does not need for its duration, and fails saying so
if the scheduler still skipped one of its minutes.

The grace is the platform's ``SLUICE_GRACE_SECONDS`` (default 45 s, read by
the minute DAGs from the scheduler's environment); the test reads the grace
each run used from its readiness, so it holds for any grace that is longer
than a minute's normal close (~10 s). About 5 minutes once the platform runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from collectors.config import default_host
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
    proc = subprocess.run(
        [sys.executable, "-m", "collectors.simulate_sensors", *sim.args(), "--devices", "1", "--messages", "1",
         "--duration", "0", "--qos", "1", "--device-prefix", device_prefix,
         "--client-id", f"sluice-test-{device_prefix}"],
        env=sim.env(), capture_output=True, text=True, timeout=120,
    )
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


def _room_for_minutes(client, timeout: float = 1500) -> None:
    """Pause the minute DAGs until no run of theirs is in flight, then unpause them.

    With ``SLUICE_CATCHUP=false`` (the running platform) a scheduler that has
    ``max_active_runs`` (4) runs in flight when a minute ends skips that
    minute, and on a loaded machine it always has: the minutes this test waits
    for need room. (Minutes not run meanwhile are the late-file sweep's.)
    """
    for dag in MINUTE_DAGS:
        client.pause(dag)
    try:
        deadline = time.monotonic() + timeout
        while True:
            active = {dag: sum(len(client.dag_runs(dag, state=state, limit=20)) for state in ("queued", "running"))
                      for dag in MINUTE_DAGS}
            if not any(active.values()):
                return
            assert time.monotonic() < deadline, f"minute DAG runs still in flight after {timeout:.0f} s: {active}"
            print(f"  the minute DAGs are paused until their runs in flight finish: {active}")
            time.sleep(15)
    finally:
        for dag in MINUTE_DAGS:
            client.unpause(dag)


def _finished(client, minutes: list[datetime], timeout: float) -> dict:
    """(dag_id, minute) -> the scheduled run, once every minute DAG's run of ``minutes`` finished.

    Fails at once, saying so, when the scheduler skipped one of the minutes (a
    later scheduled run exists and this one does not): the machine was too
    loaded for the platform to keep up.
    """
    deadline = time.monotonic() + timeout
    while True:
        runs = {(dag, m): r for dag in MINUTE_DAGS for m, r in demo.minute_runs(client, dag, minutes).items()}
        if len(runs) == len(MINUTE_DAGS) * len(minutes) and all(r["state"] in demo.FINISHED for r in runs.values()):
            return runs
        for dag in MINUTE_DAGS:
            newest = client.dag_runs(dag, run_type="scheduled", limit=1)
            latest = demo.parse_time(newest[0]["data_interval_start"]) if newest else None
            skipped = [m for m in minutes if (dag, m) not in runs and latest is not None and latest > m]
            assert not skipped, (f"the scheduler skipped {dag} {', '.join(f'{m:%H:%M}' for m in skipped)} "
                                 f"(catchup off, runs in flight): the platform could not keep up on this machine")
        assert time.monotonic() < deadline, f"runs of {[f'{m:%H:%M}' for m in minutes]} not finished: {runs}"
        time.sleep(5)


@pytest.fixture(scope="module")
def landing(minio, stack_config):
    return open_landing(landing_url(stack_config), s3_client=MinIO(stack_config).client())


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


def test_an_intermittent_device_holds_back_nothing_and_a_stopped_collector_is_reported_and_loaded_after_the_grace(
    platform, quiet, stack_config, landing
):
    client = platform
    host_writer, sensor_writer = default_host(), MqttCollector.client_id
    _wait_live(landing, HOST, host_writer)
    _wait_live(landing, SENSOR, sensor_writer)
    _room_for_minutes(client)

    # Minute M: a device of its own publishes once. M+1: it is silent. X = M+2: the host
    # collector stops 20 s into it (its last beat is then >= 40 s old when X ends, and 3
    # missed 10 s beats make a writer stopped). At most M-1, M, M+1 and X are in flight, so
    # the scheduler (4 runs at most) skips none of them.
    prefix = f"intermittent-{uuid.uuid4().hex[:6]}"
    device = f"{prefix}-0000"  # the simulator names its devices <prefix>-<n:04d>
    minute = _minute_after(datetime.now(timezone.utc), at_least=5)
    following, stopped_minute = minute + timedelta(minutes=1), minute + timedelta(minutes=2)
    _sleep_until(minute + timedelta(seconds=15))
    _publish_once(stack_config, prefix)
    print(f"\n{device} published once in {minute:%H:%M}")

    host = HostCollector(stack_config)
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

        # The host collector stays stopped until the runs of X decided (a new heartbeat would make
        # it a writer started after X, no longer named).
        runs = _finished(client, [minute, following, stopped_minute], timeout=1800)
    finally:
        # The rest of the session has its host collector again (a new heartbeat clears the incident).
        api.ensure(stack_config, [host.name])

    # --- 1. The device that published in minute M only held back nothing -------------------------
    # The premise: the device is in M's manifest, and absent from M+1's.
    manifests = {m.writer: m for m in read_manifests(landing, SENSOR, minute)[0]}
    assert manifests[sensor_writer].rows.get(device) == 3, manifests[sensor_writer].rows
    nxt = {m.writer: m for m in read_manifests(landing, SENSOR, following)[0]}
    assert sensor_writer in nxt and device not in nxt[sensor_writer].rows, nxt
    for m in (minute, following):
        for dag in (SENSOR_DAG, HOST_DAG):
            run = runs[(dag, m)]
            assert run["run_type"] == "scheduled" and run["state"] == "success", (dag, m, run)
            note = "the minute the device published" if m == minute else "the minute after the intermittent device"
            readiness = _report(client, run, m, note)
            # Both runs went on because every live collector's manifest was there, not at the grace.
            assert readiness["reason"] == READY_MANIFESTS, (dag, m, readiness)
            writer = sensor_writer if dag == SENSOR_DAG else host_writer
            assert writer in readiness["live"] and readiness["missing"] == [], (dag, m, readiness)
            source = SENSOR if dag == SENSOR_DAG else HOST
            loaded, landed = _loaded_and_landed(landing, source, m)
            assert loaded == landed > 0, f"{dag} {m:%H:%M}: loaded {loaded} of {landed} landed rows"

    # --- 2. The stopped collector's minute went on after the grace, with the rows it landed -------
    host_run, sensor_run = runs[(HOST_DAG, stopped_minute)], runs[(SENSOR_DAG, stopped_minute)]
    assert host_run["state"] == "success", host_run
    readiness = _report(client, host_run, stopped_minute, "its collector stopped 20 s into it")
    assert readiness["reason"] == READY_GRACE, readiness
    assert (readiness["live"], readiness["missing"]) == ([], []), readiness
    assert host_writer in readiness["stopped"], readiness
    loaded, landed = _loaded_and_landed(landing, HOST, stopped_minute)
    assert loaded == landed == partial[host_writer].total_rows, (loaded, landed, partial[host_writer].rows)
    print(f"{HOST_DAG} {stopped_minute:%H:%M} loaded the {loaded} rows the stopped collector landed")
    # The sensor collector kept beating: its run of the same minute went on on its manifest.
    assert sensor_run["state"] == "success", sensor_run
    other = _report(client, sensor_run, stopped_minute, "the same minute, its collector beating")
    assert other["reason"] == READY_MANIFESTS, other
    _wait_live(landing, HOST, host_writer)
