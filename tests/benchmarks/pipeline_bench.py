"""Figures of the batch pipeline: transform rows/s, Elasticsearch load docs/s, fast-path host-day.

    .venv/bin/python tests/benchmarks/pipeline_bench.py            # all three (needs the local stack)
    .venv/bin/python tests/benchmarks/pipeline_bench.py --only transform

1. **Transform**, one core (``POLARS_MAX_THREADS=1``): one synthetic host-day
   (1,440 minute files of 60 rows, every column of the host schema) through
   the columnar engine (:func:`include.transform.transform_file`) per file and
   as one batch, and through the csv module + orjson reference
   (:func:`include.transform.transform_file_rows`). Rows/s, best of 3.
2. **Load**, the same 86,400 documents into the local Elasticsearch, fresh
   indices each time: a plain ``_bulk`` of pre-built bodies (2,000 documents a
   request) against :func:`include.elasticsearch.bulk_index` (the helpers'
   ``streaming_bulk``, same chunks). Docs/s, best of 2 alternating runs.
3. **Fast-path backfill**: the host-day landed in MinIO under a throw-away
   prefix, then ``airflow dags test sluice_backfill_fast`` over the day (24
   mapped hour tasks, run one after the other by ``dags test``) in a throw-away
   ``AIRFLOW_HOME`` into ``--sinks`` (default: Elasticsearch only; repeat the
   option to time Elasticsearch alone and both sinks in the same run); wall time.

It prints figures; it asserts nothing. Everything it creates (landing prefix,
indices, templates, Airflow home) is removed at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported: one core

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from include import elasticsearch as es_mod
from include.contract import minute_key
from include.landing import S3Landing
from include.schemas import HOST_SCHEMA
from include.transform import FileDocuments, transform_file, transform_file_rows, transform_files

DAY = datetime(2020, 10, 1, tzinfo=timezone.utc)
HOST = "bench-1"


def host_day(host: str = HOST, day: datetime = DAY, *, columns: int = len(HOST_SCHEMA.names)) -> list[tuple[datetime, bytes]]:
    """1,440 minute files of 60 rows each, plausible varying values in the first ``columns`` columns."""
    header = ",".join(HOST_SCHEMA.names[:columns])
    files = []
    for i in range(1440):
        minute = day + timedelta(minutes=i)
        rows = [header]
        for s in range(60):
            t = i * 60 + s
            rows.append(
                f"{minute:%Y-%m-%dT%H:%M}:{s:02d}Z,{host},{(t * 7) % 1000 / 10},{555991280 + t * 917},"
                f"{2798016401 + t * 311},{t * 13},0,17084211200,{4082380800 - t % 5000 * 4096},"
                f"{76.1 + (t % 100) / 100},{13001830400 + t % 5000 * 4096},{4082380800 - t % 5000 * 4096},"
                f"{0.5 + (t % 50) / 100},{0.75},{0.8},2147479552,{t % 1000 * 4096},{(t % 1000) / 10},"
                f"{t * 8192},{t * 4096},{t * 2},{t},{t * 1500},{t * 3000},{t * 10},{t * 20},0,0,{t % 7},0"
            )
        if columns < len(HOST_SCHEMA.names):
            rows = [",".join(r.split(",")[:columns]) for r in rows]
        files.append((minute, ("\n".join(rows) + "\n").encode()))
    return files


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_transform(files: list[tuple[datetime, bytes]]) -> FileDocuments:
    rows = 60 * len(files)
    columns = files[0][1].split(b"\n", 1)[0].count(b",") + 1
    header, *_ = files[0][1].split(b"\n", 1)
    one_batch = header + b"\n" + b"".join(data.split(b"\n", 1)[1] for _, data in files)
    transform_file("host", files[0][1])  # import and warm polars

    datas = [d for _, d in files]
    many = best(lambda: transform_files("host", datas), 3)
    batch = best(lambda: transform_file("host", one_batch), 3)
    per_file = best(lambda: [transform_file("host", d) for d in datas[:240]], 3) * len(datas) / 240
    reference = best(lambda: [transform_file_rows("host", d) for d in datas], 3)
    print(f"transform CSV -> JSON documents + ids, one core, {rows:,} host rows ({columns} columns), best of 3:")
    print(f"  polars, 1,440 files batched (transform_files)  {rows / many:>10,.0f} rows/s  ({many:.3f} s)")
    print(f"  polars, one 86,400-row file                    {rows / batch:>10,.0f} rows/s  ({batch:.3f} s)")
    print(f"  polars, file by file (as a minute run does)    {rows / per_file:>10,.0f} rows/s  ({per_file:.3f} s)")
    print(f"  csv module + orjson, file by file (reference)  {rows / reference:>10,.0f} rows/s  ({reference:.3f} s)")
    print(f"  batched polars / reference: {reference / many:.1f}x")
    return transform_file("host", one_batch)


def bench_load(server, docs: FileDocuments) -> dict:
    """Both over HTTPS with the loader role's API key (what the DAGs and the stream loader use), a
    fresh prefix (and key) per round; ``server`` is the stack's Elasticsearch service."""
    n = docs.accepted
    chunk = 2000
    admin = server.admin(request_timeout=120)
    clients: dict[str, object] = {}

    def loader(prefix: str):
        clients[prefix] = server.client("loader", prefix=prefix, request_timeout=120)
        return clients[prefix]

    def plain(prefix: str) -> float:
        es = loader(prefix)
        es_mod.ensure_index_template(es, "host", prefix=prefix)
        pairs = list(es_mod.bulk_actions("host", docs.ids, docs.timestamps, docs.documents, prefix=prefix))
        bodies = [
            b"".join(a + b"\n" + d + b"\n" for a, d in pairs[i : i + chunk]) for i in range(0, len(pairs), chunk)
        ]
        start = time.perf_counter()
        for body in bodies:
            resp = es.bulk(operations=body)
            if resp["errors"]:
                raise RuntimeError(f"plain _bulk refused documents under {prefix}")
        return time.perf_counter() - start

    def helpers(prefix: str) -> float:
        es = loader(prefix)
        es_mod.ensure_index_template(es, "host", prefix=prefix)
        start = time.perf_counter()
        result = es_mod.bulk_index(
            es, es_mod.bulk_actions("host", docs.ids, docs.timestamps, docs.documents, prefix=prefix), chunk_size=chunk
        )
        elapsed = time.perf_counter() - start
        if result.accepted != n:
            raise RuntimeError(f"bulk_index accepted {result.accepted} of {n}")
        return elapsed

    timings: dict[str, list[float]] = {"plain": [], "helpers": []}
    for _ in range(2):
        for name, fn in (("plain", plain), ("helpers", helpers)):
            prefix = f"sluicebench-{uuid.uuid4().hex[:8]}"
            try:
                timings[name].append(fn(prefix))
            finally:
                es_mod.drop_prefix(admin, prefix)
    p, h = min(timings["plain"]), min(timings["helpers"])
    print(f"load into the local Elasticsearch over HTTPS with the loader's API key, {n:,} host documents, "
          f"{chunk:,} per request, best of 2:")
    print(f"  plain _bulk (pre-built bodies)   {n / p:>10,.0f} docs/s  ({p:.2f} s)")
    print(f"  bulk_index (streaming_bulk)      {n / h:>10,.0f} docs/s  ({h:.2f} s)")
    print(f"  bulk_index / plain: {p / h:.0%}")
    return {"bulk_index": n / h, "plain_bulk": n / p, "ratio": p / h}


