"""Datapoints per second into the local OpenTSDB: Sluice's client beside plain ``?sync`` batches.

Usage: ``.venv/bin/python tests/benchmarks/opentsdb_load.py [--datapoints N] [--batch-size B]
[--concurrency C] [--rounds R] [--sweep]``

Both sides post the same datapoints (host metrics of a few hosts, one per
second, the shape the host DAG produces) under a fresh metric prefix each, so
both pay for creating their UIDs and neither overwrites the other, with the
same batch size and the same number of requests in flight:

* ``client`` — :class:`include.opentsdb.OpenTSDBClient`: gzip bodies,
  ``/api/put?details&sync`` (answers once HBase stored the batch, with a reason
  per refused datapoint), every datapoint accounted for, retries;
* ``plain ?sync`` (the reference) — the same batches as JSON to ``/api/put?sync``
  from ``C`` threads with a ``requests`` session each: what waiting for HBase
  costs without the client's checks, details and bookkeeping.

The two alternate ``--rounds`` times (the machine is shared, so neither gets
a quieter minute than the other); each figure is the median of its rounds,
the ratio the median of the rounds' ratios client / reference. ``--sweep`` measures the client over
a grid of batch sizes and concurrencies (how the defaults were chosen).

Prints figures; asserts nothing. Needs the stack's OpenTSDB running
(``python -m stack up opentsdb``). The points stay in the TSD (dated 2023-11-14).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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


def run_client(url: str, points: list[dict], batch_size: int, concurrency: int) -> tuple[float, str]:
    with OpenTSDBClient(url, batch_size=batch_size, concurrency=concurrency) as client:
        start = time.perf_counter()
        result = client.put(points)
        elapsed = time.perf_counter() - start
    if result.accepted != len(points):
        raise RuntimeError(f"the client stored {result.accepted} of {len(points)}: {result.summary()}")
    return elapsed, f"accepted={result.accepted} failed={len(result.failed)} batches={result.batches}"


def run_plain_sync(url: str, points: list[dict], batch_size: int, concurrency: int) -> tuple[float, str]:
    """The reference: plain JSON batches to ``/api/put?sync``, ``concurrency`` threads, a session each."""
    statuses: dict[int, int] = {}
    local = threading.local()
    lock = threading.Lock()

    def post(batch: list[dict]) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        resp = session.post(f"{url}/api/put?sync", json=batch, timeout=60)
        with lock:
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        list(pool.map(post, batched(points, batch_size)))
        elapsed = time.perf_counter() - start
    if set(statuses) != {204}:
        raise RuntimeError(f"plain ?sync answered {statuses}")
    return elapsed, "http statuses " + " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))


def compare(url: str, count: int, batch_size: int, concurrency: int, *, rounds: int = 5, hosts: int = 10,
            say=print) -> dict:
    """Reference and client alternating ``rounds`` times; the medians, and the median of the rounds' ratios.

    Each round's ratio compares two runs a few seconds apart, so a busy
    minute of the shared machine weighs on both sides of it; the median keeps
    one lucky or unlucky round from deciding.
    """
    run = uuid.uuid4().hex[:6]
    rates: dict[str, list[float]] = {"client": [], "plain ?sync": []}
    for r in range(rounds):
        for name, fn in (("plain ?sync", run_plain_sync), ("client", run_client)):
            points = datapoints(f"bench.{run}.{r}.{name.split()[0]}", count, hosts)
            elapsed, detail = fn(url, points, batch_size, concurrency)
            rates[name].append(count / elapsed)
            say(f"  round {r + 1} {name:<12} {count / elapsed:>10,.0f} datapoints/s  ({elapsed:.2f} s; {detail})")
    ratios = [c / p for c, p in zip(rates["client"], rates["plain ?sync"], strict=True)]
    return {"client": statistics.median(rates["client"]), "reference": statistics.median(rates["plain ?sync"]),
            "ratio": statistics.median(ratios), "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=StackConfig.from_env().url("opentsdb"))
    parser.add_argument("--datapoints", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=OpenTSDBClient("http://x").batch_size)
    parser.add_argument("--concurrency", type=int, default=OpenTSDBClient("http://x").concurrency)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="the client over batch sizes x concurrencies")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.sweep:
        print(f"OpenTSDB at {args.url}: client sweep, {args.datapoints:,} datapoints per run")
        run = uuid.uuid4().hex[:6]
        for concurrency in (1, 2, 4, 8):
            for size in (250, 500, 1000, 2000, 5000):
                points = datapoints(f"bench.{run}.c{concurrency}b{size}", args.datapoints, args.hosts)
                elapsed, _ = run_client(args.url, points, size, concurrency)
                print(f"  concurrency {concurrency} batch {size:>5}: {args.datapoints / elapsed:>10,.0f} datapoints/s")
        return 0
    print(f"OpenTSDB at {args.url}: {args.datapoints:,} datapoints, batches of {args.batch_size}, "
          f"{args.concurrency} in flight, client and plain ?sync alternating, {args.rounds} rounds:")
    figures = compare(args.url, args.datapoints, args.batch_size, args.concurrency, rounds=args.rounds,
                      hosts=args.hosts)
    print(f"client {figures['client']:,.0f} datapoints/s, plain ?sync {figures['reference']:,.0f} datapoints/s "
          f"(medians; same batches, same concurrency, same run): {figures['ratio']:.2f}x "
          f"(median of the rounds' ratios {', '.join(f'{r:.2f}' for r in figures['ratios'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
