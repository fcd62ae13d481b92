"""Every benchmark on the local stack in one go: Sluice's figure beside its reference, measured in the same run.

    .venv/bin/python tests/benchmarks/run_all.py            # the full run (about 15 minutes)
    .venv/bin/python tests/benchmarks/run_all.py --quick    # a short run (about 4 minutes): smaller counts, no backfill
    .venv/bin/python tests/benchmarks/run_all.py --only opentsdb --only stream

One row per hop; each reference is measured by the same script in the same
run, right beside (or alternating with) Sluice's figure, because the machine
is shared and two figures from different minutes do not compare:

========================  ===============================================  ==============================================
hop                       Sluice                                           reference
========================  ===============================================  ==============================================
mqtt                      MQTT collector draining queued QoS 1 messages    a bare paho subscriber draining the same
                          (journal-gated acks, both outputs); then two     (``collectors_bench.bench_drain``)
                          collectors of one shared subscription
opentsdb                  ``OpenTSDBClient.put``, every point accounted    plain ``/api/put?sync`` batches, same batch
                                                                           size, same concurrency (``opentsdb_load``)
es-load                   ``bulk_index`` of a host-day                     plain ``_bulk`` of pre-built bodies
backfill                  ``sluice_backfill_fast`` of a host-day into      the same into Elasticsearch alone
                          both sinks (target: 90 s or less)
stream                    the stream loader into both sinks                plain ``_bulk`` of the same documents
host                      ``collectors.host`` at 1 Hz (file://, + Kafka,   collectd 5 with the same fields at 1 Hz
                          s3:// MinIO)                                     (``host_bench``)
========================  ===============================================  ==============================================

Prints a progress line per step, then the table, and writes it as Markdown to
``--out`` (default ``$SLUICE_RUNTIME/benchmarks.md``) for the README. A hop
that fails is reported in its row (with the error) and the run goes on.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from stack.config import StackConfig  # noqa: E402

HOPS = ("mqtt", "opentsdb", "es-load", "backfill", "stream", "host")


@dataclass
class Row:
    hop: str
    sluice: str
    reference: str
    ratio: float | None
    target: str = ""
    note: str = ""

    def cells(self) -> list[str]:
        ratio = "—" if self.ratio is None else f"{self.ratio:.2f}×"
        return [self.hop, self.sluice, self.reference, ratio, self.target, self.note]


T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f} s] {message}", flush=True)


# --- the hops ----------------------------------------------------------------------------------


def hop_mqtt(cfg: StackConfig, quick: bool) -> list[Row]:
    from collectors_bench import bench_drain as drain

    messages = 20_000 if quick else 100_000
    progress(f"mqtt: the collector and a bare paho subscriber each drain {messages:,} queued QoS 1 messages")
    rows = []
    for collectors in (1, 2):
        if collectors > 1:
            progress(f"mqtt: {collectors} collectors of one shared subscription drain {messages:,} queued messages "
                     "together; a bare paho subscriber drains the same before and after")
        got = drain(messages, 2, None, collectors)
        rows.append(Row("MQTT collector, QoS 1, journal-gated acks, both outputs" if collectors == 1 else
                        f"MQTT collectors ×{collectors}, one shared subscription, same",
                        f"{got['collector_readings_per_s']:,} readings/s ({got['collector_cpu_us_per_message']} µs CPU "
                        "a message)",
                        f"bare paho subscriber: {got['paho_bare_readings_per_s']:,} readings/s "
                        f"({min(got['paho_bare_cpu_us_per_message_before_after'])}–"
                        f"{max(got['paho_bare_cpu_us_per_message_before_after'])} µs)",
                        got["ratio_collector_to_paho"], "≥ 30,000 readings/s",
                        "nothing lost" if got["nothing_lost"] else "LOST READINGS: see collectors_bench"))
    return rows


def hop_opentsdb(cfg: StackConfig, quick: bool) -> list[Row]:
    import opentsdb_load
    from include.opentsdb import OpenTSDBClient

    defaults = OpenTSDBClient(cfg.url("opentsdb"))
    count, rounds = (50_000, 3) if quick else (100_000, 7)
    progress(f"opentsdb: {count:,} datapoints, client and plain ?sync alternating, {rounds} round(s), "
             f"batches of {defaults.batch_size}, {defaults.concurrency} in flight")
    got = opentsdb_load.compare(cfg.url("opentsdb"), count, defaults.batch_size, defaults.concurrency,
                                rounds=rounds, say=progress)
    return [Row("OpenTSDB load, every point accounted for", f"{got['client']:,.0f} points/s",
                f"plain ?sync batches, same size and concurrency: {got['reference']:,.0f} points/s",
                got["ratio"], "≥ 1.0×", f"batches of {defaults.batch_size}, {defaults.concurrency} in flight; medians of "
                f"{rounds} alternating rounds, ratio = median of the rounds' ratios")]


def _host_day_docs():
    import pipeline_bench
    from include.transform import transform_file

    files = pipeline_bench.host_day()
    header = files[0][1].split(b"\n", 1)[0]
    return files, transform_file("host", header + b"\n" + b"".join(d.split(b"\n", 1)[1] for _, d in files))


def hop_es_load(cfg: StackConfig, quick: bool) -> list[Row]:
    import pipeline_bench

    progress("es-load: a host-day (86,400 documents), bulk_index and plain _bulk alternating, best of 2")
    _, docs = _host_day_docs()
    from stack.services.elasticsearch import Elasticsearch

    got = pipeline_bench.bench_load(Elasticsearch(cfg), docs)
    return [Row("Elasticsearch load (batch pipeline)", f"{got['bulk_index']:,.0f} docs/s",
                f"plain _bulk: {got['plain_bulk']:,.0f} docs/s", got["ratio"])]


def hop_backfill(cfg: StackConfig, quick: bool) -> list[Row]:
    if quick:
        return [Row("fast backfill of a host-day", "skipped (--quick)", "skipped", None, "≤ 90 s, both sinks")]
    import pipeline_bench
    from stack.services.minio import MinIO  # before stack.connections, which it imports (a cycle otherwise)
    from stack.connections import airflow_env

    for key, value in airflow_env(cfg).items():
        os.environ.setdefault(key, value)
    files, _ = _host_day_docs()
    s3 = MinIO(cfg).admin_client()  # root: the bench seeds the host-day and removes it
    progress("backfill: sluice_backfill_fast of a host-day into Elasticsearch alone")
    es_only = pipeline_bench.bench_fast_backfill(s3, files, sinks="elasticsearch")
    progress("backfill: the same into Elasticsearch and OpenTSDB")
    both = pipeline_bench.bench_fast_backfill(s3, files, sinks="elasticsearch,opentsdb")
    return [Row("fast backfill of a host-day (Airflow dags test)", f"both sinks: {both:.0f} s",
                f"Elasticsearch alone: {es_only:.0f} s", es_only / both, "≤ 90 s, both sinks",
                "ratio = Elasticsearch-alone time / both-sinks time")]


def hop_stream(cfg: StackConfig, quick: bool) -> list[Row]:
    import statistics

    import stream_bench

    messages, rounds = (30_000, 1) if quick else (100_000, 3)
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-stream-"))
    loader, plain = [], []
    for n in range(1, rounds + 1):  # alternating: the stack's speed drifts (HBase and Lucene merge in the background)
        progress(f"stream {n}/{rounds}: the loader takes {messages:,} payloads ({3 * messages:,} readings) into both sinks")
        loader.append(stream_bench.bench_throughput(cfg, messages, tmp, [])["readings_per_s_into_both_sinks"])
        progress(f"stream {n}/{rounds}: the same documents as plain _bulk into Elasticsearch alone")
        plain.append(stream_bench.bench_plain_bulk(cfg, messages)["docs_per_s"])
    got, ref = statistics.median(loader), statistics.median(plain)
    return [Row("stream loader into both sinks, commit after ack", f"{got:,.0f} readings/s",
                f"plain _bulk, Elasticsearch alone: {ref:,.0f} docs/s", got / ref, "≥ 25,000 readings/s",
                f"medians of {rounds} alternating round(s): loader {', '.join(f'{x:,}' for x in loader)}; "
                f"plain {', '.join(f'{x:,}' for x in plain)}")]


def hop_host(cfg: StackConfig, quick: bool) -> list[Row]:
    import host_bench

    seconds = 30.0 if quick else 180.0
    progress(f"host: collectd and three sampler configurations side by side for {seconds:g} s")
    got = host_bench.bench_host(seconds)
    ref = got.pop("collectd")
    rows = []
    for name, fig in got.items():
        cpu, rss = fig["cpu_percent_of_one_core"], fig["peak_rss_mb"]
        ratio = cpu / ref["cpu_percent_of_one_core"] if ref["cpu_percent_of_one_core"] else None
        rows.append(Row(f"host sampler 1 Hz: {name}", f"{cpu:.3f}% of a core, {rss:.0f} MB",
                        f"collectd: {ref['cpu_percent_of_one_core']:.3f}%, {ref['peak_rss_mb']:.0f} MB", ratio,
                        "CPU ≤ 0.8×" + (", RSS ≤ 40 MB" if "s3" in name else "")))
    return rows


RUNNERS: dict[str, Callable[[StackConfig, bool], list[Row]]] = {
    "mqtt": hop_mqtt, "opentsdb": hop_opentsdb, "es-load": hop_es_load, "backfill": hop_backfill,
    "stream": hop_stream, "host": hop_host,
}


def markdown(rows: list[Row], *, quick: bool) -> str:
    head = ["hop", "Sluice", "reference (same run)", "ratio", "target", "note"]
    lines = [
        f"Benchmarks of {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores "
        f"(`tests/benchmarks/run_all.py{' --quick' if quick else ''}`); each reference was measured in the "
        "same run, beside Sluice's figure, on the same (shared) machine.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, shorter windows, no backfill")
    parser.add_argument("--only", choices=HOPS, action="append", help="run only these hops (repeatable)")
    runtime = Path(os.environ.get("SLUICE_RUNTIME", REPO / "runtime"))
    parser.add_argument("--out", type=Path, default=runtime / "benchmarks.md", help="where the Markdown table goes")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    cfg = StackConfig.from_env()
    hops = [h for h in HOPS if h in (args.only or HOPS)]
    rows: list[Row] = []
    for i, hop in enumerate(hops, 1):
        progress(f"({i}/{len(hops)}) {hop} ...")
        try:
            got = RUNNERS[hop](cfg, args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken hop must not hide the others' figures
            traceback.print_exc()
            got = [Row(hop, "failed", "—", None, note=f"{type(exc).__name__}: {str(exc)[:200]}")]
        for row in got:
            progress(f"  {row.hop}: {row.sluice} | {row.reference} | {row.cells()[3]}")
        rows.extend(got)
    table = markdown(rows, quick=args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print()
    print(table)
    progress(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
