"""The host sampler beside collectd 5 (Debian's ``collectd-core``) in the same run; prints figures, asserts nothing.

Every process runs at the same time, for the same ``--seconds``, after the
same warm-up, and is measured the same way (user + system CPU time of the
process over the window, as % of one core; peak RSS from ``VmHWM``):

* ``collectd`` (the reference) with a private config: ``Interval 1``, the
  plugins that give the sampler's fields (cpu, memory, load, disk, interface,
  swap) and the ``csv`` writer into a temporary folder; no network plugin;
* ``collectors.host`` landing on ``file://``, without and with the Kafka
  output (``--kafka-bootstrap``), and landing in the stack's MinIO (``s3://``).

Run: ``.venv/bin/python tests/benchmarks/host_bench.py [--seconds 120]``.
Needs collectd (``apt-get install collectd-core``) and, for the Kafka and
MinIO runs, the local stack.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collectors_bench import measure  # noqa: E402 - one way of measuring a process, shared

COLLECTD_PLUGINS = ("cpu", "memory", "load", "disk", "interface", "swap")


def collectd_config(folder: Path) -> Path:
    """A private collectd config: the sampler's fields at 1 Hz, written as CSV, no network plugin."""
    plugins = "\n".join(f"LoadPlugin {name}" for name in (*COLLECTD_PLUGINS, "csv"))
    conf = folder / "collectd.conf"
    conf.write_text(
        f'Hostname "bench"\nFQDNLookup false\nInterval 1\nBaseDir "{folder}"\nPIDFile "{folder}/collectd.pid"\n'
        f'PluginDir "/usr/lib/collectd"\nTypesDB "/usr/share/collectd/types.db"\n{plugins}\n'
        f'<Plugin csv>\n  DataDir "{folder}/csv"\n  StoreRates true\n</Plugin>\n'
    )
    return conf


def bench_host(seconds: float, *, kafka: bool = True, s3: bool = True, warmup: float = 5.0) -> dict[str, dict]:
    """CPU and peak RSS of collectd and of the sampler's configurations, all in one window."""
    collectd = shutil.which("collectd") or "/usr/sbin/collectd"
    if not Path(collectd).exists():
        raise RuntimeError("collectd is not installed: apt-get install -y collectd-core")
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-host-"))
    runs: dict[str, list[str]] = {"collectd": [collectd, "-f", "-C", str(collectd_config(tmp))]}

    def sampler(name: str, landing: str, *extra: str) -> None:
        runs[name] = [sys.executable, "-m", "collectors.host", "--landing-url", landing,
                      "--state-dir", str(tmp / f"state-{len(runs)}"), "--metrics-port", "0", *extra]

    sampler("collectors.host file://", (tmp / "landing").as_uri())
    kafka_login: dict[str, str] = {}
    if kafka or s3:
        from stack.config import LANDING_BUCKET, StackConfig

        cfg = StackConfig.from_env()
    if kafka:
        from stack.services.kafka import ADMIN_USER, client_env

        sampler("collectors.host file:// + Kafka", (tmp / "landing-k").as_uri(), "--kafka-bootstrap", cfg.kafka_bootstrap)
        kafka_login = client_env(cfg, ADMIN_USER)  # SASL_SSL as the admin; the password by file
    if s3:
        from stack.services.minio import MinIO

        minio = MinIO(cfg)
        creds = minio.credentials("collector")
        (tmp / "ak").write_text(creds["access_key"])
        (tmp / "sk").write_text(creds["secret_key"])
        sampler("collectors.host s3:// MinIO", f"s3://{LANDING_BUCKET}/bench-{uuid.uuid4().hex[:6]}",
                "--s3-endpoint-url", minio.endpoint_url, "--s3-access-key-file", str(tmp / "ak"),
                "--s3-secret-key-file", str(tmp / "sk"), "--s3-ca-bundle", str(minio.ca_file))
    log = (tmp / "log").open("ab")
    procs = {name: subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **kafka_login}, stdout=log,
                                    stderr=subprocess.STDOUT)
             for name, cmd in runs.items()}
    try:
        figures = measure(procs, seconds, warmup=warmup)
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(30)
    written = sum(1 for _ in (tmp / "csv").rglob("*")) if (tmp / "csv").exists() else 0
    if not written:
        raise RuntimeError(f"collectd wrote nothing; see {tmp / 'log'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--no-kafka", action="store_true")
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args(argv)
    print(f"host sampler beside collectd, {args.seconds:g} s, all processes in the same window ...", flush=True)
    figures = bench_host(args.seconds, kafka=not args.no_kafka, s3=not args.no_s3)
    ref = figures["collectd"]["cpu_percent_of_one_core"]
    for name, fig in figures.items():
        ratio = f"{fig['cpu_percent_of_one_core'] / ref:.2f}x collectd" if ref else "collectd used no CPU"
        print(f"  {name:<32} {fig['cpu_percent_of_one_core']:>7.3f}% of a core  {fig['peak_rss_mb']:>6.1f} MB  ({ratio})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
