"""The Sluice page in headless Chromium, served by a real ``airflow api-server`` behind its login.

The api-server runs in a session fixture with its own AIRFLOW_HOME, a
generated password for the simple auth manager, and the local stack's MinIO
and Elasticsearch. The data is made the way the system makes it: minute files
and manifests land, the batch path loads them, one fault per red minute,
the reconciliation and freshness checks store their documents, a dead-lettered
file is loaded. Screenshots are kept under ``runtime/artifacts/sluice-ui/``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from include import elasticsearch as es_mod
from include import pipeline, reconcile, sinks
from include.contract import minute_key
from include.landing import S3Landing
from include.manifests import MinuteManifest, write_manifest
from stack.config import LANDING_BUCKET, REPO_ROOT

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
ARTIFACTS = Path(os.environ.get("SLUICE_RUNTIME", REPO_ROOT / "runtime")) / "artifacts" / "sluice-ui"
HEADER = "timestamp,device,metric,value,tags\n"
USER = "operator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(device: str, minute: datetime, seconds: range, *, bad: str = "") -> str:
    lines = [f"{minute:%Y-%m-%dT%H:%M}:{s:02d}Z,{device},mqtt.home.pcroom,{20 + s / 10},type=temperature\n"
             for s in seconds]
    if bad:
        lines.append(f"{minute:%Y-%m-%dT%H:%M}:59Z,{device},mqtt.home.pcroom,{bad},type=temperature\n")
    return "".join(lines)


@pytest.fixture(scope="session")
def page_data(minio, elasticsearch):
    """Six recent sensor minutes: green, red (file deleted), red (ES docs deleted), healed, green with dead letters,
    and one held back (SLA breach); plus what the freshness check stored."""
    run = uuid.uuid4().hex[:8]
    landing = S3Landing(minio.admin_client(), LANDING_BUCKET, f"test-ui-{run}")  # root seeds and cleans up
    es = elasticsearch.admin(request_timeout=60)  # builds the page's data, injects faults; the page reads with its own key
    prefix = f"sluicetest-ui-{run}"
    sink = sinks.ElasticsearchSink(es, prefix=prefix)
    base = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=20)
    names = ("clean", "file_deleted", "docs_deleted", "healed", "deadletters", "held")
    m = {name: base + timedelta(minutes=i) for i, name in enumerate(names)}
    for name, minute in m.items():
        devices = {"ard-1": 20, "ard-2": 10}
        body = "".join(_rows(d, minute, range(n), bad="warm" if name == "deadletters" and d == "ard-2" else "")
                       for d, n in devices.items())
        rows = {d: n + (1 if name == "deadletters" and d == "ard-2" else 0) for d, n in devices.items()}
        landing.put(minute_key("sensor", minute, "mqtt-a"), (HEADER + body).encode())
        write_manifest(landing, MinuteManifest("sensor", "mqtt-a", minute, rows=rows, received=sum(rows.values())))
        if name != "held":  # the held minute's load is paused
            pipeline.load_files(landing, [sink], "sensor", pipeline.minute_files(landing, "sensor", minute), run_id="ui")
    es.indices.refresh(index=f"{prefix}-*")
    landing.delete(minute_key("sensor", m["file_deleted"], "mqtt-a"))
    for minute in (m["docs_deleted"], m["healed"]):
        hits = es.search(index=f"{prefix}-sensor-*", size=3, query={"range": {"@timestamp": {
            "gte": minute.isoformat(), "lt": (minute + timedelta(minutes=1)).isoformat()}}})["hits"]["hits"]
        for hit in hits:
            es.delete(index=hit["_index"], id=hit["_id"], refresh=True)
    reconcile.reconcile_minutes(landing, [("sensor", x) for x in m.values()], elasticsearch=es, es_prefix=prefix)
    # A replay heals one of the red minutes.
    pipeline.load_files(landing, [sink], "sensor", pipeline.minute_files(landing, "sensor", m["healed"]), run_id="replay")
    es.indices.refresh(index=f"{prefix}-*")
    reconcile.reconcile_minutes(landing, [("sensor", m["healed"])], elasticsearch=es, es_prefix=prefix)
    now = datetime.now(timezone.utc)
    checked = [r for x in m.values() if (r := reconcile.check_freshness(landing, "sensor", x, now=now))]
    reconcile.store_freshness(es, checked, prefix=prefix)
    yield {"landing": landing, "prefix": prefix, "minutes": m, "run": run}
    for info in list(landing.list("")):
        landing.delete(info.key)
    es_mod.delete_indices(es, f"{prefix}-*")
    es.close()


@pytest.fixture(scope="session")
def api_server(tmp_path_factory, page_data, es_connections):
    """``airflow api-server`` with the Sluice plugin, on a free port, behind the simple auth manager's login."""
    home = tmp_path_factory.mktemp("airflow-ui")
    password = secrets.token_urlsafe(16)
    (home / "passwords.json").write_text(json.dumps({USER: password}))
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "SLUICE_LANDING_URL": f"s3://{LANDING_BUCKET}/test-ui-{page_data['run']}",
        "SLUICE_ES_INDEX_PREFIX": page_data["prefix"],
        **es_connections(page_data["prefix"]),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    log = open(home / "api-server.log", "w")
    proc = subprocess.Popen([AIRFLOW, "api-server", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"airflow api-server exited {proc.returncode}:\n{(home / 'api-server.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/api/v2/monitor/health", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        time.sleep(1)
    else:
        raise AssertionError(f"airflow api-server did not answer within 180 s:\n{(home / 'api-server.log').read_text()[-3000:]}")
    yield {"url": url, "password": password}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The whole page, not only the viewport.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, min(height + 40, 4000)))
    driver.save_screenshot(str(ARTIFACTS / name))


