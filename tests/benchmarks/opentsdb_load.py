"""Datapoints per second into the local OpenTSDB: Sluice's client against plain HTTP batches.

Usage: ``.venv/bin/python tests/benchmarks/opentsdb_load.py [--datapoints N] [--batch-size B]``

Both runs post the same datapoints (host metrics of a few hosts, one per
second, the shape the host DAG produces) under a fresh metric prefix each, so
both pay for creating their UIDs and neither overwrites the other:

* ``client`` — :class:`include.opentsdb.OpenTSDBClient`: gzip bodies,
  ``/api/put?details&sync`` (answers once HBase stored the batch, with a reason
  per refused datapoint), retries;
* ``plain`` — the same batches as uncompressed JSON to ``/api/put`` with one
  ``requests`` session, no details, no sync (OpenTSDB answers once the batch is
  queued, and says nothing about single datapoints);
* ``plain-sync`` — as ``plain`` but ``?sync``: what waiting for HBase costs
  without the client's gzip, details and bookkeeping.

Prints one line per run. Needs the stack's OpenTSDB running (``python -m stack up opentsdb``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from include.opentsdb import OpenTSDBClient, batched  # noqa: E402
from stack.config import StackConfig  # noqa: E402

FIELDS = ("cpu_usage_percent", "mem_percent", "mem_used", "load_1m", "net_bytes_sent")
T0 = 1_700_000_000


def datapoints(prefix: str, count: int, hosts: int) -> list[dict]:
    """``count`` datapoints ``{prefix}.<field>`` tagged ``host=``, one per second per host and field."""
    out: list[dict] = []
    second = 0
    while len(out) < count:
        for h in range(hosts):
            for i, name in enumerate(FIELDS):
                out.append({"metric": f"{prefix}.{name}", "timestamp": T0 + second,
                            "value": (second * 7 + h * 3 + i) % 1000 / 10, "tags": {"host": f"bench-{h:02d}"}})
        second += 1
    return out[:count]


def run_client(url: str, points: list[dict], batch_size: int) -> tuple[float, str]:
    with OpenTSDBClient(url, batch_size=batch_size) as client:
        start = time.perf_counter()
        result = client.put(points)
        elapsed = time.perf_counter() - start
    return elapsed, f"accepted={result.accepted} failed={len(result.failed)} batches={result.batches}"


def run_plain(url: str, points: list[dict], batch_size: int, query: str = "") -> tuple[float, str]:
    statuses: dict[int, int] = {}
    with requests.Session() as session:
        start = time.perf_counter()
        for batch in batched(points, batch_size):
            resp = session.post(f"{url}/api/put{query}", json=batch, timeout=60)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        elapsed = time.perf_counter() - start
    return elapsed, "http statuses " + " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=StackConfig.from_env().url("opentsdb"))
    parser.add_argument("--datapoints", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--hosts", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = uuid.uuid4().hex[:6]
    print(f"OpenTSDB at {args.url}: {args.datapoints} datapoints, batches of {args.batch_size}")
    runs = (("client", run_client), ("plain", run_plain),
            ("plain-sync", lambda url, points, size: run_plain(url, points, size, "?sync")))
    for name, fn in runs:
        points = datapoints(f"bench.{run}.{name}", args.datapoints, args.hosts)
        elapsed, detail = fn(args.url, points, args.batch_size)
        print(f"{name:<10} {args.datapoints / elapsed:>10,.0f} datapoints/s  ({elapsed:.2f} s; {detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
