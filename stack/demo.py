"""The main job on the local stack: collect for a few minutes, run the DAGs, show the counts.

``python -m stack demo`` (``make demo``):

1. brings the stack up (what is not running yet);
2. runs the host sampler, the MQTT collector, the stream loader and the sensor
   simulator for ``--minutes`` whole minutes (each in its own process group);
3. waits for the stream loader to reach zero lag, then stops the collectors
   (SIGTERM: each flushes its partial minute);
4. runs the per-minute DAGs with ``airflow dags test`` over those minutes and
   one check of the lag DAG;
5. prints, per minute and source, the readings landed in the landing zone, the
   documents in Elasticsearch and the datapoints in OpenTSDB, and where to look.

Both paths load the same readings: the stream loader continuously, the DAGs
per minute. Their document ids are the same, so every reading is stored once
and the counts match.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from stack import api
from stack.config import LANDING_BUCKET, REPO_ROOT, StackConfig
from stack.connections import airflow_env
from stack.services.minio import MinIO

STREAM_GROUP = "sluice-stream-loader"
SINKS = "elasticsearch,opentsdb"


class Demo:
    def __init__(self, config: StackConfig, *, minutes: int, devices: int) -> None:
        self.config = config
        self.minutes = minutes
        self.devices = devices
        self.dir = config.runtime / "demo"
        self.procs: dict[str, subprocess.Popen] = {}

    # -- processes ---------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        creds = MinIO(self.config).credentials()
        return {
            **os.environ,
            **airflow_env(self.config),
            "SLUICE_SINKS": SINKS,
            "SLUICE_S3_ACCESS_KEY": creds["access_key"],
            "SLUICE_S3_SECRET_KEY": creds["secret_key"],
        }

    def _spawn(self, name: str, module: str, *args: str) -> None:
        log = (self.dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=self._env(),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def _stop(self, name: str, timeout: float = 60) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start_collectors(self) -> None:
        c = self.config
        kafka = c.kafka_bootstrap
        landing = [
            "--landing-url", f"s3://{LANDING_BUCKET}", "--s3-endpoint-url", c.url("minio"),
            "--metrics-port", "0",
        ]
        self._spawn("host", "collectors.host", *landing, "--state-dir", str(self.dir / "host"),
                    "--kafka-bootstrap", kafka)
        self._spawn("mqtt", "collectors.mqtt", *landing, "--state-dir", str(self.dir / "mqtt"),
                    "--mqtt-port", str(c.ports["mosquitto"]), "--mqtt-client-id", "sluice-demo-collector",
                    "--mqtt-topics", "sluice/sensors/+", "--kafka-bootstrap", kafka)
        self._spawn("stream", "collectors.stream", "--kafka-bootstrap", kafka, "--kafka-group", STREAM_GROUP,
                    "--sinks", SINKS, "--elasticsearch-url", c.url("elasticsearch"),
                    "--opentsdb-url", c.url("opentsdb"), "--metrics-port", "0")
        # Give the MQTT collector its subscription before the devices publish.
        self._wait_log("mqtt", "subscribed to", 60)
        self._spawn("simulator", "collectors.simulate_sensors", "--mqtt-port", str(c.ports["mosquitto"]),
                    "--devices", str(self.devices), "--rate", "1", "--duration", "0",
                    "--messages", str(10**9), "--client-id", "sluice-demo-simulator", "--device-prefix", "demo")

    def _wait_log(self, name: str, text: str, timeout: float) -> None:
        path = self.dir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in path.read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not log {text!r} within {timeout:.0f} s; see {path}")

    def stop_all(self) -> None:
        for name in ("simulator", "mqtt", "host", "stream"):
            self._stop(name)

    def stream_offsets(self) -> list:
        """Committed and log-end offsets of the stream loader's group, per partition."""
        from confluent_kafka.admin import AdminClient

        from include.kafka import HOST_METRICS, SENSORS_RAW
        from include.kafka_lag import fetch_offsets

        admin = AdminClient({"bootstrap.servers": self.config.kafka_bootstrap})
        return fetch_offsets(admin, STREAM_GROUP, topics=[SENSORS_RAW, HOST_METRICS])

    def wait_for_stream_loader(self, timeout: float = 120) -> int:
        """Seconds waited until the stream loader's lag is zero on both topics."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if sum(o.lag for o in self.stream_offsets()) == 0:
                return int(time.monotonic() - start)
            time.sleep(1)
        raise RuntimeError(f"the stream loader still has lag after {timeout:.0f} s; see {self.dir / 'stream.log'}")

    # -- Airflow -----------------------------------------------------------------------
    def airflow(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**self._env(), "SLUICE_TASK_RETRIES": "0", "SLUICE_GRACE_SECONDS": "0"}
        airflow = str(Path(sys.executable).with_name("airflow"))
        proc = subprocess.run([airflow, *args], env=env, capture_output=True, text=True)
        with (self.dir / "airflow.log").open("a") as fh:
            fh.write(proc.stdout + proc.stderr)
        if check and proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} exited {proc.returncode}; see {self.dir / 'airflow.log'}")
        return proc

    # -- counting ----------------------------------------------------------------------
    def landed_rows(self, landing, source: str, minute: datetime) -> tuple[int, int]:
        """(files, data rows) landed for the minute."""
        from include.pipeline import minute_files

        files = minute_files(landing, source, minute)
        rows = sum(max(landing.get(f.key).count(b"\n") - 1, 0) for f in files)
        return len(files), rows

    def batch_loaded(self, landing, source: str, minute: datetime) -> int:
        """Documents the minute DAG recorded as loaded for the current version of each file."""
        from include import contract, loads
        from include.pipeline import minute_files

        total = 0
        for f in minute_files(landing, source, minute):
            try:
                total += loads.LoadRecord.from_json(landing.get(contract.loaded_key(f.key, f.etag))).accepted
            except KeyError:  # no load record: the DAG did not load this version
                pass
        return total

    def es_docs(self, es, source: str, minute: datetime) -> int:
        end = minute + timedelta(minutes=1)
        query = {"range": {"@timestamp": {"gte": minute.isoformat(), "lt": end.isoformat()}}}
        return es.count(index=f"sluice-{source}-*", query=query, ignore_unavailable=True)["count"]

    def tsdb_points(self, tsdb, source: str, minute: datetime) -> int:
        from include.schemas import SENSOR_METRIC

        start = int(minute.timestamp())
        metric = "host.cpu_usage_percent" if source == "host" else SENSOR_METRIC
        series = tsdb.query(metric, start=start, end=start + 59)
        return sum(len(s["dps"]) for s in series)


def run(config: StackConfig, *, minutes: int = 3, devices: int = 5) -> int:
    from include import elasticsearch as es_mod
    from include.landing import open_landing
    from include.opentsdb import OpenTSDBClient

    import logging

    logging.getLogger("elastic_transport").setLevel(logging.WARNING)  # one INFO line per request otherwise
    demo = Demo(config, minutes=minutes, devices=devices)
    demo.dir.mkdir(parents=True, exist_ok=True)
    print("1/5 local stack: starting what is not running ...", flush=True)
    api.ensure(config)
    demo.airflow("db", "migrate")

    start = datetime.now(timezone.utc)
    first = start.replace(second=0, microsecond=0)
    last = first + timedelta(minutes=minutes)  # the last whole minute
    end = last + timedelta(minutes=1, seconds=8)  # its files closed and landed
    print(f"2/5 collecting: host sampler, MQTT collector, stream loader and {devices} simulated devices "
          f"until {end:%H:%M:%S} UTC (logs in {demo.dir}) ...", flush=True)
    try:
        demo.start_collectors()
        while datetime.now(timezone.utc) < end:
            dead = [n for n, p in demo.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited early; see {demo.dir}/<name>.log")
            time.sleep(1)
        demo._stop("simulator")
        waited = demo.wait_for_stream_loader()
        print(f"3/5 stream loader caught up (lag 0 after {waited} s); stopping the collectors ...", flush=True)
    finally:
        demo.stop_all()

    minute_list = [first + timedelta(minutes=i) for i in range(minutes + 2)]
    print(f"4/5 Airflow: sluice_host_minute and sluice_sensor_minute for {len(minute_list)} minutes, "
          "then sluice_kafka_lag ...", flush=True)
    for minute in minute_list:
        for source in ("host", "sensor"):
            # A manual run's data interval is the last whole one before its date:
            # the run dated M+1 loads minute M.
            demo.airflow("dags", "test", f"sluice_{source}_minute", (minute + timedelta(minutes=1)).isoformat())
    lag = demo.airflow("dags", "test", "sluice_kafka_lag", datetime.now(timezone.utc).isoformat(), check=False)
    lag_line = next((line for line in (lag.stdout + lag.stderr).splitlines() if "DagRun Finished" in line), "")

    env = demo._env()
    landing = open_landing(env["SLUICE_LANDING_URL"], s3_client=MinIO(config).client())
    es = es_mod.connect(config.url("elasticsearch"))
    es.indices.refresh(index="sluice-*")
    print("5/5 per minute and source (the first and last minutes are partial: collection started and stopped in them)\n")
    print(f"{'minute (UTC)':<17} {'source':<7} {'files':>5} {'landed rows':>11} {'DAG loaded':>10} "
          f"{'ES docs':>8} {'OpenTSDB':>9}  match")
    all_match = True
    with OpenTSDBClient(config.url("opentsdb")) as tsdb:
        for minute in minute_list:
            for source in ("host", "sensor"):
                files, rows = demo.landed_rows(landing, source, minute)
                loaded = demo.batch_loaded(landing, source, minute)
                docs = demo.es_docs(es, source, minute)
                points = demo.tsdb_points(tsdb, source, minute)
                ok = rows == loaded == docs == points
                all_match &= ok
                print(f"{minute:%Y-%m-%d %H:%M} {source:<7} {files:>5} {rows:>11} {loaded:>10} {docs:>8} "
                      f"{points:>9}  {'yes' if ok else 'NO'}")
    es_url = config.url("elasticsearch")
    print(f"\nKafka consumer group {STREAM_GROUP} (the stream path):")
    print(f"  {'topic':<22} {'partition':>9} {'committed':>10} {'log end':>8} {'lag':>5}")
    for o in sorted(demo.stream_offsets(), key=lambda o: (o.topic, o.partition)):
        print(f"  {o.topic:<22} {o.partition:>9} {o.committed if o.committed is not None else '-':>10} "
              f"{o.log_end:>8} {o.lag:>5}")
    print(f"""
