"""Soak benchmark of the running platform, as users run it; prints figures, asserts nothing.

``python tests/benchmarks/soak.py --minutes M --devices N`` brings the platform
up (``python -m stack run`` does the same; what already runs is reused), sets
the simulator to N devices, and for M whole minutes measures:

* **batch freshness** per source, from the scheduler's runs of the minute DAGs
  (Airflow's REST API): minute end → run success, and minute end → queryable
  in both sinks (the later end of the ``load_elasticsearch`` and
  ``load_opentsdb`` tasks); p50 / p95 / max;
* **stream freshness** (reading time → searchable): a reader searches
  Elasticsearch once a second without forcing a refresh; a sensor document
  first found at time t with reading time r counts t − r (reading times are
  whole seconds, so this is up to 1 s high); p50 / p95;
* **failed or retried runs** of the Sluice DAGs in the window;
* **CPU and RSS per component**: each service's process tree (psutil), sampled
  every 5 s: mean CPU % of one core and peak RSS;
* beside them, the **reference measured in the same run**: the machine's load
  average and the CPU share the rest of the machine used (other users of a
  shared machine), since every figure depends on it.

``--scan`` runs the same window for growing device counts (``--scan-devices``)
and reports the largest count at which batch p95 freshness (run success) stays
≤ 15 s and the stream keeps up (the stream loader's lag at the end of the
window exceeds the lag at its start by less than one minute of messages). The
scan stops at the first count that misses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stack import api, demo  # noqa: E402
from stack.airflow_api import MINUTE_DAGS, SCHEDULED_DAGS, AirflowClient  # noqa: E402
from stack.config import StackConfig  # noqa: E402
from stack.services.elasticsearch import Elasticsearch  # noqa: E402
from stack.platform import bring_up, stream_lag  # noqa: E402
from stack.services.collectors import Simulator  # noqa: E402

P95_TARGET_S = 15.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass
class Usage:
    """CPU and RSS of each service's process tree, sampled in a thread."""

    config: StackConfig
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    others: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent()
        while not self.stop.wait(5):
            ours = 0.0
            for svc in api.services(self.config):
                pid = svc.pid()
                if pid is None:
                    continue
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    continue
                cpu, rss = 0.0, 0
                for p in tree:
                    p = procs.setdefault(p.pid, p)
                    try:
                        cpu += p.cpu_percent()
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                ours += cpu
                self.cpu.setdefault(svc.name, []).append(cpu)
                self.rss[svc.name] = max(self.rss.get(svc.name, 0), rss)
            total = psutil.cpu_percent() * psutil.cpu_count()
            self.others.append(max(0.0, total - ours))
            self.load.append(psutil.getloadavg()[0])


class StreamReader:
    """Searches Elasticsearch once a second; seconds from reading time to first found, per document."""

    def __init__(self, config: StackConfig) -> None:

        self.es = Elasticsearch(config).client("dashboards", request_timeout=30)  # read-only: it only searches
        self.latencies: list[float] = []
        self.seen: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        first = True  # what is searchable already at the start was not measured arriving: skip it
        while not self.stop.wait(1):
            now = time.time()
            try:
                resp = self.es.search(
                    index="sluice-sensor-*", size=500, sort=[{"@timestamp": "desc"}],
                    query={"range": {"@timestamp": {"gte": "now-60s"}}}, ignore_unavailable=True,
                )
            except Exception as exc:  # a slow or restarting Elasticsearch: skip this poll, say so
                print(f"  (stream reader: {type(exc).__name__}: {exc})", flush=True)
                continue
            for hit in resp["hits"]["hits"]:
                if hit["_id"] in self.seen:
                    continue
                self.seen.add(hit["_id"])
                if first:
                    continue
                ts = datetime.fromisoformat(hit["_source"]["@timestamp"].replace("Z", "+00:00")).timestamp()
                self.latencies.append(now - ts)
            first = False


