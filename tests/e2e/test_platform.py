"""The platform as ``make run`` brings it up, checked the way its users see it.

One bring-up for the module (the session fixture ``platform``): the real
scheduler runs the minute DAGs every minute; run states come back through
Airflow's REST API with the generated admin password; a browser logs into the
UI; a collector is killed with SIGKILL under its supervisor; and last,
``python -m stack down`` must leave no process and no port behind (after which
the test brings back what was running, for the rest of the session).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import orjson
import psutil
import pytest

from include.landing import open_landing
from include.opentsdb import OpenTSDBClient
from stack import api, demo
from stack.airflow_api import MINUTE_DAGS
from stack.connections import landing_url
from stack.service import port_open
from stack.services.collectors import MqttCollector
from stack.services.elasticsearch import Elasticsearch
from stack.services.minio import MinIO
from stack.services.mosquitto import Mosquitto, device_topic

# A loaded machine can take minutes per scheduled run; the three-minute wait has its own deadline.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def _next_minute(after: datetime | None = None) -> datetime:
    now = after or datetime.now(timezone.utc)
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


@pytest.fixture(scope="module")
def landing(minio, stack_config):
    return open_landing(landing_url(stack_config), s3_client=MinIO(stack_config).admin_client())  # root: the test only inspects


@pytest.fixture(scope="module")
def three_minutes(airflow_api, start_platform):
    """The scheduler's finished runs of both minute DAGs over three consecutive whole minutes."""
    start_platform()
    first = _next_minute()
    minutes = [first + timedelta(minutes=i) for i in range(3)]
    runs = demo.wait_for_runs(airflow_api, minutes,
                              timeout=(minutes[-1] - datetime.now(timezone.utc)).total_seconds() + 600)
    return minutes, runs


def test_scheduled_minutes_load_exact_counts_into_both_sinks(three_minutes, landing, stack_config):
    minutes, runs = three_minutes
    es = Elasticsearch(stack_config).admin(request_timeout=60)  # the test's own refresh and counts
    es.indices.refresh(index="sluice-*")
    rows_by = {}
    with OpenTSDBClient(stack_config.url("opentsdb")) as tsdb:
        for minute in minutes:
            for dag in MINUTE_DAGS:
                source = dag.removeprefix("sluice_").removesuffix("_minute")
                run = runs[(dag, minute)]
                assert run["run_type"] == "scheduled" and run["state"] == "success", (dag, minute, run)
                _, rows = demo.landed_rows(landing, source, minute)
                counts = (rows, demo.batch_loaded(landing, source, minute), demo.es_docs(es, source, minute),
                          demo.tsdb_points(tsdb, source, minute))
                rows_by[(source, minute)] = counts
    for key, (rows, loaded, docs, points) in rows_by.items():
        assert rows > 0, f"nothing landed for {key}"
        assert (loaded, docs, points) == (rows, rows, rows), f"{key}: landed, DAG loaded, ES, OpenTSDB = {rows_by[key]}"