lag DAG sluice_kafka_lag: {lag_line.split('state=')[1].split(',')[0] if 'state=' in lag_line else 'see ' + str(demo.dir / 'airflow.log')}
          (a failed run means STOP/STALL or lag above the threshold; lag and status are in
          OpenTSDB kafka.consumer.lag{{group=...}} and Elasticsearch sluice-lag-*)

Where to look:
  Elasticsearch  curl -s '{es_url}/sluice-sensor-*/_search?size=3&sort=@timestamp:desc' | python3 -m json.tool
                 curl -s '{es_url}/sluice-host-*/_count'
  OpenTSDB       {config.url('opentsdb')}/api/query?start=1h-ago&m=none:mqtt.home.pcroom{{type=temperature}}
  Landing zone   MinIO {config.url('minio')} bucket {LANDING_BUCKET} (raw/, loaded/, deadletter/), keys in
                 runtime/minio/credentials.json
  Airflow UI     . .venv/bin/activate && airflow standalone   (then http://localhost:8080; Ctrl-C stops
                 it, then `kill -- -<pid>` ends the workers it leaves in its process group)
  Collector logs {demo.dir}/*.log
""")
    print("every minute matches: landed = loaded by the DAG = in Elasticsearch = in OpenTSDB\n"
          "(the stream loader had loaded the same readings first; equal ids stored them once)" if all_match
          else "some minutes differ: see the table and the logs above")
    return 0 if all_match else 1