@pytest.fixture(scope="session")
def logged_in(api_server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{api_server['url']}/sluice/")
    # Not logged in: the plugin sends the browser to Airflow's login form.
    WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.NAME, "username")))
    assert "/auth/login" in browser.current_url
    _shot(browser, "01-login.png")
    browser.find_element(By.NAME, "username").send_keys(USER)
    browser.find_element(By.NAME, "password").send_keys(api_server["password"])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: "/auth/login" not in d.current_url)
    return browser


def test_without_login_the_page_sends_to_airflows_login(api_server):
    resp = requests.get(f"{api_server['url']}/sluice/", allow_redirects=False, timeout=30)
    assert resp.status_code == 303 and "/auth/login" in resp.headers["location"]
    assert requests.get(f"{api_server['url']}/sluice/file?key=raw/x", allow_redirects=False, timeout=30).status_code == 303


def test_the_grid_shows_green_red_and_healed_minutes_and_the_freshness_chart_renders(logged_in, api_server, page_data):
    from selenium.webdriver.common.by import By

    browser = logged_in
    browser.get(f"{api_server['url']}/sluice/?hours=1")
    cells = {c.get_attribute("data-minute"): c for c in
             browser.find_elements(By.CSS_SELECTOR, "#reconcile-grid rect.cell[data-source=sensor]")}
    m = {k: f"{v:%Y-%m-%dT%H:%M:%S}Z" for k, v in page_data["minutes"].items()}
    status = {k: cells[v].get_attribute("data-status") for k, v in m.items()}
    assert status == {"clean": "green", "file_deleted": "red", "docs_deleted": "red", "healed": "green",
                      "deadletters": "green", "held": "red"}
    assert cells[m["healed"]].get_attribute("data-healed") == "true"
    assert cells[m["clean"]].get_attribute("data-healed") == "false"
    # Freshness: a line of points, the SLA line, and the held minute as a breach.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#freshness-chart circle.freshness-point")) == 6
    assert browser.find_elements(By.CSS_SELECTOR, "#freshness-chart #sla-line")
    breaches = [c.get_attribute("data-minute") for c in browser.find_elements(By.CSS_SELECTOR, "#freshness-chart circle.breach")]
    assert m["held"] in breaches
    assert browser.find_element(By.ID, "lag-status")
    _shot(browser, "02-overview.png")

    # A red cell links to its minute: the hop that disagrees, its DAG runs and files.
    red = browser.find_element(By.XPATH, f"//*[local-name()='a'][*[@data-minute='{m['docs_deleted']}']]")
    browser.get(api_server["url"] + red.get_dom_attribute("href"))
    assert browser.find_element(By.ID, "verdict").get_attribute("data-status") == "red"
    assert [e.get_attribute("data-hop") for e in browser.find_elements(By.CSS_SELECTOR, "li.mismatch")] == ["elasticsearch"]
    assert "elasticsearch holds 27, expected 30" in browser.find_element(By.ID, "verdict").text
    minute = page_data["minutes"]["docs_deleted"]
    assert browser.find_element(By.ID, "dag-run").get_attribute("href").endswith(
        "/dags/sluice_sensor_minute/runs/scheduled__" + minute.isoformat().replace(":", "%3A").replace("+", "%2B"))
    _shot(browser, "03-red-minute.png")
    browser.find_element(By.PARTIAL_LINK_TEXT, "raw:").click()
    assert "mqtt-a.csv" in browser.find_element(By.ID, "listing").text


def test_the_dead_letter_filter_keeps_only_the_chosen_device_and_reason(logged_in, api_server, page_data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser = logged_in
    browser.get(f"{api_server['url']}/sluice/?hours=1")
    rows = browser.find_elements(By.CSS_SELECTOR, "#deadletters tr.deadletter")
    assert [(r.get_attribute("data-device"), r.get_attribute("data-reason")) for r in rows] == [("ard-2", "column value")]
    assert "'warm' is not a number" in rows[0].text
    assert len(Select(browser.find_element(By.ID, "filter-device")).options) == 2  # every device + ard-2
    Select(browser.find_element(By.ID, "filter-device")).select_by_value("ard-2")
    browser.find_element(By.ID, "filter-apply").click()
    assert "device=ard-2" in browser.current_url
    assert len(browser.find_elements(By.CSS_SELECTOR, "#deadletters tr.deadletter")) == 1
    _shot(browser, "04-deadletters-filtered.png")
    browser.get(f"{api_server['url']}/sluice/?hours=1&device=ard-1")
    assert browser.find_elements(By.CSS_SELECTOR, "#deadletters tr.deadletter") == []
    assert browser.find_element(By.ID, "deadletters-empty")


def test_the_page_is_in_airflows_navigation(logged_in, api_server):
    browser = logged_in
    browser.get(f"{api_server['url']}/plugin/sluice")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    frame = WebDriverWait(browser, 60).until(lambda d: d.find_element(By.TAG_NAME, "iframe"))
    time.sleep(3)  # the UI draws its navigation around the frame
    _shot(browser, "05-airflow-nav.png")
    browser.switch_to.frame(frame)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "reconcile-grid"))
    browser.switch_to.default_content()