def bench_fast_backfill(s3_client, files: list[tuple[datetime, bytes]], *, sinks: str) -> float:
    run = f"bench-{uuid.uuid4().hex[:8]}"
    landing = S3Landing(s3_client, "sluice-landing", run)
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: landing.put(minute_key("host", f[0], HOST), f[1]), files))
    print(f"fast-path backfill of one host-day into {sinks} ({len(files)} files landed in "
          f"{time.perf_counter() - start:.1f} s):")

    home = Path(tempfile.mkdtemp(prefix="sluice-bench-airflow-"))
    prefix = f"sluicebench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=60",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "SLUICE_LANDING_URL": f"s3://sluice-landing/{run}",
        "SLUICE_ES_INDEX_PREFIX": prefix,
        "SLUICE_TASK_RETRIES": "0",
        "SLUICE_SINKS": sinks,
    }
    env.pop("POLARS_MAX_THREADS", None)  # the task may use both cores
    airflow = str(Path(sys.executable).with_name("airflow"))
    from stack.config import StackConfig

    from stack.connections import elasticsearch_connections
    from stack.services.elasticsearch import Elasticsearch

    server = Elasticsearch(StackConfig.from_env())
    server.api_keys(prefix)  # the DAG's connections with keys for the bench's prefix
    for conn_id, conn in elasticsearch_connections(server.config, prefix).items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    es = server.admin(request_timeout=120)  # the bench's own count and clean-up
    try:
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        conf = {"source": "host", "from": DAY.isoformat(), "to": (DAY + timedelta(days=1)).isoformat()}
        start = time.perf_counter()
        proc = subprocess.run(
            [airflow, "dags", "test", "sluice_backfill_fast", DAY.isoformat(), "--conf", json.dumps(conf)],
            env=env, capture_output=True, text=True,
        )
        elapsed = time.perf_counter() - start
        output = proc.stdout + proc.stderr
        log_path = Path(tempfile.gettempdir()) / "sluice-bench-backfill.log"
        log_path.write_text(output)
        ok = "DagRun Finished: dag_id=sluice_backfill_fast" in output and "state=success, run_type" in output
        es.indices.refresh(index=f"{prefix}-*")
        count = es.count(index=f"{prefix}-host-*")["count"]
        loaded = sum(1 for _ in landing.list("loaded/"))
        print(f"  airflow dags test sluice_backfill_fast: {'success' if ok else 'FAILED'} in {elapsed:.1f} s "
              f"(Airflow start-up and 24 mapped hour tasks included)")
        print(f"  {count:,} documents in Elasticsearch, {loaded} load records; {count / elapsed:,.0f} docs/s end to end")
        print(f"  Airflow's output: {log_path}")
        return elapsed
    finally:
        es_mod.drop_prefix(es, prefix)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: landing.delete(i.key), list(landing.list(""))))
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["transform", "load", "backfill"], action="append")
    parser.add_argument("--sinks", action="append",
                        help="SLUICE_SINKS of the fast-path backfill, repeat to run several one after the other "
                             "in the same run, e.g. --sinks elasticsearch --sinks elasticsearch,opentsdb "
                             "(default: elasticsearch; opentsdb writes into the shared TSD, which cannot be "
                             "cleaned up: the points stay, dated 2020-10-01, host=bench-1)")
    args = parser.parse_args(argv)
    only = set(args.only or ["transform", "load", "backfill"])

    files = host_day()
    docs = bench_transform(files) if "transform" in only or "load" in only else None
    if "transform" in only:  # the seed's 12 columns (seeds/003), as the target was set on
        bench_transform(host_day(columns=12))
    if "load" in only:
        from stack.config import StackConfig

        from stack.services.elasticsearch import Elasticsearch

        bench_load(Elasticsearch(StackConfig.from_env()), docs)
    if "backfill" in only:
        from stack.config import StackConfig
        from stack.connections import airflow_env
        from stack.services.minio import MinIO

        for key, value in airflow_env(StackConfig.from_env()).items():
            os.environ.setdefault(key, value)
        for sinks in args.sinks or ["elasticsearch"]:
            bench_fast_backfill(MinIO(StackConfig.from_env()).admin_client(), files, sinks=sinks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
