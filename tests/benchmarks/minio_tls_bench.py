"""What TLS costs the landing zone: PUTs/s into MinIO over TLS against the same MinIO without it.

Two private MinIO servers of the stack's build, in a temporary runtime folder on
free ports: one as the stack runs it (TLS, the collector user), one started the
same way with an empty ``--certs-dir`` (plain HTTP, the same collector user and
policies) as the reference. Each gets the same PUTs of minute-file-sized objects
from one client, as a collector's lander makes them (one connection kept alive,
so TLS costs its handshake once and then the encryption of each body). The
order alternates over ``--rounds`` so neither side always runs on a warmer
machine. Prints PUTs/s and MB/s of each and their ratio.

``.venv/bin/python tests/benchmarks/minio_tls_bench.py [--seconds 10] [--size 65536] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "collectors"))

from stack.config import LANDING_BUCKET, StackConfig  # noqa: E402
from stack.services.minio import MinIO  # noqa: E402


class PlainMinIO(MinIO):
    """The reference: MinIO as the stack runs it, but with no certificate in its --certs-dir (plain HTTP)."""

    @property
    def endpoint_url(self) -> str:
        return self.config.url("minio", "http")

    def prepare(self) -> None:
        from stack.tls import ensure_ca

        ensure_ca(self.config)  # clients are built the same way (trusting a CA), only unused here
        self.certs_dir.mkdir(parents=True, exist_ok=True)


def puts_per_s(minio: MinIO, seconds: float, body: bytes) -> float:
    s3 = minio.client("collector")
    prefix = f"raw/bench-tls/{uuid.uuid4().hex[:8]}/"
    s3.put_object(Bucket=LANDING_BUCKET, Key=prefix + "warm", Body=body)  # connect (and handshake) first
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        s3.put_object(Bucket=LANDING_BUCKET, Key=f"{prefix}{n}.csv", Body=body)
        n += 1
    return n / (time.perf_counter() - start)


def main() -> int:
    from collector_helpers import private_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of PUTs per side and round")
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per object (a minute file of ~400 devices)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    body = b"x" * args.size
    results: dict[str, list[float]] = {"TLS": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {"TLS": MinIO(private_config(StackConfig.from_env(), Path(tmp) / "tls")),
                   "plain": PlainMinIO(private_config(StackConfig.from_env(), Path(tmp) / "plain"))}
        try:
            for name, svc in servers.items():
                print(f"starting a private MinIO ({name}) on {svc.endpoint_url} ...", flush=True)
                svc.install()
                svc.start()
            for r in range(args.rounds):
                for name in (("TLS", "plain") if r % 2 == 0 else ("plain", "TLS")):
                    rate = puts_per_s(servers[name], args.seconds, body)
                    results[name].append(rate)
                    print(f"  round {r + 1} {name:<5} {rate:8.1f} PUTs/s", flush=True)
        finally:
            for svc in servers.values():
                svc.stop()
    tls, plain = (statistics.median(results[k]) for k in ("TLS", "plain"))
    mb = args.size / 1e6
    print(f"\n{args.size:,}-byte PUTs as the collector user, one client, median of {args.rounds} rounds:")
    print(f"  TLS    {tls:8.1f} PUTs/s  {tls * mb:7.1f} MB/s")
    print(f"  plain  {plain:8.1f} PUTs/s  {plain * mb:7.1f} MB/s   (reference)")
    print(f"  TLS / plain = {tls / plain:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