def test_status_shows_every_component_and_the_pipeline(three_minutes, stack_config):
    import subprocess
    import sys

    from stack.config import REPO_ROOT

    proc = subprocess.run([sys.executable, "-m", "stack", "status"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for svc in api.services(stack_config):
        line = next(line for line in out.splitlines() if line.startswith(svc.name + " "))
        assert " running " in line, line
    for source in ("host", "sensor"):
        line = next(line for line in out.splitlines() if f"last minute loaded  {source}" in line)
        assert "UTC" in line, line  # a minute, not "none" or "unavailable"
    assert "stream loader lag   " in out and "messages (group sluice-stream-loader)" in out, out
    assert "failed DAG runs     " in out and "in the last hour" in out, out


def test_browser_logs_in_and_sees_successful_scheduled_runs(three_minutes, platform, stack_config):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    artefacts = stack_config.runtime / "artifacts"
    artefacts.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=ChromeService("/usr/bin/chromedriver"), options=options)
    try:
        wait = WebDriverWait(driver, 90)
        driver.get(f"{platform.base}/dags?search=sluice")
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(platform.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        for dag in MINUTE_DAGS:
            wait.until(ec.presence_of_element_located((By.XPATH, f"//a[contains(., '{dag}')]")))
        time.sleep(3)  # the runs' bars render after the list
        shot = artefacts / "airflow-ui-dags.png"
        driver.save_screenshot(str(shot))
        print(f"\nscreenshot of the DAG list: {shot}")
        # The runs page of a minute DAG, filtered to successful scheduled runs.
        driver.get(f"{platform.base}/dags/{MINUTE_DAGS[1]}/runs?state=success&run_type=scheduled")
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[contains(text(), 'scheduled__')]")))
        time.sleep(2)
        runs_shot = artefacts / "airflow-ui-sensor-runs.png"
        driver.save_screenshot(str(runs_shot))
        print(f"screenshot of {MINUTE_DAGS[1]}'s successful scheduled runs: {runs_shot}")
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "scheduled__" in text and "success" in text.lower(), text[:2000]
    finally:
        driver.quit()


def _count_published(stack_config, stop: threading.Event, counts: dict, ready: threading.Event) -> None:
    """Count what the simulator publishes: distinct (device, type, timestamp) per minute."""
    from mqtt_helpers import MqttUsers

    seen: set = set()

    def on_message(client, userdata, msg):
        device = msg.topic.rsplit("/", 1)[1]
        for reading in orjson.loads(msg.payload):
            key = (device, reading["tags"]["type"], reading["timestamp"])
            if key not in seen:
                seen.add(key)
                minute = datetime.fromtimestamp(int(reading["timestamp"]) // 60 * 60, timezone.utc)
                counts[minute] = counts.get(minute, 0) + 1

    # Only collector users may read sensor topics: the counter is one, for this test only.
    broker = Mosquitto(stack_config)
    mq = MqttUsers(broker, stack_config.runtime)
    name = f"sluice-test-counter-{os.getpid()}"
    mq.collector(name)
    client = mq.client(name)
    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    client.on_connect = lambda c, *a: c.subscribe(device_topic("+"), qos=1)
    client.connect(stack_config.host, mq.port)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()
    mq.close()


def test_sigkilled_collector_is_restarted_and_its_minute_files_reach_the_full_count(platform, stack_config, landing):
    collector = MqttCollector(stack_config)
    before = collector.restarts()
    counts: dict[datetime, int] = {}
    stop, ready = threading.Event(), threading.Event()
    counter = threading.Thread(target=_count_published, args=(stack_config, stop, counts, ready), daemon=True)
    counter.start()
    assert ready.wait(30), "the counting subscriber did not subscribe"
    minute = _next_minute()
    try:
        # Kill mid-minute, with readings received but not yet landed.
        time.sleep(max(0.0, (minute + timedelta(seconds=20) - datetime.now(timezone.utc)).total_seconds()))
        victim = collector.child_pid()
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if collector.restarts() > before and collector.child_pid() not in (None, victim) and collector.health()[0]:
                break
            time.sleep(1)
        assert collector.restarts() == before + 1, collector.supervisor_state()
        assert collector.health()[0], collector.health()[1]
        # Both the minute of the kill and the next one, once closed, hold every reading published.
        end = minute + timedelta(minutes=2, seconds=5)
        time.sleep(max(0.0, (end - datetime.now(timezone.utc)).total_seconds()))
    finally:
        stop.set()
        counter.join(10)
    for m in (minute, minute + timedelta(minutes=1)):
        deadline = time.monotonic() + 180
        while True:
            _, rows = demo.landed_rows(landing, "sensor", m)
            if rows >= counts.get(m, 0) or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert counts.get(m, 0) > 0
        assert rows == counts[m], f"minute {m:%H:%M}: {rows} rows landed, {counts[m]} readings published"


def test_down_leaves_no_process_and_no_port(platform, stack_config, local_stack):
    services = api.services(stack_config)
    running = [svc.name for svc in services if svc.pid() is not None]
    tree: list[psutil.Process] = []
    for svc in services:
        if (pid := svc.pid()) is not None:
            proc = psutil.Process(pid)
            tree += [proc, *proc.children(recursive=True)]
    assert any("airflow" in " ".join(p.cmdline()) for p in tree)
    airflow_home = str(stack_config.runtime / "airflow")
    try:
        api.down(stack_config)
        left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(p.pid, p.cmdline()[:4]) for p in left]
        # Also processes that left the tree (a task runner that re-parented itself): none with our AIRFLOW_HOME.
        # (This test and the shells above it have the same AIRFLOW_HOME: they are not Airflow processes.)
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        strays = []
        for p in psutil.process_iter(["pid", "environ", "cmdline"]):
            try:
                if (p.pid not in mine and (p.info["environ"] or {}).get("AIRFLOW_HOME") == airflow_home
                        and "airflow" in " ".join(p.info["cmdline"] or [])):
                    strays.append((p.pid, p.info["cmdline"][:4]))
            except psutil.Error:
                continue
        assert not strays, strays
        bound = [f"{n}={port}" for n, port in stack_config.ports.items() if port_open(stack_config.host, port)]
        assert not bound, bound
    finally:
        # The rest of the session finds the servers and Airflow it had, with the DAGs paused and
        # no collectors or simulator (their readings would meet later tests on the shared broker);
        # the ``platform`` fixture starts those again for a test that wants them.
        from stack.airflow_api import SCHEDULED_DAGS, AirflowClient
        from stack.services import COLLECTORS

        collectors = {cls.name for cls in COLLECTORS}
        api.ensure(stack_config, [name for name in running if name not in collectors])
        client = AirflowClient(stack_config)
        for dag in SCHEDULED_DAGS:
            client.pause(dag)