def measure(config: StackConfig, *, devices: int, minutes: int) -> dict:
    sim = Simulator(config)
    if sim.devices() != devices:
        sim.set_devices(devices)
        sim.stop()
        api.ensure(config, [sim.name])
    client = AirflowClient(config)
    usage, reader = Usage(config), StreamReader(config)
    threads = [threading.Thread(target=usage.run, daemon=True), threading.Thread(target=reader.run, daemon=True)]
    for t in threads:
        t.start()
    first = datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    window = [first + timedelta(minutes=i) for i in range(minutes)]
    lag_start = stream_lag(config)
    print(f"devices={devices}: measuring minutes {window[0]:%H:%M}-{window[-1] + timedelta(minutes=1):%H:%M} UTC "
          f"(stream lag now {lag_start}) ...", flush=True)
    try:
        runs = demo.wait_for_runs(client, window, timeout=(window[-1] - datetime.now(timezone.utc)).total_seconds() + 900,
                                  out=lambda s: print(s, flush=True))
    finally:
        lag_end = stream_lag(config)
        for t in (usage, reader):
            t.stop.set()
        for t in threads:
            t.join(10)
    result: dict = {"devices": devices, "minutes": minutes, "lag_start": lag_start, "lag_end": lag_end,
                    "stream": reader.latencies, "usage": usage, "batch": {}, "failed": [], "retried": []}
    for (dag, minute), run in runs.items():
        source = dag.removeprefix("sluice_").removesuffix("_minute")
        minute_end = minute + timedelta(minutes=1)
        entry = result["batch"].setdefault(source, {"run": [], "queryable": []})
        if run["state"] != "success":
            result["failed"].append(f"{dag} {run['dag_run_id']} {run['state']}")
            continue
        entry["run"].append((demo.parse_time(run["end_date"]) - minute_end).total_seconds())
        tis = client.task_instances(dag, run["dag_run_id"])
        loads = [demo.parse_time(ti["end_date"]) for ti in tis if ti["task_id"].startswith("load_") and ti["end_date"]]
        if loads:
            entry["queryable"].append((max(loads) - minute_end).total_seconds())
        result["retried"] += [f"{dag} {run['dag_run_id']} {ti['task_id']} try {ti['try_number']}"
                              for ti in tis if (ti.get("try_number") or 1) > 1]
    since = window[0] - timedelta(minutes=1)
    for dag in SCHEDULED_DAGS:
        if dag in MINUTE_DAGS:
            continue
        for run in client.dag_runs(dag, since=since, state="failed"):
            result["failed"].append(f"{dag} {run['dag_run_id']} failed")
    return result


def report(r: dict) -> bool:
    """Print one window's figures; True when batch p95 ≤ 15 s for both sources and the stream kept up."""
    print(f"\n== {r['devices']} devices, {r['minutes']} minutes ==")
    print(f"{'source':<7} {'runs':>4}  {'run success after minute end p50/p95/max (s)':<46} "
          f"{'queryable in both sinks p50/p95/max (s)':<40}")
    ok = True
    for source, e in sorted(r["batch"].items()):
        run, q = e["run"], e["queryable"]
        ok &= bool(run) and pct(run, 95) <= P95_TARGET_S
        print(f"{source:<7} {len(run):>4}  {pct(run, 50):>6.1f} / {pct(run, 95):>6.1f} / {max(run, default=float('nan')):>6.1f}"
              f"{'':<24}{pct(q, 50):>6.1f} / {pct(q, 95):>6.1f} / {max(q, default=float('nan')):>6.1f}")
    s = r["stream"]
    keeps_up = r["lag_end"] <= r["lag_start"] + r["devices"] * 60
    ok &= keeps_up and bool(s)
    print(f"stream  reading time -> searchable p50 {pct(s, 50):.1f} s, p95 {pct(s, 95):.1f} s over {len(s)} documents; "
          f"loader lag {r['lag_start']} -> {r['lag_end']} messages ({'keeps up' if keeps_up else 'FALLS BEHIND'})")
    print(f"failed runs: {len(r['failed'])}" + "".join(f"\n  {f}" for f in r["failed"]))
    print(f"retried task tries: {len(r['retried'])}" + "".join(f"\n  {f}" for f in r["retried"][:20]))
    u = r["usage"]
    print(f"\n{'component':<22} {'CPU % of a core (mean)':>22} {'peak RSS MiB':>13}")
    for name, cpu in u.cpu.items():
        print(f"{name:<22} {statistics.fmean(cpu):>22.1f} {u.rss[name] / 2**20:>13.0f}")
    total = sum(statistics.fmean(c) for c in u.cpu.values())
    print(f"{'platform total':<22} {total:>22.1f} {sum(u.rss.values()) / 2**20:>13.0f}")
    print(f"reference, same run: the rest of the machine used {statistics.fmean(u.others or [0]):.0f} % of a core "
          f"(of {psutil.cpu_count() * 100} %), load average {statistics.fmean(u.load or [0]):.1f} on "
          f"{psutil.cpu_count()} cores")
    print(f"verdict: batch p95 <= {P95_TARGET_S:.0f} s and stream keeps up: {'yes' if ok else 'no'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=5, help="whole minutes measured per window (default 5)")
    parser.add_argument("--devices", type=int, default=5, help="simulated devices (default 5)")
    parser.add_argument("--scan", action="store_true", help="grow the device count until a target is missed")
    parser.add_argument("--scan-devices", default="5,25,100,250,500,1000",
                        help="device counts --scan tries, in order (default 5,25,100,250,500,1000)")
    args = parser.parse_args(argv)
    config = StackConfig.from_env()
    print("bringing the platform up (what runs is reused) ...", flush=True)
    bring_up(config, devices=args.devices)
    if not args.scan:
        report(measure(config, devices=args.devices, minutes=args.minutes))
        return 0
    best = None
    for n in [int(x) for x in args.scan_devices.split(",")]:
        if report(measure(config, devices=n, minutes=args.minutes)):
            best = n
        else:
            break
    print(f"\nscan: largest device count with batch p95 <= {P95_TARGET_S:.0f} s and the stream keeping up: "
          f"{best if best is not None else 'none of ' + args.scan_devices} (windows of {args.minutes} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
